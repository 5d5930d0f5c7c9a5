import Foundation
import Synchronization

/// Reads a pipe on a dedicated thread, one chunk per `next()` call.
///
/// Blocking `read(2)` must not run on Swift's cooperative pool; the pull model (the thread
/// reads only when asked) gives natural backpressure, so a build printing faster than Redis
/// takes its log blocks on its pipe instead of growing our memory.
final class PipeReader: Sendable {
    private let fd: Int32
    private let chunkSize: Int
    private let state = Mutex<State>(State())
    private let wakeUp = DispatchSemaphore(value: 0)

    private struct State {
        var waiting: CheckedContinuation<[UInt8]?, Never>?
        var finished = false
        /// When the thread went into `read(2)` and is still there: it waits for data, not for us.
        var readingSince: ContinuousClock.Instant?
    }

    init(fd: Int32, chunkSize: Int = 32 * 1024) {
        self.fd = fd
        self.chunkSize = chunkSize
        let thread = Thread { [self] in self.loop() }
        thread.name = "tworker.pipe-reader"
        thread.start()
    }

    /// The next chunk, or nil at end of file.
    func next() async -> [UInt8]? {
        await withCheckedContinuation { continuation in
            let finished = state.withLock { state -> Bool in
                if state.finished { return true }
                state.waiting = continuation
                return false
            }
            if finished { continuation.resume(returning: nil) } else { wakeUp.signal() }
        }
    }

    /// True while the thread has waited in `read(2)` for longer than `duration`.
    func waitingForData(longerThan duration: Duration) -> Bool {
        state.withLock { state in state.readingSince.map { ContinuousClock.now - $0 > duration } ?? false }
    }

    /// Ends the stream now: `next()` returns nil from here on. For a pipe whose write end some
    /// other process still holds; the thread reads on until that one closes it, drops what
    /// comes, and closes the descriptor.
    func abandon() {
        let continuation = state.withLock { state in
            state.finished = true
            defer { state.waiting = nil }
            return state.waiting
        }
        continuation?.resume(returning: nil)
        wakeUp.signal()
    }

    private func loop() {
        var buffer = [UInt8](repeating: 0, count: chunkSize)
        while true {
            // An abandoned stream gets no more `next()` calls: it reads on to the end by itself.
            if !state.withLock({ $0.finished }) { wakeUp.wait() }
            state.withLock { $0.readingSince = .now }
            var count: Int
            repeat {
                count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, chunkSize) }
            } while count < 0 && errno == EINTR
            let chunk: [UInt8]? = count > 0 ? Array(buffer[0..<count]) : nil
            let continuation = state.withLock { state in
                state.readingSince = nil
                if chunk == nil { state.finished = true }
                defer { state.waiting = nil }
                return state.waiting
            }
            continuation?.resume(returning: chunk)
            if chunk == nil {
                close(fd)
                return
            }
        }
    }
}
