import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// A host whose workers drive VMs of the fake VBoxManage, reached over real SSH.
struct VirtualBoxHost {
    let host: TestHost
    let fake: FakeVirtualBox
    let portBase: Int
    static let prefix = "tworker-test-"

    static func with(extraConfig: String = "", vms: Int = 1, _ body: (VirtualBoxHost) async throws -> Void) async throws {
        try await withFakeVirtualBox { fake in
            let portBase = try freePortBase(count: vms)
            let wrapper = try fake.selfContainedVBoxManage()
            let user = FakeVirtualBox.currentUser
            let config = """
            provider: virtualbox
            vms:
              name_prefix: \(prefix)
              max_consecutive_failures: 3
            ssh:
              user: \(user)
              key: \(fake.privateKeyPath)
              port_base: \(portBase)
            virtualbox:
              vboxmanage: \(wrapper)
            \(extraConfig.contains("vm_boot") ? "" : "timeouts:\n  vm_boot: 15")
            """
            // The provider settings go in the operator's file, merged over the env file that
            // carries each test's own extras.
            try await TestHost.with(config: extraConfig) { host in
                try config.write(toFile: host.configDir + "/worker.yml", atomically: true, encoding: .utf8)
                let vbox = VirtualBoxHost(host: host, fake: fake, portBase: portBase)
                for number in 1...vms {
                    try await fake.createVM(name: "\(prefix)worker-\(number)", port: portBase + number, snapshot: "sandbox", online: true)
                }
                try await body(vbox)
            }
        }
    }

    /// `port_base + 1 ... port_base + count` all free on 127.0.0.1.
    static func freePortBase(count: Int) throws -> Int {
        for _ in 0..<50 {
            let base = try freeLoopbackPort() - 1
            guard base + count < 32000 else { continue }  // stay below the ephemeral range
            if try (1...count).allSatisfy({ try loopbackPortIsFree(base + $0) }) { return base }
        }
        throw TestSupportError("no run of \(count) free ports")
    }

    /// Successful mutating VBoxManage calls (reads and lock-error retries left out), as `subcommand [action]`.
    func changes(since index: Int = 0) throws -> [String] {
        try fake.callRecords().dropFirst(index).filter { $0.exit == 0 }.map(\.argv).compactMap { argv -> String? in
            switch argv.first {
            case "showvminfo", "list", "--version": return nil
            case "snapshot": return argv.count > 2 ? "snapshot \(argv[2])" : "snapshot"
            case "controlvm": return argv.count > 2 ? "controlvm \(argv[2])" : "controlvm"
            default: return argv.first
            }
        }
    }
}

@Suite(.tags(.endToEnd), .serialized)
struct VirtualBoxProviderTests {
    @Test func everyJobRunsOverSSHFromACleanSnapshotWithThreeCallsInSteadyState() async throws {
        try await VirtualBoxHost.with { vbox in
            let first = try await vbox.host.push(script: ["echo dirty > leftover", "pwd"])
            let second = try await vbox.host.push(script: ["test ! -e leftover && echo clean-vm", "pwd"])
            try await vbox.host.runBurst()
            let disk = try await vbox.fake.diskDirectory(of: "tworker-test-worker-1")
            let firstLog = try await vbox.host.log(first).text
            #expect(try await vbox.host.record(first)["state"] == "passed", "\(firstLog)")
            #expect(firstLog.contains(disk + "\n"), "the build ran in the guest over SSH: \(firstLog)")
            let secondLog = try await vbox.host.log(second).text
            #expect(try await vbox.host.record(second)["state"] == "passed", "\(secondLog)")
            #expect(secondLog.contains("clean-vm"), "the file the first job wrote is gone")

            let calls = try vbox.fake.calls()
            let secondStart = try #require(calls.lastIndex { $0.first == "startvm" })
            let lastJob = try vbox.changes(since: secondStart)
            #expect(lastJob == ["startvm", "controlvm poweroff", "snapshot restore"], "steady state: three changes per job")
            let retries = try vbox.fake.callRecords().dropFirst(secondStart).filter { $0.exit != 0 }
            #expect(retries.allSatisfy { $0.argv.contains("restore") }, "only the restore right after the poweroff may meet the lock")
            #expect(try await vbox.fake.state(of: "tworker-test-worker-1") == "saved", "left restored and ready")
        }
    }

    @Test func aDirtyRunningVMIsPoweredOffAndRestoredFirst() async throws {
        try await VirtualBoxHost.with { vbox in
            let vm = "tworker-test-worker-1"
            _ = try await vbox.fake.run(["startvm", vm, "--type", "headless"])
            #expect(try await vbox.fake.waitForSSH(port: vbox.portBase + 1))
            _ = try await vbox.fake.ssh(port: vbox.portBase + 1, "echo junk > dirt")
            let id = try await vbox.host.push(script: ["test ! -e dirt && echo restored"])
            try await vbox.host.runBurst()
            #expect(try await vbox.host.log(id).text.contains("restored"))
            let changes = try vbox.changes()
            #expect(changes.starts(with: ["startvm", "controlvm poweroff", "snapshot restore", "startvm"]), "\(changes)")
        }
    }

    @Test func lockErrorsAreRetried() async throws {
        try await VirtualBoxHost.with { vbox in
            try vbox.fake.inject("snapshot restore", fault: .lock(2))
            let id = try await vbox.host.push(script: ["echo locked-but-fine"])
            try await vbox.host.runBurst()
            #expect(try await vbox.host.record(id)["state"] == "passed")
            let restores = try vbox.fake.callRecords().filter { $0.argv.starts(with: ["snapshot"]) && $0.argv.contains("restore") }
            #expect(restores.prefix(3).map(\.exit) == [1, 1, 0], "two lock errors, then the retry worked")
        }
    }

    @Test func aHungVBoxManageIsKilledAndReported() async throws {
        try await VirtualBoxHost.with(extraConfig: "timeouts:\n  vboxmanage: 1\nlimits:\n  max_attempts: 1\n") { vbox in
            try vbox.fake.inject("startvm", fault: .hang)
            let id = try await vbox.host.push(script: ["echo never"])
            let started = ContinuousClock.now
            try await vbox.host.runBurst()
            #expect(ContinuousClock.now - started < .seconds(20))
            let record = try await vbox.host.record(id)
            #expect(record["state"] == "errored")
            #expect(record["error"]?.contains("VBoxManage startvm tworker-test-worker-1 --type headless did not finish in time") == true, "\(record)")
            #expect(try await vbox.host.log(id).text.contains("did not finish in time"))
        }
    }

    @Test func aVMThatWillNotStartRequeuesTheJobThenErrorsItThenIsQuarantined() async throws {
        try await VirtualBoxHost.with { vbox in
            try vbox.fake.inject("startvm", fault: .fail(100, message: "Failed to open a session for the virtual machine"))
            let id = try await vbox.host.push(script: ["echo never"])
            try await vbox.host.runBurst()
            let record = try await vbox.host.record(id)
            #expect(record["state"] == "errored")
            #expect(record["attempts"] == "3")
            #expect(try await vbox.host.events(for: id) == ["job:received", "job:requeued", "job:received", "job:requeued", "job:received", "job:finished"])
            let log = try await vbox.host.log(id).text
            #expect(log.contains("Failed to open a session for the virtual machine"), "the log says what happened: \(log)")
            #expect(log.contains("The job was requeued (attempt 2 of 3)"))
            #expect(log.contains("Infrastructure error on attempt 3 of 3"))

            // Three infrastructure errors in a row: the VM is quarantined.
            #expect(try await vbox.host.redis.send(["EXISTS", vbox.host.keys.broken(vm: "worker-1")]).int == 1)
        }
    }

    @Test func sshThatNeverAnswersIsAnInfrastructureErrorAfterVMBoot() async throws {
        try await VirtualBoxHost.with(extraConfig: "timeouts:\n  vm_boot: 2\nlimits:\n  max_attempts: 1\n") { vbox in
            try vbox.fake.inject("startvm", fault: .neverBoots)
            let id = try await vbox.host.push(script: ["echo never"])
            try await vbox.host.runBurst()
            let record = try await vbox.host.record(id)
            #expect(record["state"] == "errored")
            #expect(record["error"]?.contains("did not answer within 2 s (timeouts.vm_boot)") == true, "\(record)")
            #expect(try await vbox.fake.state(of: "tworker-test-worker-1") != "running", "the VM was reset afterwards")
        }
    }

    @Test func aBrokenVMTakesNoJobsUntilItsQuarantineIsCleared() async throws {
        try await VirtualBoxHost.with(extraConfig: "limits:\n  max_attempts: 1\n") { vbox in
            try vbox.fake.inject("startvm", fault: .fail(3))
            for _ in 0..<3 { try await vbox.host.push(script: ["true"]) }
            let survivor = try await vbox.host.push(script: ["echo back-in-service"])
            let worker = try vbox.host.makeWorker { $0.fetchBlock = .milliseconds(100) }
            let running = Task { try await worker.run() }
            let broken = try await eventually(timeout: .seconds(30)) {
                try await vbox.host.redis.send(["HGET", vbox.host.keys.worker(vm: "worker-1"), "state"]).string == "broken"
            }
            #expect(broken)
            let lastError = try await vbox.host.redis.send(["HGET", vbox.host.keys.worker(vm: "worker-1"), "last_error"]).string ?? ""
            #expect(lastError.contains("startvm"), "the heartbeat names the last error: \(lastError)")
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await vbox.host.record(survivor)["state"] == nil, "a broken VM takes no job")

            _ = try await vbox.host.redis.send(["DEL", vbox.host.keys.broken(vm: "worker-1")])
            let served = try await eventually(timeout: .seconds(20)) { try await vbox.host.record(survivor)["state"] == "passed" }
            #expect(served)
            #expect(try await vbox.host.redis.send(["HGET", vbox.host.keys.worker(vm: "worker-1"), "state"]).string == "idle")
            worker.requestStop(.immediate)
            try await running.value
        }
    }

    @Test func aGuestKilledMidBuildRequeuesTheJobWhichThenPasses() async throws {
        try await VirtualBoxHost.with { vbox in
            let marker = vbox.host.directory.path + "/attempts"
            try "".write(toFile: marker, atomically: true, encoding: .utf8)
            let id = try await vbox.host.push(script: ["echo started-build", "sleep 4", "echo finished-build"])
            let worker = Task { try await vbox.host.runBurst() }
            let running = try await eventually(timeout: .seconds(20)) { try await vbox.host.log(id).text.contains("started-build") }
            #expect(running)
            try await vbox.fake.killGuest("tworker-test-worker-1")
            try await worker.value
            let record = try await vbox.host.record(id)
            let log = try await vbox.host.log(id).text
            #expect(record["state"] == "passed", "\(log)")
            #expect(record["attempts"] == "2")
            #expect(log.contains("the connection to the machine was lost (ssh exit 255)"))
            #expect(log.contains("The job was requeued (attempt 2 of 3)"))
            #expect(log.split(separator: "\n").filter { $0 == "finished-build" }.count == 1, "the build finished once, on the second attempt")
        }
    }

    /// A worker SIGKILLed mid-build leaves its ssh client and the guest's build running (no
    /// terminal, so no hang-up): the next worker's start kills the client and powers the VM off
    /// before it requeues the job, which another worker may then run at once; the first build
    /// never reaches its side effect.
    @Test func aKilledWorkersBuildOnAVMDiesBeforeItsJobRunsAgain() async throws {
        try await VirtualBoxHost.with(vms: 2) { vbox in
            let host = vbox.host
            let pidFile = host.directory.path + "/first-build.pid"
            let deployed = host.directory.path + "/deployed"
            let id = try await host.push(script: [
                "if [ ! -f \(pidFile) ]; then echo $$ > \(pidFile); sleep 600; echo late >> \(deployed); fi", "echo second-run",
            ])
            let first = try host.spawnWorker()
            #expect(await eventually(timeout: .seconds(30)) { FileManager.default.fileExists(atPath: pidFile) }, "\(first.output)")
            try await Task.sleep(for: .milliseconds(200))
            let buildPID = try #require(pid_t(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
            let record = BuildGroupRecord.ofRemoteBuild(stateDir: host.stateDir, vm: "worker-1")
            #expect(record.hasRecord, "the ssh client's group is on record while the build runs")
            await first.kill9()
            try await Task.sleep(for: .milliseconds(300))
            #expect(kill(buildPID, 0) == 0, "SIGKILL of the worker alone leaves the guest's build running")

            // worker-1 restarts serving another queue: it only requeues its job, for worker-2.
            let restarted = try host.spawnWorker(arguments: ["--burst", "--queue", "elsewhere"])
            #expect(await restarted.waitForExit(timeout: .seconds(60)) == 0, "\(restarted.output)")
            #expect(await eventually(timeout: .seconds(3)) { processIsGone(buildPID) }, "the first build was stopped with its VM: \(restarted.output)")
            #expect(!record.hasRecord)
            #expect(try await host.redis.send(["LLEN", "resque:queue:builds"]) == .integer(1), "the job is back in its queue")
            let other = try host.spawnWorker(vm: "worker-2", arguments: ["--burst"])
            #expect(await other.waitForExit(timeout: .seconds(60)) == 0, "\(other.output)")
            let after = try await host.record(id)
            #expect(after["state"] == "passed" && after["attempts"] == "2" && after["vm"] == "worker-2", "\(after)")
            try await Task.sleep(for: .milliseconds(500))
            #expect(!FileManager.default.fileExists(atPath: deployed), "the first build never reached its side effect")
        }
    }

    @Test func aBuildsOwnNonZeroExitIsNeverAnInfrastructureError() async throws {
        try await VirtualBoxHost.with { vbox in
            let id = try await vbox.host.push(script: ["exit 255"])
            try await vbox.host.runBurst()
            let record = try await vbox.host.record(id)
            #expect(record["state"] == "failed")
            #expect(record["attempts"] == "1")
            #expect(record["exit_code"] == "255")
        }
    }

    @Test func twoWorkersOnTwoVMsAtOnceNeverShareAVM() async throws {
        try await VirtualBoxHost.with(vms: 2) { vbox in
            var ids: [String] = []
            for _ in 0..<6 { ids.append(try await vbox.host.push(script: ["pwd", "sleep 0.3"])) }
            async let one: Void = vbox.host.runBurst(vm: "worker-1")
            async let two: Void = vbox.host.runBurst(vm: "worker-2")
            _ = try await (one, two)
            let disks = [
                "worker-1": try await vbox.fake.diskDirectory(of: "tworker-test-worker-1"),
                "worker-2": try await vbox.fake.diskDirectory(of: "tworker-test-worker-2"),
            ]
            var spans: [String: [(Date, Date)]] = [:]
            for id in ids {
                let record = try await vbox.host.record(id)
                #expect(record["state"] == "passed")
                let vm = try #require(record["vm"])
                let log = try await vbox.host.log(id).text
                #expect(log.contains((disks[vm] ?? "?") + "\n"), "job \(id) ran on \(vm)'s guest")
                spans[vm, default: []].append((Timestamp.parse(record["started_at"] ?? "")!, Timestamp.parse(record["finished_at"] ?? "")!))
            }
            #expect(spans.keys.count == 2, "both workers took jobs")
            for (_, jobs) in spans {
                let sorted = jobs.sorted { $0.0 < $1.0 }
                for (earlier, later) in zip(sorted, sorted.dropFirst()) {
                    #expect(earlier.1 <= later.0, "one VM runs one job at a time")
                }
            }
        }
    }

    @Test func nothingOutsideThePrefixIsTouched() async throws {
        try await VirtualBoxHost.with { vbox in
            let outsider = "production-db"
            try await vbox.fake.createVM(name: outsider, port: try freeLoopbackPort(), snapshot: "sandbox", online: true)
            _ = try await vbox.fake.run(["startvm", outsider, "--type", "headless"])
            let id = try await vbox.host.push(script: ["true"])
            try await vbox.host.runBurst()
            #expect(try await vbox.host.record(id)["state"] == "passed")
            #expect(try await vbox.fake.state(of: outsider) == "running")
            let touched = try vbox.fake.calls().filter { $0.contains(outsider) && $0.first != "showvminfo" }
            #expect(touched == [["startvm", outsider, "--type", "headless"]], "only the test itself started it")
        }
    }

    @Test func aRecreatedVMWithANewHostKeyIsStillReached() async throws {
        try await VirtualBoxHost.with { vbox in
            let vm = "tworker-test-worker-1"
            try await vbox.host.push(script: ["true"])
            try await vbox.host.runBurst()
            _ = try await vbox.fake.run(["unregistervm", vm, "--delete"])
            try await vbox.fake.createVM(name: vm, port: vbox.portBase + 1, snapshot: "sandbox", online: true)
            let id = try await vbox.host.push(script: ["echo new-vm"])
            try await vbox.host.runBurst()
            let log = try await vbox.host.log(id).text
            #expect(try await vbox.host.record(id)["state"] == "passed", "\(log)")
        }
    }

    @Test func workByHandAgainstTheFakeWithVerboseShowsEveryVBoxManageCall() async throws {
        try await VirtualBoxHost.with { vbox in
            let id = try await vbox.host.push(script: ["echo by-hand"])
            var environment = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "VM": "worker-1", "QUEUE": "builds"]
            environment.merge(vbox.fake.environment) { $1 }
            let result = try await vbox.host.cli(["work", "--env", "test", "--config-dir", vbox.host.configDir, "--burst", "--verbose"], environment: environment)
            #expect(result.status == 0, "\(result.err)")
            #expect(try await vbox.host.record(id)["state"] == "passed")
            #expect(result.err.contains("argv=[\"startvm\", \"tworker-test-worker-1\", \"--type\", \"headless\"]"), "\(result.err)")
            #expect(result.err.contains("exit=0"))
        }
    }
}
