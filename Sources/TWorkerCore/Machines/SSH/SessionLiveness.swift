import Foundation
import Synchronization

/// How a build's SSH session shows that the machine behind it still answers.
///
/// ssh's own keep-alives do not cover a session that goes over a master connection (the qemu
/// provider's warm connection has none: it must outlive the guest's pause), and a guest or
/// connection that stops answering would hold the job until its log-silence limit, which
/// then blames the build. So the guest side writes a mark on stderr every `markEvery`
/// seconds, and a session from which nothing at all comes for `allowedSilence` is ended as
/// an infrastructure error (the job is requeued, the VM reset).
public struct SessionLiveness: Sendable, Equatable {
    /// Whole seconds: busybox `sleep` may take no fraction.
    public var markEvery: Int
    public var allowedSilence: Duration

    public init(markEvery: Int, allowedSilence: Duration) {
        self.markEvery = markEvery
        self.allowedSilence = allowedSilence
    }

    /// Four marks may go missing: the same ~15-20 s in which ssh's keep-alives (5 s, 3 missed)
    /// give up on a direct connection.
    public static let standard = SessionLiveness(markEvery: 5, allowedSilence: .seconds(20))
}

/// The last sign of life of a running session, and whether tworker itself is holding the
/// session back (its log output waiting for Redis): that time is not the machine's silence.
final class SessionWatch: Sendable {
    private struct State {
        var lastSign = ContinuousClock.now
        var holdingBack = 0
    }
    private let state = Mutex(State())

    func sawSign() { state.withLock { $0.lastSign = .now } }

    /// Runs `body` (handing output on) as time that does not count as silence.
    func holdingBack(_ body: () async -> Void) async {
        state.withLock { $0.holdingBack += 1 }
        await body()
        state.withLock { $0.holdingBack -= 1; $0.lastSign = .now }
    }

    /// Returns once nothing has come for `allowed` while tworker was not holding the session back.
    func silence(allowed: Duration) async throws {
        while true {
            let (lastSign, holding) = state.withLock { ($0.lastSign, $0.holdingBack > 0) }
            let quietUntil = (holding ? ContinuousClock.now : lastSign) + allowed
            if !holding, ContinuousClock.now >= quietUntil { return }
            try await Task.sleep(until: quietUntil, clock: .continuous)
        }
    }
}

/// A session's stderr, kept as it came except for its alive marks: a build of hours would
/// otherwise fill the first 64 KiB with them and push out the lines that say how it ended.
final class SessionErrors: Sendable {
    static let limit = 65536
    private let aliveMark: [UInt8]
    private struct State {
        var kept: [UInt8] = []
        var partialLine: [UInt8] = []
    }
    private let state = Mutex(State())

    init(aliveMark: String) { self.aliveMark = Array(aliveMark.utf8) }

    func take(_ chunk: [UInt8]) {
        state.withLock { state in
            state.partialLine += chunk
            while let newline = state.partialLine.firstIndex(of: UInt8(ascii: "\n")) {
                let line = state.partialLine[..<newline]
                if !line.elementsEqual(aliveMark), state.kept.count < Self.limit { state.kept += state.partialLine[...newline] }
                state.partialLine.removeSubrange(...newline)
            }
            // No newline for this long is no mark: keep it as text.
            if state.partialLine.count > Self.limit {
                if state.kept.count < Self.limit { state.kept += state.partialLine }
                state.partialLine = []
            }
        }
    }

    var text: String { state.withLock { String(decoding: $0.kept + $0.partialLine, as: UTF8.self) } }
}
