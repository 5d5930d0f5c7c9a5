import Foundation
import RedisClient

extension Master {
    /// Samples what sends no event (heartbeats in Redis, memory in /proc) and runs the reaper;
    /// what it finds goes to the state machine as events. It wakes for the next thing due: often
    /// only while a new worker has not shown its heartbeat yet, at most once a second otherwise.
    func monitor() async {
        var lastWatchdog = ContinuousClock.now
        var lastReap = ContinuousClock.now
        var lastHostBeat: ContinuousClock.Instant?
        let reapInterval = Duration.seconds(max(1, config.heartbeat.interval))
        while !Task.isCancelled && state.finished == nil {
            await checkReadiness()
            let now = ContinuousClock.now
            if lastHostBeat.map({ now - $0 >= .seconds(1) }) ?? true {
                lastHostBeat = now
                await beatHost()
            }
            if now - lastWatchdog >= settings.watchdogInterval {
                lastWatchdog = now
                checkMemory()
                await checkStuck()
            }
            if now - lastReap >= reapInterval {
                lastReap = now
                if let reaper = setup.reaper { await reaper(config, redis, logger) }
            }
            // A slot being spawned has no pid yet: its heartbeat is due soon all the same.
            let awaitingReadiness = state.slots.values.contains { !$0.ready }
            let due = min(lastWatchdog + settings.watchdogInterval, lastReap + reapInterval,
                          ContinuousClock.now + (awaitingReadiness ? .milliseconds(100) : .seconds(1)))
            try? await Task.sleep(until: due)
        }
    }

    /// Keeps `tworker:host:<host>` fresh (about once a second, so a drain shows within a second)
    /// and learns whether the host is drained.
    func beatHost() async {
        let record = HostRecord(host: config.host, pid: getpid(), machine: machineName, startedAt: Timestamp.format(startedWall),
                                heartbeatAt: Timestamp.now(), workers: state.slots.count, stopping: state.isStopping)
        do {
            let drained = try await HostBeat(redis: redis, ttl: HostBeat.ttl(heartbeatInterval: config.heartbeat.interval)).beat(record)
            if (drained != nil) != (drainedBy != nil) {
                logger.info(drained.map { "host drained: workers finish their running jobs and take no new ones (\($0))" }
                            ?? "host undrained: workers take jobs again")
            }
            drainedBy = drained
        } catch {
            logger.debug("host beat failed", metadata: ["error": "\(error)"])
        }
    }

    /// A master that stops cleanly shows `gone` at once rather than after its record's TTL.
    func removeHostRecord() async {
        await redis.writeOnTheWayOut([["DEL", RedisKeys.hostRecord(config.host)]], what: "remove the host record",
                                     within: Heartbeat.removalGrace, logger: logger)
    }

    /// A child is ready once its heartbeat carries its pid; a pause asked for before then is delivered then.
    /// Also looked at right before a stop: the monitor's last look may be older than a worker's
    /// first heartbeat, and a stop treats a child it thinks not ready as having no job (TERM).
    func checkReadiness() async {
        let waiting = state.slots.values.filter { $0.pid != nil && !$0.ready }
        guard !waiting.isEmpty else { return }
        let keys = RedisKeys(namespace: config.redis.namespace, host: config.host)
        guard let replies = try? await redis.pipeline(waiting.map { ["HGET", keys.worker(vm: $0.vm), "pid"] }) else { return }
        for (slot, reply) in zip(waiting, replies) {
            guard let pid = slot.pid, reply.int == Int64(pid) else { continue }
            apply(.ready(number: slot.number, pid: pid))
        }
    }

    private func checkMemory() {
        guard state.watchesMemory else { return }
        for slot in state.slots.values.sorted(by: { $0.number < $1.number }) {
            guard let pid = slot.pid, slot.afterExit == .restart else { continue }
            apply(.memorySample(number: slot.number, pid: pid, rssKiB: ProcessProbe.rssKiB(pid)))
        }
    }

    /// Enforces `timeouts.hard_limit` + grace on each worker's running job, for a worker too
    /// wedged to do it itself: SIGKILL (its builds too); the replacement recovers the job.
    private func checkStuck() async {
        let watched = state.slots.values.filter { $0.pid != nil && $0.ready }
        guard !watched.isEmpty else { return }
        let keys = RedisKeys(namespace: config.redis.namespace, host: config.host)
        let watchdog = StuckWatchdog(hardLimit: .seconds(config.timeouts.hardLimit), grace: settings.stuckGrace)
        guard let beats = try? await redis.pipeline(watched.map { ["HMGET", keys.worker(vm: $0.vm), "pid", "job"] }) else { return }
        var jobs: [(number: Int, pid: pid_t, job: String)] = []
        for (slot, reply) in zip(watched, beats) {
            guard let pid = slot.pid else { continue }
            let fields = reply.array ?? []
            var job = slot.watchedJob
            if fields.count == 2, fields[0].int == Int64(pid) {
                // A live heartbeat of this very process says what it runs (nothing: "").
                job = fields[1].string.flatMap { $0.isEmpty ? nil : $0 }
                apply(.jobSeen(number: slot.number, pid: pid, job: job))
            }
            if let job { jobs.append((slot.number, pid, job)) }
        }
        guard !jobs.isEmpty,
              let started = try? await redis.pipeline(jobs.map { ["HGET", keys.job($0.job), "started_at"] }) else { return }
        let now = Date()
        for (watched, reply) in zip(jobs, started) {
            guard case .kill(let elapsed) = watchdog.check(startedAt: reply.string.flatMap(Timestamp.parse), now: now) else { continue }
            apply(.stuck(number: watched.number, pid: watched.pid, job: watched.job, elapsed: elapsed))
        }
    }
}
