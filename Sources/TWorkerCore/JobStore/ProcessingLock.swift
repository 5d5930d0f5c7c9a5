import Foundation
import Logging
import RedisClient

/// The lock (`SET NX PX`) under which a processing list is recovered: a restarting worker and
/// every host's reaper take the same one, so a dead worker's job is requeued once, never twice.
public struct ProcessingLock: Sendable {
    public static let holdTime: Duration = .seconds(30)
    /// Deletes the lock only while it is still ours: one that expired and was taken by
    /// someone else is left to them.
    static let releaseScript = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

    let redis: RedisConnection
    let key: String
    let token: String

    /// One try at taking the lock of `vm`'s processing list; nil when someone else holds it.
    public static func take(redis: RedisConnection, keys: RedisKeys, vm: String) async throws -> ProcessingLock? {
        let lock = ProcessingLock(redis: redis, key: keys.processingLock(vm: vm), token: UUID().uuidString)
        let reply = try await redis.send(["SET", lock.key, lock.token, "NX", "PX", String(holdTime.components.seconds * 1000)])
        return reply.string == "OK" ? lock : nil
    }

    /// Waits up to `holdTime` for the lock (a holder that died lets it expire by then), and goes
    /// on without it after that rather than leave the list unrecovered.
    public static func wait(redis: RedisConnection, keys: RedisKeys, vm: String, logger: Logger) async throws -> ProcessingLock? {
        let deadline = ContinuousClock.now + holdTime
        while ContinuousClock.now < deadline {
            let taken = try await withRedisRetry(logger: logger, what: "lock \(keys.processing(vm: vm))") {
                try await take(redis: redis, keys: keys, vm: vm)
            }
            if let taken { return taken }
            try await Task.sleep(for: .milliseconds(100))
        }
        return nil
    }

    /// Releases in the background: the lock expires by itself if this never lands.
    public func release() {
        Task { [redis, key, token] in _ = try? await redis.send(["EVAL", Self.releaseScript, "1", key, token]) }
    }
}
