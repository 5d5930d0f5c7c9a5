import Foundation
import Logging
import RedisClient
import Synchronization

/// The worker's side of the metrics: observations are collected in memory and written to
/// `tworker:observations:<host>` in one pipeline about once a second, so measuring never
/// waits for Redis. Until a worker starts it (`start`), recording does nothing: the CLI's
/// own VBoxManage calls are nobody's metrics.
public enum WorkerObservations {
    private struct State {
        var vm: String?
        var pending: [Observation] = []
        var reportedReconnects = 0
    }

    private static let state = Mutex(State())
    /// Older entries are trimmed: the master reads them within a second or two.
    static let maxLength = "10000"

    /// Records for `vm` from now on and flushes until the task is cancelled.
    public static func run(vm: String, redis: RedisConnection, keys: RedisKeys, logger: Logger) async {
        state.withLock { $0.vm = vm }
        defer { state.withLock { $0.vm = nil } }
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            await flush(redis: redis, keys: keys, logger: logger)
        }
        await flush(redis: redis, keys: keys, logger: logger)
    }

    public static func record(_ kind: Observation.Kind, labels: [String: String] = [:], value: Double) {
        state.withLock { state in
            guard let vm = state.vm, state.pending.count < 10_000 else { return }
            state.pending.append(Observation(kind, vm: vm, labels: labels, value: value))
        }
    }

    public static func record(_ kind: Observation.Kind, labels: [String: String] = [:], duration: Duration) {
        record(kind, labels: labels, value: duration.seconds)
    }

    /// Writes what is pending; on a failure it is kept for the next try.
    static func flush(redis: RedisConnection, keys: RedisKeys, logger: Logger) async {
        let batch = state.withLock { state -> [Observation] in
            let reconnects = RedisConnection.reconnects.load(ordering: .relaxed)
            if let vm = state.vm, reconnects > state.reportedReconnects {
                state.pending.append(Observation(.redisReconnects, vm: vm, value: Double(reconnects - state.reportedReconnects)))
                state.reportedReconnects = reconnects
            }
            defer { state.pending.removeAll() }
            return state.pending
        }
        guard !batch.isEmpty else { return }
        let commands = batch.map { ["XADD", keys.observations, "MAXLEN", "~", maxLength, "*"] + $0.fields }
        do {
            // All or none, every reply checked: a batch refused (LOADING, OOM) is sent again, never half of it twice.
            _ = try await redis.checkedPipeline([["MULTI"]] + commands + [["EXEC"]])
        } catch {
            logger.debug("observations not written yet", metadata: ["error": "\(error)"])
            state.withLock { $0.pending.insert(contentsOf: batch.prefix(10_000 - min($0.pending.count, 10_000)), at: 0) }
        }
    }
}

extension Duration {
    /// Seconds as a Double.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
