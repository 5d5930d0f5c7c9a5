import Foundation

extension Master {
    /// Answers one control-socket request.
    public func control(_ request: ControlRequest) async -> ControlResponse {
        if request.command == .status { return ControlResponse(ok: true, status: await status()) }
        if request.command == .stop { await checkReadiness() }
        return apply(.control(request)) ?? .failure("no answer to \(request.command.rawValue)")
    }

    static func workerNumber(_ name: String) -> Int? {
        guard name.hasPrefix("worker-"), let number = Int(name.dropFirst("worker-".count)), number > 0 else { return nil }
        return number
    }

    /// The master's view of its children with their heartbeats, plus queue depths.
    public func status() async -> StatusReport {
        let now = Date()
        let keys = RedisKeys(namespace: config.redis.namespace, host: config.host)
        let snapshot = state.slots.values.sorted { $0.number < $1.number }
        let beats = (try? await StatusReport.heartbeats(snapshot.map { keys.workerMember(vm: $0.vm) }, redis: redis))
            ?? Array(repeating: [:], count: snapshot.count)
        var workers: [StatusReport.Worker] = []
        let clock = ContinuousClock.now
        for (slot, beat) in zip(snapshot, beats) {
            var worker = StatusReport.Worker(host: config.host, vm: slot.vm, state: "starting")
            if let pid = slot.pid {
                worker.pid = pid
                if beat["pid"].flatMap(Int32.init) == pid { worker.apply(heartbeat: beat, now: now) }
                worker.rssKiB = ProcessProbe.rssKiB(pid)
            } else if slot.held {
                worker.state = "stopped"
            } else if let at = slot.restartAt {
                worker.state = "restarting"
                let left = at - clock
                worker.note = "restarts in \(StatusReport.duration(Double(left.components.seconds) + 1))"
            }
            if let note = slot.note { worker.note = [worker.note, note].compactMap { $0 }.joined(separator: "; ") }
            if slot.paused && worker.state != "paused" && slot.pid != nil {
                worker.note = [worker.note, "pause requested"].compactMap { $0 }.joined(separator: "; ")
            }
            workers.append(worker)
        }
        let (queues, failed) = (try? await StatusReport.queues(keys: keys, redis: redis)) ?? ([], 0)
        let uptime = clock - startedAt
        let master = StatusReport.Master(pid: getpid(), startedAt: Timestamp.format(startedWall),
                                         uptime: Double(uptime.components.seconds) + Double(uptime.components.attoseconds) / 1e18,
                                         env: config.env, configDir: setup.configDir)
        let allPaused = state.paused || (!state.slots.isEmpty && state.slots.values.allSatisfy(\.paused))
        return StatusReport(source: .master, host: config.host, master: master, paused: allPaused, drainedBy: drainedBy,
                            workers: workers, queues: queues, failed: failed)
    }
}
