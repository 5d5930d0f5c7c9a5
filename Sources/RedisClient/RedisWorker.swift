import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The socket of the live hiredis context, published so other threads can `shutdown(2)` it to
/// interrupt a blocked read. The fd is only closed while this lock is held, so a shutdown can
/// never hit a recycled descriptor.
///
/// For a Sentinel endpoint it also knows which master the socket talks to: a failover
/// (`SentinelWatch`) marks it stale, so the next call reconnects first, and interrupts the
/// call in flight, which then fails as a lost connection and is retried on the new master.
final class SocketRegistry: Sendable {
    private struct State {
        var fd: Int32 = -1
        var master: RedisEndpoint.HostPort?
        var busy = false
        var stale = false
    }

    private let state = Mutex(State())

    func publish(_ descriptor: Int32, master: RedisEndpoint.HostPort? = nil) {
        state.withLock { $0 = State(fd: descriptor, master: master) }
    }

    /// Runs `close` (which must close the descriptor) with the registry cleared, under the lock.
    func retire(_ close: () -> Void) {
        state.withLock { value in
            value = State()
            close()
        }
    }

    /// Wakes any thread blocked on the socket; the context is then unusable and gets freed.
    func shutdownSocket() {
        state.withLock { value in
            if value.fd >= 0 { _ = shutdown(value.fd, Int32(SHUT_RDWR)) }
        }
    }

    /// Before a round trip: false when the connection went stale (reconnect first).
    func beginCall() -> Bool {
        state.withLock { value in
            if value.stale { return false }
            value.busy = true
            return true
        }
    }

    func endCall() {
        state.withLock { $0.busy = false }
    }

    /// The master is now `master`: a connection to another server is stale, and a call
    /// blocked on it is interrupted.
    func masterSwitched(to master: RedisEndpoint.HostPort) {
        state.withLock { value in
            guard value.fd >= 0, let current = value.master, current != master else { return }
            value.stale = true
            if value.busy { _ = shutdown(value.fd, Int32(SHUT_RDWR)) }
        }
    }
}

/// Per-call state shared by the awaiting task (which may cancel) and the worker thread.
final class JobControl: Sendable {
    enum Phase { case queued, running, done }
    struct State {
        var phase = Phase.queued
        var cancelled = false
        /// The socket was shut down under this job (cancel or close): the context must be dropped.
        var interrupted = false
    }
    let state = Mutex(State())
}

/// One queued call: `run` executes it on the worker thread, `fail` resolves it without running.
struct Job: Sendable {
    let control: JobControl
    let run: @Sendable (HiredisSession) -> Void
    let fail: @Sendable (any Error) -> Void
}

/// Owns the dedicated OS thread on which every hiredis call of one connection runs.
///
/// hiredis is blocking, so it must never run on Swift's cooperative pool; callers await a
/// continuation that the thread resumes.
final class RedisWorker: @unchecked Sendable {
    // Everything below is guarded by `condition`, except `session`, which only the thread touches.
    private let condition = NSCondition()
    private var queue: [Job] = []
    private var queueHead = 0
    private var stopping = false
    private var current: JobControl?
    private var finished = false
    private let session: HiredisSession

    init(session: HiredisSession) {
        self.session = session
        let thread = Thread { [self] in self.threadMain() }
        thread.name = "tworker.redis"
        thread.start()
    }

    /// True once the thread has exited (it then holds no reference to anything).
    var threadFinished: Bool {
        condition.lock()
        defer { condition.unlock() }
        return finished
    }

    /// Runs `work` on the thread and returns its result. Task cancellation interrupts the call.
    func submit<T: Sendable>(_ work: @escaping @Sendable (HiredisSession) throws -> T) async throws -> T {
        let control = JobControl()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
                let job = Job(
                    control: control,
                    run: { session in
                        let result = Result { try work(session) }
                        let interrupted = control.state.withLock { state in
                            state.phase = .done
                            return state.interrupted
                        }
                        if interrupted {
                            // The socket was shut down under us (cancel or close): never reuse that
                            // context, and report the failure it caused as the cancellation it is.
                            session.disconnect()
                            if case .failure = result {
                                continuation.resume(throwing: CancellationError())
                                return
                            }
                        }
                        continuation.resume(with: result)
                    },
                    fail: { continuation.resume(throwing: $0) }
                )
                if !enqueue(job) {
                    job.fail(CancellationError())
                }
            }
        } onCancel: {
            cancel(control)
        }
    }

    /// Closes the connection and lets the thread exit. Never waits, so it is safe from any thread,
    /// including the worker thread itself and deinit.
    func stop() {
        condition.lock()
        if stopping {
            condition.unlock()
            return
        }
        stopping = true
        let pending = queue[queueHead...]
        queue = []
        queueHead = 0
        let running = current
        condition.broadcast()
        condition.unlock()

        if let running { interrupt(running) }
        for job in pending { job.fail(CancellationError()) }
    }

    private func enqueue(_ job: Job) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        if stopping { return false }
        if job.control.state.withLock({ $0.cancelled }) { return false }
        queue.append(job)
        condition.signal()
        return true
    }

    private func cancel(_ control: JobControl) {
        condition.lock()
        var removed: Job?
        if let index = queue[queueHead...].firstIndex(where: { $0.control === control }) {
            removed = queue.remove(at: index)
        }
        condition.unlock()
        if let removed {
            removed.fail(CancellationError())
            return
        }
        control.state.withLock { $0.cancelled = true }
        interrupt(control)
    }

    /// Shuts the socket down if `control` is the running job; done under its lock so the job
    /// cannot finish in between and the shutdown hit the next command instead.
    private func interrupt(_ control: JobControl) {
        control.state.withLock { state in
            guard state.phase == .running else { return }
            state.interrupted = true
            session.sockets.shutdownSocket()
        }
    }

    private func threadMain() {
        Self.blockSIGPIPE()
        while let job = nextJob() {
            let start = job.control.state.withLock { state -> Bool in
                if state.cancelled { return false }
                state.phase = .running
                return true
            }
            if start {
                job.run(session)
            } else {
                job.fail(CancellationError())
            }
            condition.lock()
            current = nil
            condition.unlock()
        }
        session.disconnect()
        condition.lock()
        finished = true
        condition.unlock()
    }

    private func nextJob() -> Job? {
        condition.lock()
        defer { condition.unlock() }
        while queueHead == queue.count && !stopping {
            condition.wait()
        }
        guard !stopping, queueHead < queue.count else { return nil }
        let job = queue[queueHead]
        queueHead += 1
        if queueHead > 64 && queueHead * 2 > queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        }
        current = job.control
        return job
    }

    /// hiredis writes with write(2): a peer that closed would raise SIGPIPE and kill the process.
    /// Blocking it on this thread only turns that into EPIPE without touching process-wide state
    /// (an ignored SIGPIPE would be inherited by every build command the worker spawns).
    private static func blockSIGPIPE() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }
}
