import Foundation
import Logging
import RedisClient
import Synchronization
import Testing
import TWorkerCore
import TWorkerTestSupport

/// An error no provider expects: it must still become an infrastructure error at the edge.
private struct UnexpectedFailure: Error, CustomStringConvertible {
    var step: String
    var description: String { "injected failure in \(step)" }
}

/// A step of a job where a fault is injected once.
enum JobStep: String, Sendable, CaseIterable {
    case prepare, run, release
    /// Report writes, refused by Redis (ACL) for a moment: the state writes (`HSET`), the log
    /// and event stream writes (`XADD`), the counters of the final transaction (`INCR`).
    case receivedWrite, startedWrite, logWrite, finalWrite
}

/// A local machine whose next job meets one fault, at one step, injected from inside the
/// provider's edge exactly as a provider's own bug would be.
private final class FaultyMachine: Machine {
    let inner: LocalMachine
    let fault: Mutex<JobStep?>
    let admin: RedisConnection
    var name: String { inner.name }

    init(inner: LocalMachine, fault: JobStep, admin: RedisConnection) {
        self.inner = inner
        self.fault = Mutex(fault)
        self.admin = admin
    }

    /// Takes the fault if it is for `step`.
    private func takes(_ step: JobStep) -> Bool {
        fault.withLock { pending in
            guard pending == step else { return false }
            pending = nil
            return true
        }
    }

    /// Refuses `command` to the worker's (default) user, allowing it again after a while.
    private func refuse(_ command: String) async {
        _ = try? await admin.send(["ACL", "SETUSER", "default", "-\(command)"])
        Task { [admin] in
            try? await Task.sleep(for: .milliseconds(1500))
            _ = try? await admin.send(["ACL", "SETUSER", "default", "+\(command)"])
        }
    }

    func prepare() async throws(InfrastructureError) {
        if takes(.prepare) { try await InfrastructureError.mapping("preparing") { throw UnexpectedFailure(step: "prepare") } }
        if takes(.startedWrite) {
            // The received record is written while the machine gets ready; refuse what follows it.
            try? await Task.sleep(for: .milliseconds(300))
            await refuse("hset")
        }
        try await inner.prepare()
    }

    func run(script: String, jobID: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws(InfrastructureError) -> BuildExit {
        if takes(.run) { try await InfrastructureError.mapping("running") { throw UnexpectedFailure(step: "run") } }
        if takes(.logWrite) { await refuse("xadd") }
        if takes(.finalWrite) { await refuse("incr") }
        return try await inner.run(script: script, jobID: jobID, output: output)
    }

    func release() async throws(InfrastructureError) {
        if takes(.release) { try await InfrastructureError.mapping("releasing") { throw UnexpectedFailure(step: "release") } }
        try await inner.release()
    }
}

@Suite(.tags(.endToEnd), .serialized)
struct JobBoundaryTests {
    /// Whatever fails at whichever step, the job ends final or back in its queue (and here,
    /// with a healthy second try, passed), never in the processing list, and its build's
    /// side effect happens once per attempt that reached the build.
    @Test(arguments: JobStep.allCases)
    func aFaultAtAnyStepNeverLeavesTheJobInProcessing(step: JobStep) async throws {
        try await TestHost.with { host in
            _ = try await host.redis.send(["ACL", "SETUSER", "admin", "on", "nopass", "~*", "&*", "+@all"])
            var adminEndpoint = host.redisServer.endpoint
            adminEndpoint.username = "admin"
            adminEndpoint.password = "unused"
            let admin = RedisConnection(endpoint: adminEndpoint)
            defer { admin.close() }
            // Re-allow everything whatever the test did, so the host's own checks can read.
            defer { Task { [admin] in _ = try? await admin.send(["ACL", "SETUSER", "default", "+@all"]) } }

            let marker = host.directory.path + "/runs-\(step.rawValue).txt"
            if step == .receivedWrite { _ = try await admin.send(["ACL", "SETUSER", "default", "-hset"]) }
            let id = try await host.push(script: ["echo line-one", "sleep 0.5", "echo ran >> \(marker)", "echo line-two"])
            if step == .receivedWrite {
                Task { [admin] in
                    try? await Task.sleep(for: .milliseconds(1500))
                    _ = try? await admin.send(["ACL", "SETUSER", "default", "+hset"])
                }
            }

            let machine = FaultyMachine(inner: try host.localMachine(), fault: step, admin: admin)
            let worker = try host.makeWorker(machine: machine, subscribed: false, logLevel: .critical)
            let running = Task { try await worker.run() }
            defer { running.cancel() }

            let finished = try await eventually(timeout: .seconds(30)) {
                JobState(rawValue: try await host.record(id)["state"] ?? "")?.isFinal == true
            }
            worker.requestStop(.graceful)
            try await running.value
            let record = try await host.record(id)
            #expect(finished, "job record: \(record)")
            #expect(record["state"] == "passed", "\(record)")
            #expect(try await host.int(["LLEN", host.keys.processing(vm: "worker-1")]) == 0)
            #expect(try await host.int(["LLEN", "resque:queue:builds"]) == 0)
            let runs = (try? String(contentsOfFile: marker, encoding: .utf8)) ?? ""
            let builds = runs.components(separatedBy: "ran").count - 1
            switch step {
            case .prepare, .run, .receivedWrite, .startedWrite:
                // The first attempt failed before (or instead of) the build: it ran once, on attempt 2.
                #expect(record["attempts"] == "2", "\(record)")
                #expect(builds == 1, "the build ran \(builds) times")
                #expect(record["error"] == "")
            case .release, .logWrite, .finalWrite:
                // The build ran and its result was recorded once Redis took it: never run again.
                #expect(record["attempts"] == "1", "\(record)")
                #expect(builds == 1, "the build ran \(builds) times")
            }
            let log = try await host.log(id)
            #expect(log.isFinal)
            #expect(log.text.contains("line-one") && log.text.contains("line-two"), "log: \(log.text)")
            #expect(log.numbers == Array(1...log.numbers.count), "entry numbers run without a gap: \(log.numbers)")
        }
    }
}

/// A VM that never comes up.
private struct BrokenMachine: Machine {
    let name: String
    func prepare() async throws(InfrastructureError) { throw InfrastructureError("VM \(name) failed to start (injected)") }
    func run(script: String, jobID: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws(InfrastructureError) -> BuildExit {
        throw InfrastructureError("never ready")
    }
    func release() async throws(InfrastructureError) {}
}

@Suite(.tags(.endToEnd))
struct RetryElsewhereTests {
    /// Observed before: the failing worker took its requeued job straight back and spent every
    /// attempt on its broken VM while the healthy worker was busy. Now the job waits for the
    /// healthy worker and passes there on its second attempt.
    @Test func aJobAVMFailedRunsOnAnotherWorkerWhenOneCanTakeIt() async throws {
        try await TestHost.with { host in
            func worker(_ vm: String, _ machine: any Machine) throws -> Worker {
                try host.makeWorker(vm: vm, machine: machine, subscribed: false, logLevel: .critical) { $0.fetchBlock = .milliseconds(100) }
            }
            let healthy = try worker("worker-2", try host.localMachine("worker-2"))
            let broken = try worker("worker-1", BrokenMachine(name: "worker-1"))
            let busy = try await host.push(script: ["sleep 2"])
            let runningHealthy = Task { try await healthy.run() }
            #expect(try await eventually { try await host.record(busy)["state"] == "started" })
            let runningBroken = Task { try await broken.run() }
            #expect(try await eventually {
                try await host.redis.send(["HGET", host.keys.worker(vm: "worker-1"), "state"]).string == "idle"
            })
            let job = try await host.push(script: ["echo ran-on-$TWORKER_VM"])
            let finished = try await eventually(timeout: .seconds(20)) {
                JobState(rawValue: try await host.record(job)["state"] ?? "")?.isFinal == true
            }
            let record = try await host.record(job)
            #expect(finished, "\(record)")
            #expect(record["state"] == "passed", "\(record)")
            #expect(record["vm"] == "worker-2")
            #expect(record["attempts"] == "2", "one attempt spent on the broken VM: \(record)")
            #expect(try await host.log(job).text.contains("ran-on-worker-2"))
            healthy.requestStop(.graceful)
            broken.requestStop(.graceful)
            try await runningHealthy.value
            try await runningBroken.value
        }
    }
}
