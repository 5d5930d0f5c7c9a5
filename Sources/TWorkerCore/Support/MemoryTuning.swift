#if canImport(Glibc)
import Glibc

/// glibc allocator settings for a long-running worker that streams large logs.
///
/// By default glibc raises its mmap threshold after a large buffer is freed, so the next
/// log-sized buffers come from the heap and stay resident; and every thread gets an arena of
/// its own. Fixed thresholds and two arenas keep the worker's peak RSS near its working set.
public enum MemoryTuning {
    public static func apply() {
        // Swift's Glibc module does not import malloc.h; look the function up instead.
        typealias MallOpt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
        let mallopt = unsafeBitCast(symbol, to: MallOpt.self)
        _ = mallopt(-3 /* M_MMAP_THRESHOLD */, 64 * 1024)
        _ = mallopt(-1 /* M_TRIM_THRESHOLD */, 256 * 1024)
        _ = mallopt(-8 /* M_ARENA_MAX */, 2)
    }
}
#else
public enum MemoryTuning {
    public static func apply() {}
}
#endif
