import Foundation
import Logging
import RedisClient

/// Event types on `tworker:events`.
/// Why a job went back to its queue (the `reason` of a `job:requeued` event).
public enum RequeueReason: String, Sendable, CaseIterable {
    /// Not the build's own result: a VM, SSH or program that failed.
    case infrastructure
    /// The worker was told to stop (TERM, INT).
    case stop
    /// An operator aborted the build (USR1).
    case abort
    /// Its worker died; a reaper or the worker's next run put it back.
    case recovered
    /// Taken by a worker that had to give it back untouched (paused, maintenance, retried elsewhere).
    case handedBack = "handed_back"
}

public enum JobEvent: String, Sendable {
    case received = "job:received"
    case started = "job:started"
    case finished = "job:finished"
    case requeued = "job:requeued"
    case failed = "job:failed"
}

/// Every write that changes a job: its record (`tworker:job:<id>`), its events
/// (`tworker:events`), its log (`tworker:job:<id>:log`) and where its queue entry is.
///
/// Each transition is one MULTI/EXEC (or one Lua script) whose every reply is checked; a
/// transient error reply or a lost connection is retried, so a state reached while Redis was
/// away is written once it is back. Transitions that take the entry out of a processing list
/// go through `WorkQueue`, which knows whether a transaction whose reply was lost had run.
public struct JobStore: Sendable {
    public static let eventsMaxLength = "100000"

    public let redis: RedisConnection
    public let keys: RedisKeys
    public let retention: Int
    /// The worker (`host:vm`) making the changes, named in every event; empty for the CLI.
    public let worker: String
    public let logger: Logger
    /// The worker's Resque registration, kept current with each job (nil for the CLI and the reaper).
    public var resque: ResqueWorkerRegistry?
    /// Replicas that must confirm an enqueue (`redis.wait_replicas`); nil: no WAIT.
    public var replicaWait: ReplicaWait?

    public init(redis: RedisConnection, keys: RedisKeys, retention: Int, worker: String, logger: Logger) {
        self.redis = redis
        self.keys = keys
        self.retention = retention
        self.worker = worker
        self.logger = logger
    }

    // MARK: - Wire formats

    /// The commands that set `fields` on the record, refresh its expiry and emit `event`.
    public func stateCommands(id: String, state: JobState, fields: [String: String], event: JobEvent?, at: String,
                              reason: RequeueReason? = nil) -> [[String]] {
        var hset = ["HSET", keys.job(id), "state", state.rawValue]
        for (name, value) in fields.sorted(by: { $0.key < $1.key }) { hset += [name, value] }
        var commands = [hset, ["EXPIRE", keys.job(id), String(retention)]]
        if let event { commands.append(eventCommand(event, id: id, state: state, at: at, reason: reason)) }
        return commands
    }

    /// The one event format; `id` is empty for an entry that had none. A requeue says why
    /// (the master counts `tworker_requeues_total{reason}` from it).
    func eventCommand(_ event: JobEvent, id: String, state: JobState, at: String, reason: RequeueReason? = nil) -> [String] {
        ["XADD", RedisKeys.events, "MAXLEN", "~", Self.eventsMaxLength, "*",
         "type", event.rawValue, "id", id, "state", state.rawValue, "worker", worker, "at", at] + (reason.map { ["reason", $0.rawValue] } ?? [])
    }

    /// One entry of a log: output, or (`final`) the mark that the log is closed.
    public struct LogEntry: Sendable {
        public var number: Int
        public var data: [UInt8]?
        public var final: Bool
        /// When its first byte was printed, in milliseconds since the epoch.
        public var at: Int64 = Timestamp.milliseconds()
    }

    /// The one wire format of a log: `XADD <key> 0-<n> n <n> at <ms> [data <bytes>] [final 1]`,
    /// and the expiry when `retention` is given (a closed log).
    static func logCommands(key: String, entries: [LogEntry], expireAfter retention: Int?) -> [[[UInt8]]] {
        let key = Array(key.utf8)
        var commands: [[[UInt8]]] = entries.map { entry in
            var command: [[UInt8]] = [Array("XADD".utf8), key, Array("0-\(entry.number)".utf8), Array("n".utf8), Array(String(entry.number).utf8),
                                      Array("at".utf8), Array(String(entry.at).utf8)]
            if let data = entry.data { command += [Array("data".utf8), data] }
            if entry.final { command += [Array("final".utf8), Array("1".utf8)] }
            return command
        }
        if let retention { commands.append([Array("EXPIRE".utf8), key, Array(String(retention).utf8)]) }
        return commands
    }

    /// Writes `text` to a log no streamer is writing (a job cancelled in its queue, a dead
    /// worker's job), numbered after `lastNumber`, for a transaction; `closing` adds the
    /// `final` entry and the expiry.
    func noteCommands(id: String, after lastNumber: Int, text: String, closing: Bool) -> [[[UInt8]]] {
        var entries = [LogEntry(number: lastNumber + 1, data: Array(text.utf8), final: false)]
        if closing { entries.append(LogEntry(number: lastNumber + 2, data: nil, final: true)) }
        return Self.logCommands(key: keys.log(id), entries: entries, expireAfter: closing ? retention : nil)
    }

    /// Reads the newest entry of a log; `lastLogNumber(in:)` takes its number.
    static func logEndCommand(key: String) -> [String] { ["XREVRANGE", key, "+", "-", "COUNT", "1"] }

    /// The `n` of the newest entry in a `logEndCommand` reply (0 for none).
    static func lastLogNumber(in reply: RedisReply) -> Int {
        guard let entry = reply.array?.first?.array?.first?.string, let sequence = entry.split(separator: "-").last else { return 0 }
        return Int(sequence) ?? 0
    }

    func lastLogNumber(of id: String) async throws -> Int {
        Self.lastLogNumber(in: try await redis.send(Self.logEndCommand(key: keys.log(id))))
    }

    /// An entry Redis already has (a write retried after a lost reply) is a write made.
    static func isLogEntryAlreadyWritten(_ message: String) -> Bool { message.contains("equal or smaller") }

    /// Appends log entries (from `logCommands`) in one transaction; throws what Redis refused.
    static func appendLog(_ commands: [[[UInt8]]], redis: RedisConnection, logger: Logger, key: String) async throws {
        _ = try await withRedisRetry(logger: logger, what: "write the log \(key)") {
            try await redis.checkedPipeline(bytes: transaction(commands), accepting: isLogEntryAlreadyWritten)
        }
    }

    static func bytes(_ command: [String]) -> [[UInt8]] { command.map { Array($0.utf8) } }

    /// `commands` between MULTI and EXEC: they run all together or not at all.
    static func transaction(_ commands: [[[UInt8]]]) -> [[[UInt8]]] {
        [[Array("MULTI".utf8)]] + commands + [[Array("EXEC".utf8)]]
    }

    // MARK: - Transitions

    /// `tworker enqueue`: the record says `queued` and the entry joins the queue, together.
    /// Not retried: a lost reply would leave unknown whether the job was queued.
    /// A push of an id is a new run: a cancel mark left from an earlier one goes with it.
    public func queued(_ raw: [UInt8], id: String, queue: String, at queuedAt: String) async throws {
        let record = ["HSET", keys.job(id), "state", JobState.queued.rawValue, "queued_at", queuedAt, "attempts", "0", "queue", queue]
        let transaction = Self.transaction([
            Self.bytes(record), Self.bytes(["EXPIRE", keys.job(id), String(retention)]), Self.bytes(["DEL", keys.cancel(id)]),
            Self.bytes(["SADD", keys.queues, queue]), [Array("RPUSH".utf8), Array(keys.queue(queue).utf8), raw],
        ])
        let wait = replicaWait.map { [Self.bytes($0.command)] } ?? []
        let replies = try await redis.pipeline(bytes: transaction + wait)
        _ = try Array(replies.prefix(transaction.count)).checkedForWrite()
        // Said, not fatal: the job is queued on the master either way.
        replicaWait?.check(replies.count > transaction.count ? replies.last : nil, what: "queueing job \(id)", logger: logger)
    }

    /// A worker took the job into its processing `list`; `rerun` starts a fresh log for an id
    /// that already finished once.
    public func received(_ job: QueuedJob, into list: WorkQueue, rerun: Bool, alongWith extra: [[String]]) async throws {
        let id = job.payload.id
        var fields = ["attempts": String(job.attempts + 1), "worker": worker, "vm": list.vm, "host": keys.host,
                      "received_at": Timestamp.now(), "error": "", "exit_code": "", "finished_at": "", "queue": list.queue]
        if let queuedAt = job.queuedAt { fields["queued_at"] = queuedAt }
        let reset = rerun ? [["DEL", keys.log(id)]] : []
        let registry = resque?.workingCommands(on: job, queue: list.queue) ?? []
        try await commit(reset + stateCommands(id: id, state: .received, fields: fields, event: .received, at: Timestamp.now()) + extra + registry,
                         what: "record job \(id) received")
    }

    /// The build starts.
    public func started(id: String) async throws {
        try await record(id: id, state: .started, fields: ["started_at": Timestamp.now()], event: .started)
    }

    /// Records a state change that moves no queue entry.
    public func record(id: String, state: JobState, fields: [String: String] = [:], event: JobEvent?) async throws {
        try await commit(stateCommands(id: id, state: state, fields: fields, event: event, at: Timestamp.now()),
                         what: "record job \(id) \(state.rawValue)")
    }

    private func commit(_ commands: [[String]], what: String) async throws {
        let transaction = Self.transaction(commands.map(Self.bytes))
        _ = try await withRedisRetry(logger: logger, what: what) { try await redis.checkedPipeline(bytes: transaction) }
    }

    /// The job's end: the log's last entries (`closingLog`), the record, the counters and the
    /// cancel mark, together with taking the entry out of `list`. A caller retrying passes the
    /// same `now` each time, so the record says when the job ended, not when Redis took it.
    public func finish(_ raw: [UInt8], id: String, state: JobState, exitCode: Int32?, error: String?, closingLog: [[[UInt8]]],
                       from list: WorkQueue, alongWith extra: [[String]] = [], at now: String = Timestamp.now()) async throws {
        var commands = stateCommands(id: id, state: state,
                                     fields: ["finished_at": now, "exit_code": exitCode.map(String.init) ?? "", "error": error ?? ""],
                                     event: .finished, at: now)
        if state != .cancelled { commands.append(["INCR", keys.processedCount]) }
        commands.append(["HINCRBY", keys.worker(vm: list.vm), "jobs_done", "1"])
        // A cancel mark never outlives the run it was meant for (a later rerun of the id runs).
        commands.append(["DEL", keys.cancel(id)])
        commands += resque?.doneCommands(processed: state != .cancelled) ?? []
        try await list.complete(raw, with: closingLog + (commands + extra).map(Self.bytes))
    }

    /// Back to the head of `list`'s queue as `replacement` (the entry itself when nil), the
    /// record `requeued` with `fields`; `id` nil for an entry that names no job.
    public func requeue(_ raw: [UInt8], as replacement: [UInt8]? = nil, id: String?, fields: [String: String] = [:], event: JobEvent?,
                        reason: RequeueReason? = nil, log: [[[UInt8]]] = [], from list: WorkQueue, alongWith extra: [[String]] = [],
                        at now: String = Timestamp.now()) async throws {
        let record = id.map { stateCommands(id: $0, state: .requeued, fields: fields, event: event, at: now, reason: reason) } ?? []
        let registry = resque?.doneCommands(processed: false) ?? []
        try await list.requeue(raw, as: replacement ?? raw, binary: log + (record + extra + registry).map(Self.bytes))
    }

    /// Files an entry that cannot run in Resque's failed queue; the job, if it names one, ends
    /// `errored` and its cancel mark goes (a later run of the id runs).
    public func fileAsFailed(_ raw: [UInt8], rejected error: PayloadError, from list: WorkQueue) async throws {
        let failure = ResqueFailure(rejected: error, raw: raw, worker: worker, queue: list.queue)
        let now = Timestamp.now()
        let commands = if let id = error.jobID {
            stateCommands(id: id, state: .errored, fields: ["error": error.description, "finished_at": now,
                                                         "worker": worker, "vm": list.vm, "host": keys.host],
                          event: .failed, at: now) + [["DEL", keys.cancel(id)]]
        } else {
            [eventCommand(.failed, id: "", state: .errored, at: now)]
        }
        try await list.fail(raw, failure: failure.json(), with: commands + (resque?.doneCommands(processed: false, failed: true) ?? []))
    }

    /// What a dead worker (this store's `worker`) left in its processing `list`: back to the head
    /// of the queue it came from (`list`'s when the record names none) with one attempt more,
    /// or `errored` once its attempts are used (dropping its cancel mark, which a requeued run keeps).
    public func recoverFromDeadWorker(_ raw: [UInt8], from list: WorkQueue, policy: AttemptPolicy) async throws {
        guard case .success(let job) = JobDecoder.decode(raw) else {
            // Only a worker files malformed entries; the list keeps nothing a worker would not have rejected.
            try await list.complete(raw, with: [[Array("RPUSH".utf8), Array(keys.failed.utf8), raw]])
            return
        }
        let id = job.payload.id
        let lastNumber = try await withRedisRetry(logger: logger, what: "read the end of \(keys.log(id))") { try await lastLogNumber(of: id) }
        switch policy.afterFailedAttempt(of: job) {
        case .giveUp(let attempts):
            let reason = "The worker running this job (\(worker)) died \(attempts) times; giving up after \(policy.maxAttempts) attempts."
            let now = Timestamp.now()
            try await list.complete(raw, with: noteCommands(id: id, after: lastNumber, text: "\n\(reason)\n", closing: true)
                + (stateCommands(id: id, state: .errored, fields: ["error": reason, "finished_at": now], event: .finished, at: now)
                    + [["DEL", keys.cancel(id)]]).map(Self.bytes))
            logger.warning("gave up a job whose worker died", metadata: ["job": "\(id)", "worker": "\(worker)"])
        case .requeue(let attempts):
            let recorded = try await withRedisRetry(logger: logger, what: "read job \(id)") {
                try await redis.send(["HGET", keys.job(id), "queue"])
            }.string
            let queue = recorded.flatMap { $0.isEmpty ? nil : $0 } ?? list.queue
            let note = "\nThe worker running this job (\(worker)) died; the job was requeued (attempt \(attempts + 1) of \(policy.maxAttempts)).\n"
            try await requeue(raw, as: job.withAttempts(attempts), id: id, fields: ["attempts": String(attempts), "error": "worker \(worker) died"],
                              event: .requeued, reason: .recovered, log: noteCommands(id: id, after: lastNumber, text: note, closing: false),
                              from: WorkQueue(redis: redis, blockingRedis: redis, keys: keys, queue: queue, vm: list.vm, logger: logger))
            logger.warning("requeued a job whose worker died", metadata: ["job": "\(id)", "worker": "\(worker)", "queue": "\(queue)"])
        }
    }

    /// Sets the cancel mark unless the job already ended, in one step: a worker finishing the
    /// job deletes the mark in its final transaction, so a mark never outlives the run.
    static let markUnlessFinal = """
    local state = redis.call('HGET', KEYS[1], 'state')
    if state == 'passed' or state == 'failed' or state == 'errored' or state == 'cancelled' then return state end
    redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
    return false
    """

    /// Marks job `id` cancelled for whichever worker takes or holds it; returns the final
    /// state instead when the job already ended.
    public func markCancelled(id: String, reason: String) async throws -> JobState? {
        let reply = try await withRedisRetry(logger: logger, what: "mark job \(id) cancelled") {
            try await redis.send(["EVAL", Self.markUnlessFinal, "2", keys.job(id), keys.cancel(id), reason, String(retention)])
        }
        return reply.string.flatMap(JobState.init(rawValue:))
    }

    /// Drops the cancel mark of a job nobody knows.
    public func unmarkCancelled(id: String) async throws {
        _ = try await redis.send(["DEL", keys.cancel(id)])
    }

    /// Takes `raw` off `queue`, writes `cancelled`, closes the log and drops the mark in one
    /// transaction; false when a worker took the entry first (the worker then cancels it).
    public func cancelQueued(_ raw: [UInt8], queue: String, id: String, reason: String) async throws -> Bool {
        // WATCH makes the transaction fail, not half-run, if the queue or the log changes meanwhile.
        for _ in 0..<50 {
            _ = try await redis.send(["WATCH", queue, keys.log(id)])
            let position = try await redis.send(bytes: [Array("LPOS".utf8), Array(queue.utf8), raw])
            if position.isNull {
                _ = try await redis.send(["UNWATCH"])
                return false
            }
            let lastNumber = try await lastLogNumber(of: id)
            let now = Timestamp.now()
            let state = stateCommands(id: id, state: .cancelled, fields: ["error": reason, "finished_at": now], event: .finished, at: now)
            let log = noteCommands(id: id, after: lastNumber, text: "The job was cancelled before it started: \(reason)\n", closing: true)
            let replies = try await redis.pipeline(bytes: Self.transaction([[Array("LREM".utf8), Array(queue.utf8), Array("1".utf8), raw]]
                + state.map(Self.bytes) + log + [Self.bytes(["DEL", keys.cancel(id)])]))
            // EXEC answering nil: a watched key changed and nothing ran; look again.
            if replies.last?.isNull ?? true { continue }
            do {
                _ = try replies.checkedForWrite(accepting: Self.isLogEntryAlreadyWritten)
            } catch let error as RedisError where error.isTransient {
                // Refused while queueing (e.g. LOADING): nothing ran either.
                try await Task.sleep(for: .milliseconds(100))
                continue
            } catch {
                throw RedisError.server("cancelling job \(id): \(error)")
            }
            return true
        }
        throw RedisError.server("cancelling job \(id): its queue kept changing; try again")
    }

    // MARK: - Reading

    /// What one round trip tells about a job before it runs.
    public struct Opening: Sendable {
        /// The id already finished once: this is a rerun with a fresh log.
        public var rerun: Bool
        public var lastLogNumber: Int
        /// Cancelled while it waited.
        public var cancelReason: String?
    }

    public func opening(of id: String) async throws -> Opening {
        let known = try await withRedisRetry(logger: logger, what: "read job \(id)") {
            try await redis.pipeline([["HGET", keys.job(id), "state"], Self.logEndCommand(key: keys.log(id)), ["GET", keys.cancel(id)]])
        }
        guard known.count == 3 else { throw RedisError.server("unexpected reply to reading job \(id): \(known)") }
        for case .error(let message) in known { throw RedisError.server(message) }
        let rerun = known[0].string.flatMap(JobState.init(rawValue:))?.isFinal ?? false
        return Opening(rerun: rerun, lastLogNumber: rerun ? 0 : Self.lastLogNumber(in: known[1]), cancelReason: known[2].string)
    }

    /// Why job `id` was cancelled; nil while it is not.
    public func cancelReason(of id: String) async throws -> String? {
        try await redis.send(["GET", keys.cancel(id)]).string
    }

    /// The record as stored, empty when there is none.
    public func read(id: String) async throws -> [String: String] {
        let reply = try await redis.send(["HGETALL", keys.job(id)])
        return Self.hash(from: reply)
    }

    static func hash(from reply: RedisReply) -> [String: String] {
        var result: [String: String] = [:]
        let items = reply.array ?? []
        var index = 0
        while index + 1 < items.count {
            if let name = items[index].string { result[name] = items[index + 1].string ?? "" }
            index += 2
        }
        return result
    }
}
