import Foundation
import RedisClient
import Testing
import TWorkerCore
import TWorkerTestSupport

/// `tworker start` as a process against a `TestHost`, always cleaned up by PID: the master, its
/// children (each in its own session, so a group kill would miss them) and their builds.
struct MasterUnderTest: Sendable {
    let host: TestHost
    let process: SpawnedProcess

    var pid: pid_t { process.pid }
    var paths: MasterPaths { MasterPaths(stateDir: host.stateDir) }
    var output: String { process.output }

    func signal(_ signal: Int32) { process.signal(signal) }

    /// The master's status over its control socket; nil while it does not answer.
    func status() -> StatusReport? {
        (try? ControlClient.send(ControlRequest(command: .status), path: paths.socket, timeoutSeconds: 5))?.status
    }

    func send(_ request: ControlRequest) throws -> ControlResponse {
        try ControlClient.send(request, path: paths.socket, timeoutSeconds: 5)
    }

    /// VM → pid of each worker the master runs.
    func workerPIDs() -> [String: Int32] {
        var result: [String: Int32] = [:]
        for worker in status()?.workers ?? [] { if let pid = worker.pid { result[worker.vm] = pid } }
        return result
    }

    /// Waits until exactly `count` workers run and each reports `state` in its heartbeat.
    func waitForWorkers(_ count: Int, state: String = "idle", timeout: Duration = .seconds(15)) async -> Bool {
        await waitForWorkers(count, states: [state], timeout: timeout)
    }

    func waitForWorkers(_ count: Int, states: Set<String>, timeout: Duration = .seconds(15)) async -> Bool {
        await eventually(timeout: timeout) {
            guard let workers = status()?.workers else { return false }
            return workers.count == count && workers.allSatisfy { states.contains($0.state) && $0.pid != nil }
        }
    }

    func worker(_ vm: String) -> StatusReport.Worker? { status()?.workers.first { $0.vm == vm } }

    /// Every process the master started (and theirs), killed and the master reaped.
    func cleanUp() async {
        if !processIsGone(pid) {
            ProcessProbe.killTree(pid)
        }
        _ = await process.waitForExit(timeout: .seconds(10))
    }
}

extension TestHost {
    /// Starts the master; `environment` adds to PATH, HOME and TWORKER_ALLOW_ROOT=1 (tests run as root).
    func spawnMaster(environment extra: [String: String] = [:]) throws -> MasterUnderTest {
        var environment = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": directory.path,
                           "TWORKER_ALLOW_ROOT": "1"]
        environment.merge(extra) { $1 }
        let process = try SpawnedProcess.spawn(try tworkerExecutable(), ["start", "--env", "test", "--config-dir", configDir],
                                               environment: environment,
                                               log: directory.path + "/master-\(UUID().uuidString.prefix(6)).log")
        return MasterUnderTest(host: self, process: process)
    }

    /// Runs `body` with a started master whose workers are all idle; cleans up whatever happens.
    func withMaster(workers: Int, environment: [String: String] = [:], waitIdle: Bool = true,
                    _ body: (MasterUnderTest) async throws -> Void) async throws {
        let master = try spawnMaster(environment: environment)
        do {
            if waitIdle {
                let up = await master.waitForWorkers(workers)
                try #require(up, "the master's \(workers) workers never all reported idle:\n\(master.output)")
            }
            try await body(master)
        } catch {
            await master.cleanUp()
            throw error
        }
        await master.cleanUp()
    }

    /// The test config with `vms.count` and anything else.
    func writeMasterConfig(workers: Int, _ extra: String = "") throws {
        try writeConfig("vms:\n  count: \(workers)\n" + extra)
    }

    /// The `tworker:workers` members of this host and its `tworker:worker:*` heartbeat records:
    /// both empty once its master stopped, however its workers ended.
    func workersLeftBehind() async throws -> (members: [String], records: [String]) {
        let members = (try await redis.send(["SMEMBERS", RedisKeys.workers]).array ?? []).compactMap(\.string)
            .filter { $0.hasPrefix(keys.host + ":") }
        let records = (try await redis.send(["KEYS", RedisKeys.workerRecordPrefix + keys.host + ":*"]).array ?? []).compactMap(\.string)
        return (members, records)
    }

    /// Runs the CLI against this host's config.
    func control(_ arguments: [String]) async throws -> (status: Int32, out: String, err: String) {
        try await cli(arguments + ["--env", "test", "--config-dir", configDir])
    }
}
