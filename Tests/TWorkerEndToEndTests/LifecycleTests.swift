import Foundation
import Synchronization
import Testing
import TWorkerCore
import TWorkerTestSupport

/// A host with a base box, the fake VBoxManage and no VMs yet: what an operator starts from.
struct LifecycleHost {
    let host: TestHost
    let fake: FakeVirtualBox
    let portBase: Int
    let box: String
    let boxesDir: String
    let diskSize: Int
    static let prefix = "tworker-test-"

    static func with(workers: Int = 3, provision: [String: String] = ["base.sh": "echo provisioned-v1 > provision-marker\n"],
                     extraConfig: String = "", _ body: (LifecycleHost) async throws -> Void) async throws {
        try await withFakeVirtualBox { fake in
            let portBase = try VirtualBoxHost.freePortBase(count: workers + 1)
            try await TestHost.with(config: extraConfig) { host in
                let boxesDir = host.directory.path + "/boxes"
                try FileManager.default.createDirectory(atPath: boxesDir + "/provision", withIntermediateDirectories: true)
                for (name, text) in provision {
                    try ("#!/bin/bash\nset -e\n" + text).write(toFile: boxesDir + "/provision/" + name, atomically: true, encoding: .utf8)
                }
                let box = boxesDir + "/base.box"
                let diskSize = try BoxBuilder.makeBox(at: box, files: ["etc/os-release": "NAME=tworker-test-box\n", "home/README": String(repeating: "x", count: 200_000)])
                let wrapper = try fake.selfContainedVBoxManage()
                let user = FakeVirtualBox.currentUser
                let config = """
                provider: virtualbox
                vms:
                  count: \(workers)
                  name_prefix: \(prefix)
                  base_box: \(box)
                  provision: [\(provision.keys.sorted().joined(separator: ", "))]
                ssh:
                  user: \(user)
                  key: \(fake.privateKeyPath)
                  port_base: \(portBase)
                virtualbox:
                  vboxmanage: \(wrapper)
                vagrant:
                  directory: \(boxesDir)
                """
                try config.write(toFile: host.configDir + "/worker.yml", atomically: true, encoding: .utf8)
                try await body(LifecycleHost(host: host, fake: fake, portBase: portBase, box: box, boxesDir: boxesDir, diskSize: diskSize))
            }
        }
    }

    /// `tworker vagrant ARGS` against this host.
    func vagrant(_ arguments: [String], stdin: String? = nil) async throws -> (status: Int32, out: String, err: String) {
        try await host.cli(["vagrant"] + arguments + ["--env", "test", "--config-dir", host.configDir], environment: fake.environment, stdin: stdin)
    }

    func changes(since index: Int = 0) throws -> [[String]] {
        try fake.callRecords().dropFirst(index).filter { $0.exit == 0 && !["showvminfo", "list", "--version"].contains($0.argv.first ?? "") }
            .map(\.argv).filter { $0.first != "snapshot" || $0.count < 3 || $0[2] != "list" }
    }
}

@Suite(.tags(.endToEnd), .serialized)
struct LifecycleTests {
    @Test func importMakesWorkersAsLinkedClonesOfOneDiskAndIsIdempotent() async throws {
        try await LifecycleHost.with { life in
            let first = try await life.vagrant(["import"])
            #expect(first.status == 0, "\(first.err)\n\(first.out)")
            for number in 1...3 {
                let vm = "tworker-test-worker-\(number)"
                #expect(try await life.fake.state(of: vm) == "poweroff")
                let snapshots = try await life.fake.run(["snapshot", vm, "list", "--machinereadable"]).stdout
                #expect(snapshots.contains("SnapshotName-1=\"sandbox\"") || snapshots.contains("=\"sandbox\""), "\(snapshots)")
                let info = try await life.fake.run(["showvminfo", vm, "--machinereadable"]).stdout
                #expect(info.contains("Forwarding(0)=\"guestssh,tcp,127.0.0.1,\(life.portBase + number),,22\""))
            }
            let copied = try life.fake.bytesCopied()
            #expect(copied >= life.diskSize && copied < 2 * life.diskSize, "one disk for base + 3 workers: \(copied) bytes for a \(life.diskSize)-byte disk")
            #expect(first.out.contains("tworker-test-worker-2") && first.out.contains("linked clone of tworker-test-base"))

            let before = try life.fake.callRecords().count
            let second = try await life.vagrant(["import"])
            #expect(second.status == 0)
            #expect(second.out.components(separatedBy: "exists, skipped").count - 1 == 3)
            #expect(try life.changes(since: before).isEmpty, "a second import changes nothing")
            #expect(try life.fake.bytesCopied() == copied)

            // The new worker runs builds: the box's files are in its guest.
            let id = try await life.host.push(script: ["cat etc/os-release"])
            try await life.host.runBurst(vm: "worker-2")
            #expect(try await life.host.log(id).text.contains("NAME=tworker-test-box"))
        }
    }

    @Test func rebuildRefusesWithoutATerminalAndWithoutConfirmation() async throws {
        try await LifecycleHost.with(workers: 1) { life in
            let noTerminal = try await life.vagrant(["rebuild"])
            #expect(noTerminal.status == 1)
            #expect(noTerminal.err.contains("standard input is not a terminal; pass --yes"), "\(noTerminal.err)")
            #expect(try life.changes().isEmpty)

            // On a terminal, anything but "yes" is a refusal.
            let script = """
            import os, pty, sys
            pid, fd = pty.fork()
            if pid == 0:
                os.execv(sys.argv[1], sys.argv[1:])
            out = b""
            while b"continue" not in out:
                out += os.read(fd, 1024)
            os.write(fd, b"no\\n")
            while True:
                try:
                    chunk = os.read(fd, 1024)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            _, status = os.waitpid(pid, 0)
            sys.stdout.write(out.decode(errors="replace"))
            sys.exit(os.waitstatus_to_exitcode(status))
            """
            let scriptFile = life.host.directory.path + "/answer-on-a-terminal.py"
            try script.write(toFile: scriptFile, atomically: true, encoding: .utf8)
            let process = try SpawnedProcess.spawn("/usr/bin/python3", [scriptFile, try tworkerExecutable(), "vagrant", "rebuild", "--env", "test", "--config-dir", life.host.configDir],
                                                   environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"].merging(life.fake.environment) { $1 },
                                                   log: life.host.directory.path + "/pty.log")
            let status = await process.waitForExit(timeout: .seconds(30))
            #expect(status == 1, "\(process.output)")
            #expect(process.output.contains("Type 'yes' to continue"))
            #expect(process.output.contains("not confirmed; nothing was changed"))
            #expect(try life.changes().isEmpty)
        }
    }

    @Test func rebuildStopsAtTheFirstFailingStepAndSaysWhichWithTheToolsStderr() async throws {
        try await LifecycleHost.with(workers: 2) { life in
            #expect(try await life.vagrant(["import"]).status == 0)
            try life.fake.inject("clonevm", fault: .fail(1, message: "Could not create the clone medium (VERR_DISK_FULL)"))
            let before = try life.fake.callRecords().count
            let result = try await life.vagrant(["rebuild", "--yes"])
            #expect(result.status == 1)
            #expect(result.err.contains("step 'linked clone of tworker-test-base' failed for tworker-test-worker-1"), "\(result.err)")
            #expect(result.err.contains("Could not create the clone medium (VERR_DISK_FULL)"))
            let after = try life.fake.callRecords().dropFirst(before).map(\.argv)
            let failedAt = try #require(after.lastIndex { $0.first == "clonevm" })
            #expect(!after[(failedAt + 1)...].contains { $0.first == "startvm" || $0.first == "clonevm" }, "nothing ran after the failure")
            #expect(try await life.fake.run(["showvminfo", "tworker-test-worker-2", "--machinereadable"]).status == 0, "worker-2 was not touched")
        }
    }

    @Test func bothReprovisionStrategiesReachTheNextBuild() async throws {
        try await LifecycleHost.with(workers: 2) { life in
            #expect(try await life.vagrant(["import"]).status == 0)
            let firstEstimate = try await life.vagrant(["reprovision", "--strategy", "each"])
            #expect(firstEstimate.status == 0, "\(firstEstimate.err)")
            #expect(firstEstimate.out.contains("--strategy each"))
            var id = try await life.host.push(script: ["cat provision-marker"])
            try await life.host.runBurst(vm: "worker-2")
            #expect(try await life.host.log(id).text.contains("provisioned-v1"), "each: the next build sees the provisioning")

            try "#!/bin/bash\necho provisioned-v2 > provision-marker\n".write(toFile: life.boxesDir + "/provision/base.sh", atomically: true, encoding: .utf8)
            let base = try await life.vagrant(["reprovision", "--strategy", "base"])
            #expect(base.status == 0, "\(base.err)")
            #expect(base.out.contains("tworker-test-base") && base.out.contains("provision base.sh"))
            #expect(!base.out.contains("--strategy each unknown"), "the first run's durations estimate the second: \(base.out)")
            id = try await life.host.push(script: ["cat provision-marker"])
            try await life.host.runBurst(vm: "worker-1")
            #expect(try await life.host.log(id).text.contains("provisioned-v2"), "base: re-created workers carry the new base")
            let snapshots = try await life.fake.run(["snapshot", "tworker-test-base", "list", "--machinereadable"]).stdout
            let baseSnapshots = snapshots.split(separator: "\n").filter { $0.hasPrefix("SnapshotName") && $0.hasSuffix("=\"base\"") }
            #expect(baseSnapshots.count == 1, "one base snapshot left: \(snapshots)")
            #expect(!snapshots.contains("base-old"), "the old base snapshot was deleted once no clone used it")
        }
    }

    @Test func duringARollingReprovisionTheOtherWorkersKeepFinishingJobs() async throws {
        try await LifecycleHost.with(workers: 3) { life in
            #expect(try await life.vagrant(["import"]).status == 0)
            var ids: [String] = []
            for _ in 0..<30 { ids.append(try await life.host.push(script: ["sleep 1"])) }
            let workers = try (1...3).map { number in try life.host.makeWorker(vm: "worker-\(number)") { $0.fetchBlock = .milliseconds(200) } }
            let running = workers.map { worker in Task { try await worker.run() } }
            let finished = Mutex(false)
            let reprovision = Task {
                defer { finished.withLock { $0 = true } }
                return try await life.vagrant(["reprovision", "--strategy", "each"])
            }
            var maxInMaintenance = 0
            var finishedDuring: [Int] = []
            var othersBusyWhileOneWasOut = false
            while !finished.withLock({ $0 }) {
                let states = try await (1...3).asyncMap { try await life.host.redis.send(["HGET", life.host.keys.worker(vm: "worker-\($0)"), "state"]).string ?? "" }
                let out = states.filter { $0 == "maintenance" }.count
                maxInMaintenance = max(maxInMaintenance, out)
                if out == 1 && states.filter({ $0 == "busy" }).count >= 1 { othersBusyWhileOneWasOut = true }
                var passed = 0
                for id in ids where try await life.host.record(id)["state"] == "passed" { passed += 1 }
                finishedDuring.append(passed)
                try await Task.sleep(for: .milliseconds(100))
            }
            let result = try await reprovision.value
            #expect(result.status == 0, "\(result.err)")
            #expect(maxInMaintenance == 1, "one VM out of service at a time (vms.max_unavailable: 1)")
            #expect(othersBusyWhileOneWasOut, "the other workers kept taking jobs")
            #expect((finishedDuring.last ?? 0) > (finishedDuring.first ?? 0), "jobs kept finishing during the reprovision")
            let drained = try await eventually(timeout: .seconds(60)) {
                var passed = 0
                for id in ids where try await life.host.record(id)["state"] == "passed" { passed += 1 }
                return passed == ids.count
            }
            #expect(drained, "every job passed")
            for worker in workers { worker.requestStop(.graceful) }
            for task in running { try await task.value }
        }
    }

    /// Ctrl-C of a rebuild leaves its maintenance key behind: the worker gives an untouched VM back
    /// to service by itself, and keeps a VM the rebuild had begun to change out until rebuilt.
    @Test func aRebuildStoppedByCtrlCGivesBackAnUntouchedVMAndKeepsAChangedOneOut() async throws {
        try await LifecycleHost.with(workers: 1) { life in
            #expect(try await life.vagrant(["import"]).status == 0)
            let host = life.host
            let key = host.keys.maintenance(vm: "worker-1")
            let worker = try host.makeWorker(vm: "worker-1") { $0.fetchBlock = .milliseconds(200) }
            let running = Task { try await worker.run() }
            defer { worker.requestStop(.graceful) }
            func startRebuild(_ name: String) throws -> SpawnedProcess {
                try SpawnedProcess.spawn(try tworkerExecutable(), ["vagrant", "rebuild", "--yes", "--env", "test", "--config-dir", host.configDir],
                                         environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": host.directory.path]
                                            .merging(life.fake.environment) { $1 },
                                         log: host.directory.path + "/rebuild-\(name).log")
            }

            // 1. Interrupted while it waits for the busy worker: nothing was touched.
            let busy = try await host.push(script: ["sleep 3"])
            #expect(try await eventually(timeout: .seconds(20)) { try await host.record(busy)["state"] == "started" })
            let waiting = try startRebuild("waiting")
            #expect(try await eventually(timeout: .seconds(20)) { try await host.redis.send(["GET", key]).string?.contains("phase=waiting") == true },
                    "the rebuild marked the VM: \(waiting.output)")
            waiting.signal(SIGINT)
            #expect(await waiting.waitForExit(timeout: .seconds(10)) == 130, "\(waiting.output)")
            let next = try await host.push(script: ["echo next"])
            #expect(try await eventually(timeout: .seconds(20)) { try await host.record(next)["state"] == "passed" },
                    "the worker took the next job after its running one")
            #expect(try await host.redis.send(["EXISTS", key]) == .integer(0), "the dead hold was lifted")

            // 2. Interrupted while it changes the VM: the VM stays out and says how to recover.
            try life.fake.inject("clonevm", fault: .hang)
            let changing = try startRebuild("changing")
            #expect(try await eventually(timeout: .seconds(30)) { try await host.redis.send(["GET", key]).string?.contains("phase=changing") == true },
                    "the rebuild began changing the VM: \(changing.output)")
            try await Task.sleep(for: .milliseconds(500))
            changing.signal(SIGINT)
            #expect(await changing.waitForExit(timeout: .seconds(10)) == 130, "\(changing.output)")
            try life.fake.clearFaults()
            let afterChange = try await host.push(script: ["echo after"])
            let heartbeat = host.keys.worker(vm: "worker-1")
            let note = try await eventually(timeout: .seconds(10)) {
                let lastError = try await host.redis.send(["HGET", heartbeat, "last_error"]).string ?? ""
                return lastError.contains("run `tworker vagrant rebuild` to return it to service")
            }
            let seen = "\(try await host.redis.send(["HGETALL", heartbeat])), \(try await host.record(afterChange)), \(try await host.redis.send(["GET", key]))"
            #expect(note, "the heartbeat says the VM needs a rebuild: \(seen)")
            try await Task.sleep(for: .seconds(1))
            let waitingJob = try await host.record(afterChange)
            #expect(waitingJob.isEmpty, "the half-changed VM took no job: \(waitingJob)")
            #expect(try await host.redis.send(["LLEN", "resque:queue:builds"]) == .integer(1))
            let state = try await host.redis.send(["HGET", heartbeat, "state"]).string
            #expect(state == "maintenance")

            // 3. The rebuild it asks for returns it to service.
            let rebuilt = try await life.vagrant(["rebuild", "--yes"])
            #expect(rebuilt.status == 0, "\(rebuilt.err)")
            #expect(try await eventually(timeout: .seconds(20)) { try await host.record(afterChange)["state"] == "passed" })
            worker.requestStop(.graceful)
            try await running.value
        }
    }

    @Test func statusRemoveAndTheLock() async throws {
        try await LifecycleHost.with(workers: 2) { life in
            #expect(try await life.vagrant(["import"]).status == 0)
            let status = try await life.vagrant(["status", "--json"])
            #expect(status.status == 0, "\(status.err)")
            guard case .array(let rows)? = try? JSONValue.parse(Array(status.out.utf8)) else {
                Issue.record("status --json: \(status.out)")
                return
            }
            #expect(rows.count == 2)
            #expect(rows.first == .object(["name": .string("tworker-test-worker-1"), "state": .string("poweroff"),
                                           "ssh_port": .int(Int64(life.portBase + 1)), "snapshot": .bool(true),
                                           "worker": .string("none"), "job": .string("")]))
            let table = try await life.vagrant(["status"])
            #expect(table.out.contains("tworker-test-worker-2") && table.out.contains("SANDBOX"))

            let lock = try LifecycleLock(stateDir: life.host.stateDir)
            let blocked = try await life.vagrant(["import"])
            #expect(blocked.status == 1)
            #expect(blocked.err.contains("another tworker lifecycle command is running (pid \(getpid())"), "\(blocked.err)")
            _ = lock

            let removed = try await life.vagrant(["remove", "worker-2", "--yes"])
            #expect(removed.status == 1, "the lock is still held by this test")
        }
    }

    @Test func removeDeletesOnlyWhatItIsTold() async throws {
        try await LifecycleHost.with(workers: 2) { life in
            #expect(try await life.vagrant(["import"]).status == 0)
            let removed = try await life.vagrant(["remove", "worker-2", "--yes"])
            #expect(removed.status == 0, "\(removed.err)")
            #expect(try await life.fake.run(["showvminfo", "tworker-test-worker-2"]).status == 1)
            #expect(try await life.fake.state(of: "tworker-test-worker-1") == "poweroff")
            let all = try await life.vagrant(["remove", "--yes"])
            #expect(all.status == 0, "\(all.err)")
            let listed = try await life.fake.run(["list", "vms"]).stdout
            #expect(!listed.contains("tworker-test-"), "\(listed)")
        }
    }

    @Test func aVMOutsideThePrefixSurvivesEveryCommand() async throws {
        try await LifecycleHost.with(workers: 1) { life in
            let outsider = "production-db"
            let uuid = try await life.fake.createVM(name: outsider, port: try freeLoopbackPort(), snapshot: "sandbox", online: true)
            for arguments in [["import"], ["reprovision", "--strategy", "each"], ["reprovision", "--strategy", "base"], ["rebuild", "--yes"], ["remove", "--yes"]] {
                let result = try await life.vagrant(arguments)
                #expect(result.status == 0, "\(arguments): \(result.err)")
            }
            #expect(try await life.fake.run(["showvminfo", outsider, "--machinereadable"]).stdout.contains("UUID=\"\(uuid)\""))
            #expect(try life.changes().allSatisfy { !$0.contains(outsider) })
        }
    }
}

extension ClosedRange where Bound == Int {
    func asyncMap<T>(_ transform: (Int) async throws -> T) async rethrows -> [T] {
        var result: [T] = []
        for value in self { result.append(try await transform(value)) }
        return result
    }
}

@Suite(.tags(.endToEnd), .serialized)
struct RebuildWithVagrantTests {
    @Test func rebuildProvisionBakesANewBoxWithVagrantAndEveryWorkerComesFromIt() async throws {
        try await LifecycleHost.with(workers: 2, provision: ["base.sh": "echo baked-into-the-box > baked-marker\n"]) { life in
            let vagrant = try FakeVagrant(fake: life.fake, directory: life.host.directory.path + "/vagrant")
            try "\nvagrant:\n  vagrant: \(vagrant.vagrantPath)\n  directory: \(life.boxesDir)\n".write(
                toFile: life.host.configDir + "/worker.test.yml", atomically: true, encoding: .utf8)
            try "# tworker's base VM (the fake vagrant reads only the environment)\n".write(toFile: life.boxesDir + "/Vagrantfile", atomically: true, encoding: .utf8)
            #expect(try await life.vagrant(["import"]).status == 0)
            let boxBefore = try BoxBuilder.readBox(life.box)
            #expect(boxBefore.disk["baked-marker"] == nil)

            let result = try await life.host.cli(["vagrant", "rebuild", "--yes", "--provision", "--env", "test", "--config-dir", life.host.configDir],
                                                 environment: vagrant.environment)
            #expect(result.status == 0, "\(result.err)\n\(result.out)")
            #expect(result.out.contains("vagrant up --provision") && result.out.contains("vagrant package"))
            let boxAfter = try BoxBuilder.readBox(life.box)
            #expect(boxAfter.disk["baked-marker"] == "baked-into-the-box\n", "the provisioned base was packaged to vms.base_box")
            let vagrantCalls = try vagrant.calls().map { $0.first ?? "" }
            #expect(vagrantCalls == ["up", "package", "destroy"], "\(vagrantCalls)")

            let id = try await life.host.push(script: ["cat baked-marker"])
            try await life.host.runBurst(vm: "worker-2")
            #expect(try await life.host.log(id).text.contains("baked-into-the-box"), "workers come from the new box")
            let listed = try await life.fake.run(["list", "vms"]).stdout
            #expect(!listed.contains("base-retired") && !listed.contains("base-build"), "the old base and the build VM are gone: \(listed)")
        }
    }

    @Test func aFailingProvisionScriptStopsTheRebuildBeforeAnyVMIsTouched() async throws {
        try await LifecycleHost.with(workers: 1, provision: ["base.sh": "echo broken provisioning >&2\nexit 3\n"]) { life in
            let vagrant = try FakeVagrant(fake: life.fake, directory: life.host.directory.path + "/vagrant")
            try "\nvagrant:\n  vagrant: \(vagrant.vagrantPath)\n".write(toFile: life.host.configDir + "/worker.test.yml", atomically: true, encoding: .utf8)
            try "# fake\n".write(toFile: life.boxesDir + "/Vagrantfile", atomically: true, encoding: .utf8)
            #expect(try await life.vagrant(["import"]).status == 0)
            let uuid = try await life.fake.run(["showvminfo", "tworker-test-worker-1", "--machinereadable"]).stdout
            let result = try await life.host.cli(["vagrant", "rebuild", "--yes", "--provision", "--env", "test", "--config-dir", life.host.configDir],
                                                 environment: vagrant.environment)
            #expect(result.status == 1)
            #expect(result.err.contains("step 'vagrant up --provision' failed"), "\(result.err)")
            #expect(result.err.contains("broken provisioning") || result.err.contains("non-zero exit status"), "the tool's own words: \(result.err)")
            let after = try await life.fake.run(["showvminfo", "tworker-test-worker-1", "--machinereadable"]).stdout
            #expect(after.split(separator: "\n").first { $0.hasPrefix("UUID=") } == uuid.split(separator: "\n").first { $0.hasPrefix("UUID=") },
                    "the worker was not rebuilt")
        }
    }
}
