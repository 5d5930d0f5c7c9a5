import Foundation

extension Master {
    /// Workers of a previous master that died without stopping them (they run in their own
    /// sessions): found by their heartbeats on this host, stopped now (TERM: their jobs are
    /// requeued; SIGKILL after 10 s) so no VM gets two workers.
    func stopLeftoverWorkers() async {
        guard let members = try? await redis.send(["SMEMBERS", RedisKeys.workers]).array?.compactMap(\.string) else { return }
        let ours = members.filter { $0.hasPrefix(config.host + ":") }
        guard !ours.isEmpty, let beats = try? await StatusReport.heartbeats(ours, redis: redis) else { return }
        var leftovers: [(String, pid_t)] = []
        for (member, beat) in zip(ours, beats) {
            guard let pid = beat["pid"].flatMap(pid_t.init), pid != getpid(), ProcessProbe.isAlive(pid),
                  let cmdline = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
                  cmdline.contains("tworker"), cmdline.split(separator: "\0").contains("work") else { continue }
            leftovers.append((member, pid))
        }
        guard !leftovers.isEmpty else { return }
        for (member, pid) in leftovers {
            logger.warning("a worker of a previous master still runs (\(member), pid \(pid)): stopping it (TERM, its job is requeued)")
            kill(pid, SIGTERM)
        }
        // Not our children: no exit event to wait for, so look.
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline, leftovers.contains(where: { ProcessProbe.isAlive($0.1) }) {
            try? await Task.sleep(for: .milliseconds(50))
        }
        for (_, pid) in leftovers where ProcessProbe.isAlive(pid) { ProcessProbe.killTree(pid) }
    }
}
