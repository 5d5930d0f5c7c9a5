import Foundation
import Logging
import RedisClient

/// One worker as Resque registers it, so resque-web, pyres and other Resque tools list it:
/// its id `host:pid:queues` in `<ns>:workers`, `<ns>:worker:<id>:started`, Resque's JSON of
/// the running job in `<ns>:worker:<id>`, and `<ns>:stat:processed:<id>` /
/// `<ns>:stat:failed:<id>` beside Resque's global counters.
///
/// tworker also notes each id it registers in `tworker:resque_workers:<ns>` (id -> `host:vm`,
/// its heartbeat): `prune` removes the ids whose heartbeat is gone or belongs to another
/// process, as Resque's `prune_dead_workers` does for dead pids, and leaves other programs'
/// workers alone.
public struct ResqueWorkerRegistry: Sendable {
    public let keys: RedisKeys
    /// `host:pid:queues`, as Resque's `Worker#to_s`.
    public let id: String
    /// The worker's `tworker:workers` member (`host:vm`).
    public let member: String

    public init(keys: RedisKeys, vm: String, pid: pid_t = getpid(), queues: QueueList) {
        self.keys = keys
        id = "\(keys.host):\(pid):\(queues)"
        member = keys.workerMember(vm: vm)
    }

    /// Registers the worker (after its first heartbeat: `prune` goes by the heartbeat).
    public func registerCommands(now: Date = Date()) -> [[String]] {
        [["SADD", keys.resqueWorkers, id],
         ["SET", keys.resqueWorkerStarted(id), Self.rubyTime(now)],
         ["HSET", keys.resqueRegistry, id, member]]
    }

    /// Resque's record of the job the worker starts: `{"queue","run_at","payload":{"class","args"}}`.
    /// Also re-adds the id (a prune during a long Redis outage may have dropped it).
    public func workingCommands(on job: QueuedJob, queue: String, now: Date = Date()) -> [[String]] {
        var payload: [String: JSONValue] = ["args": job.envelope["args"] ?? .array([])]
        payload["class"] = job.envelope["class"] ?? .string("TWorker::Build")
        let record = JSONValue.object(["queue": .string(queue), "run_at": .string(Self.iso8601(now)), "payload": .object(payload)])
        return [["SET", keys.resqueWorker(id), String(decoding: record.serialized(), as: UTF8.self)],
                ["SADD", keys.resqueWorkers, id], ["HSET", keys.resqueRegistry, id, member]]
    }

    /// The job is over: no current job; counted as Resque counts (`processed` for a job that
    /// ran, `failed` beside the global `stat:failed`).
    public func doneCommands(processed: Bool, failed: Bool = false) -> [[String]] {
        var commands = [["DEL", keys.resqueWorker(id)]]
        if processed { commands.append(["INCR", keys.processedCount(worker: id)]) }
        if failed { commands.append(["INCR", keys.failedCount(worker: id)]) }
        return commands
    }

    /// A clean exit: what Resque's `unregister_worker` removes.
    public func unregisterCommands() -> [[String]] {
        [["SREM", keys.resqueWorkers, id], ["HDEL", keys.resqueRegistry, id],
         ["DEL", keys.resqueWorker(id), keys.resqueWorkerStarted(id), keys.processedCount(worker: id), keys.failedCount(worker: id)]]
    }

    /// Unregisters every tworker worker whose heartbeat (`tworker:worker:<host>:<vm>`) is gone
    /// or carries another pid; returns the pruned ids.
    static let pruneScript = """
    local pruned = {}
    local all = redis.call('HGETALL', KEYS[1])
    for i = 1, #all, 2 do
      local id, member = all[i], all[i + 1]
      local pid = string.match(id, '^[^:]*:([^:]*):')
      if redis.call('HGET', ARGV[2] .. member, 'pid') ~= pid then
        redis.call('SREM', KEYS[2], id)
        redis.call('HDEL', KEYS[1], id)
        redis.call('DEL', ARGV[1] .. 'worker:' .. id, ARGV[1] .. 'worker:' .. id .. ':started',
                   ARGV[1] .. 'stat:processed:' .. id, ARGV[1] .. 'stat:failed:' .. id)
        table.insert(pruned, id)
      end
    end
    return pruned
    """

    /// The prune as one command, for any host's registrations in `namespace`.
    public static func pruneCommand(namespace: String) -> [String] {
        let keys = RedisKeys(namespace: namespace, host: "")
        return ["EVAL", pruneScript, "2", keys.resqueRegistry, keys.resqueWorkers, namespace + ":", RedisKeys.workerRecordPrefix]
    }

    /// Runs the prune; logs what it removed.
    @discardableResult
    public static func prune(redis: RedisConnection, namespace: String, logger: Logger) async throws -> [String] {
        let pruned = (try await redis.send(pruneCommand(namespace: namespace)).array ?? []).compactMap(\.string)
        for id in pruned { logger.info("pruned dead Resque worker \(id)") }
        return pruned
    }

    /// Ruby's `Time#to_s`, what Resque writes to `:started` (`2024-05-01 12:00:00 +0000`).
    static func rubyTime(_ date: Date) -> String {
        let iso = Timestamp.format(date)
        return String(iso.prefix(10)) + " " + String(iso.dropFirst(11).prefix(8)) + " +0000"
    }

    /// Ruby's `Time#utc.iso8601`, Resque's `run_at` (`2024-05-01T12:00:00Z`).
    static func iso8601(_ date: Date) -> String {
        String(Timestamp.format(date).prefix(19)) + "Z"
    }
}
