import Foundation
import Logging
import RedisClient

/// One worker's view of the job queues and of its own processing list.
///
/// A job moves atomically from `<namespace>:queue:<queue>` to `tworker:processing:<host>:<vm>`
/// (LMOVE inside one script, from the first non-empty queue of the worker's list) and leaves
/// the processing list only in the same transaction that writes its final state, requeues it
/// or files it as failed. A worker killed at any point therefore leaves its job where the next
/// start (or another host) finds it.
public struct WorkQueue: Sendable {
    public let redis: RedisConnection
    /// A second connection for the blocking wait, so it never delays heartbeats or logs.
    public let blockingRedis: RedisConnection
    public let keys: RedisKeys
    /// The queue of the job in hand: where a requeue puts it back.
    public let queue: String
    /// What `take` serves, highest priority first.
    public let queues: QueueList
    public let vm: String
    public let logger: Logger
    /// Replicas that must confirm the move into the processing list and the final commit
    /// (`redis.wait_replicas`); nil: no WAIT.
    public var replicaWait: ReplicaWait?

    public init(redis: RedisConnection, blockingRedis: RedisConnection, keys: RedisKeys, queue: String, queues: QueueList? = nil,
                vm: String, logger: Logger, replicaWait: ReplicaWait? = nil) {
        self.replicaWait = replicaWait
        self.redis = redis
        self.blockingRedis = blockingRedis
        self.keys = keys
        self.queues = queues ?? QueueList(unchecked: queue)
        self.queue = queue
        self.vm = vm
        self.logger = logger
    }

    public var queueKey: String { keys.queue(queue) }
    public var processingKey: String { keys.processing(vm: vm) }

    /// The same lists, holding a job that came from `queue`.
    public func holding(from queue: String) -> WorkQueue {
        WorkQueue(redis: redis, blockingRedis: blockingRedis, keys: keys, queue: queue, queues: queues, vm: vm, logger: logger,
                  replicaWait: replicaWait)
    }

    // MARK: - Taking a job

    /// A job taken into the processing list, and the queue it came from.
    public struct Taken: Sendable, Equatable {
        public var queue: String
        public var raw: [UInt8]
        /// Not taken now: the processing list already held it (a take whose reply was lost,
        /// an entry left unsettled). `queue` is then empty; the job's record says where it came from.
        public var held = false

        public init(queue: String, raw: [UInt8], held: Bool = false) {
            self.queue = queue
            self.raw = raw
            self.held = held
        }
    }

    /// How long an idle worker waits before it looks at its queues again: this bounds how late a
    /// push by any client is seen. See README "Queue lists" for what it costs an idle worker.
    public static let pollInterval: Duration = .milliseconds(40)

    /// The fetch: LMOVE from the first non-empty queue in priority order (`*` expands to every
    /// queue in `<ns>:queues`, sorted) into the processing list, all in one step, so priority is
    /// strict and a SIGKILL finds the job either in its queue or in the processing list. The
    /// job's record notes the queue (a requeue after a crash puts it back there). When every
    /// queue is empty it returns `{'empty'}`. A worker never holds two jobs: while the processing
    /// list holds an entry, that entry comes back (`{'held', raw}`) and no queue is touched.
    static let takeScript = """
    local held = redis.call('LINDEX', KEYS[1], 0)
    if held then return {'held', held} end
    local seen = {}
    local function take(name)
      if seen[name] then return nil end
      seen[name] = true
      local raw = redis.call('LMOVE', ARGV[1] .. name, KEYS[1], 'LEFT', 'RIGHT')
      if not raw then return nil end
      local ok, job = pcall(cjson.decode, raw)
      if ok and type(job) == 'table' and type(job.args) == 'table' and type(job.args[1]) == 'table' then
        local id = job.args[1].id
        if type(id) == 'number' and id == math.floor(id) then id = string.format('%d', id) end
        if type(id) == 'string' and #id > 0 and #id <= 128 and not string.find(id, '%s') then
          -- A note only: refused (ACL, OOM), it must not fail a move that already happened.
          redis.pcall('HSET', ARGV[2] .. id, 'queue', name)
          redis.pcall('EXPIRE', ARGV[2] .. id, ARGV[3])
        end
      end
      return {'job', name, raw}
    end
    for i = 4, #ARGV do
      if ARGV[i] == '*' then
        local all = redis.call('SMEMBERS', KEYS[2])
        table.sort(all)
        for _, name in ipairs(all) do
          local taken = take(name)
          if taken then return taken end
        end
      else
        local taken = take(ARGV[i])
        if taken then return taken end
      end
    end
    return {'empty'}
    """

    /// Takes the next job into the processing list; nil when every queue stayed empty for
    /// `block` (nil: do not wait at all, burst mode).
    public func take(block: Duration?, retention: Int = 604_800) async throws -> Taken? {
        let command = ["EVAL", Self.takeScript, "2", processingKey, keys.queues,
                       keys.queue(""), keys.job(""), String(retention)] + queues.names
        let deadline = block.map { ContinuousClock.now + $0 }
        while true {
            let reply = try await blockingRedis.send(command)
            let parts = reply.array ?? []
            if parts.count == 2, parts[0].string == "held", case .bulk(let raw) = parts[1] {
                // Nothing moved: no replica has anything to confirm.
                return Taken(queue: "", raw: raw, held: true)
            }
            if parts.count == 3, parts[0].string == "job", let queue = parts[1].string, case .bulk(let raw) = parts[2] {
                if let replicaWait {
                    // On the same connection: WAIT counts this client's writes. A lost
                    // connection here (the master died) throws: the caller then runs the job
                    // only if the new master's processing list has it (the move replicated);
                    // otherwise it is still in the queue there, for anyone.
                    let confirmed = replicaWait.check(try await blockingRedis.pipeline([replicaWait.command]).first,
                                                      what: "moving a job into \(processingKey)", logger: logger)
                    if !confirmed, try await !isOnCurrentMaster(raw) {
                        logger.warning("a job taken on a master that is no longer the master was dropped; it is still queued on the new one",
                                       metadata: ["queue": "\(queue)"])
                        continue
                    }
                }
                return Taken(queue: queue, raw: raw)
            }
            guard parts.count == 1, parts[0].string == "empty" else {
                throw RedisError.server("unexpected reply to taking a job: \(reply)")
            }
            guard let deadline else { return nil }
            let left = deadline - ContinuousClock.now
            if left <= .zero { return nil }
            // Not `XREAD BLOCK 40`: Redis ends a blocked call on its own timer (10 times a second
            // at the default `hz`), so a 40 ms block lasted up to 100 ms and a plain RPUSH waited
            // that long. The wait is this process's own; every push is seen within the interval.
            try await Task.sleep(for: min(left, Self.pollInterval))
        }
    }

    /// After an unconfirmed move: whether the master as it is found now (for a Sentinel
    /// endpoint, asked of the sentinels again) holds `raw` in the processing list. A lone master
    /// does (the pool keeps working without a replica); an old master that a failover replaced
    /// while it still took writes does not, and the job is still in the new master's queue.
    private func isOnCurrentMaster(_ raw: [UInt8]) async throws -> Bool {
        await blockingRedis.reconnect()
        await redis.reconnect()
        return try await holds(raw)
    }

    /// `take` without the queue.
    public func fetch(block: Duration?) async throws -> [UInt8]? {
        try await take(block: block)?.raw
    }

    /// What the processing list holds: jobs this worker took but never finished.
    public func unfinished() async throws -> [[UInt8]] {
        let reply = try await withRedisRetry(logger: logger, what: "read \(processingKey)") {
            try await redis.send(["LRANGE", processingKey, "0", "-1"])
        }
        return (reply.array ?? []).compactMap { if case .bulk(let bytes) = $0 { bytes } else { nil } }
    }

    /// Whether `raw` is still in the processing list (a write that removes it has not landed).
    public func holds(_ raw: [UInt8]) async throws -> Bool {
        try await withRedisRetry(logger: logger, what: "read \(processingKey)") { try await holdsOnce(raw) }
    }

    private func holdsOnce(_ raw: [UInt8]) async throws -> Bool {
        !(try await redis.send(bytes: [Array("LPOS".utf8), Array(processingKey.utf8), raw])).isNull
    }

    /// Puts `raw` back at the head of the queue as `requeued`, together with `commands`.
    public func requeue(_ raw: [UInt8], as replacement: [UInt8], with commands: [[String]]) async throws {
        try await requeue(raw, as: replacement, binary: commands.map(JobStore.bytes))
    }

    /// The same with binary-safe commands (log entries).
    public func requeue(_ raw: [UInt8], as replacement: [UInt8], binary commands: [[[UInt8]]]) async throws {
        try await commitRemoving(raw, commands: [[Array("LPUSH".utf8), Array(queueKey.utf8), replacement]] + commands)
    }

    /// Files a job that cannot run in Resque's failed queue.
    public func fail(_ raw: [UInt8], failure: [UInt8], with commands: [[String]]) async throws {
        try await commitRemoving(raw, commands: [
            [Array("RPUSH".utf8), Array(keys.failed.utf8), failure],
            JobStore.bytes(["INCR", keys.failedCount]),
        ] + commands.map(JobStore.bytes))
    }

    /// Writes the job's final state and only then forgets it.
    public func complete(_ raw: [UInt8], with commands: [[String]]) async throws {
        try await commitRemoving(raw, commands: commands.map(JobStore.bytes))
    }

    /// The same with binary-safe commands (log entries).
    public func complete(_ raw: [UInt8], with commands: [[[UInt8]]]) async throws {
        try await commitRemoving(raw, commands: commands)
    }

    /// Runs `commands` and removes `raw` from the processing list in one transaction, every
    /// reply checked (an error inside EXEC's results too).
    ///
    /// If the connection drops before the reply arrives the transaction may or may not have run;
    /// the entry's presence in the processing list tells which, so it never runs twice. That
    /// holds across a failover too: asked on the new master, the list says whether the
    /// transaction reached it (the `WAIT` behind it confirms it did before this returns).
    private func commitRemoving(_ raw: [UInt8], commands: [[[UInt8]]]) async throws {
        let transaction = JobStore.transaction(commands + [[Array("LREM".utf8), Array(processingKey.utf8), Array("1".utf8), raw]])
        let wait = replicaWait.map { [JobStore.bytes($0.command)] } ?? []
        var tries = 0
        _ = try await withRedisRetry(logger: logger, what: "commit job state") { () async throws -> [RedisReply]? in
            tries += 1
            if tries > 1, try await !holdsOnce(raw) { return nil }
            let replies = try await redis.pipeline(bytes: transaction + wait)
            let written = try Array(replies.prefix(transaction.count)).checkedForWrite(accepting: JobStore.isLogEntryAlreadyWritten)
            if let replicaWait, !replicaWait.check(replies.count > transaction.count ? replies.last : nil,
                                                   what: "committing a job's state", logger: logger) {
                // Unconfirmed: the master as found now must not still hold the entry (an old
                // master replaced while it took the commit); if it does, write it again there.
                await redis.reconnect()
                if try await holdsOnce(raw) {
                    throw RedisError.connectionLost("the commit went to a master that is no longer the master; writing it again")
                }
            }
            return written
        }
    }
}
