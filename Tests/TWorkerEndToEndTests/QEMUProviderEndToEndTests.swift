import Foundation
import Logging
import RedisClient
import Synchronization
import Testing
import TWorkerCore
import TWorkerTestSupport

/// `provider: qemu` against real qemu under software emulation: the test guest of
/// `boxes/qemu/build-test-image`, one VM at a time, one sandbox reused across the cycle.
@Suite(.tags(.endToEnd), .serialized, .enabled(if: QEMUGuest.installed,
        "qemu-system-x86_64 and qemu-img are not installed (apt-get install qemu-system-x86 qemu-utils)"))
struct QEMUProviderEndToEndTests {
    /// A test host whose config is the image's `worker.yml` merged over a qemu test config.
    static func withQEMUHost(provision: String = "echo provisioned >/etc/provisioned\n",
                             _ body: (TestHost, Int) async throws -> Void) async throws {
        let scratch = try TempDirectory(prefix: "tworker-qemu-image")
        defer { scratch.remove() }
        _ = try await QEMUGuest.buildImage(scratch: scratch.path)
        let portBase = try VirtualBoxHost.freePortBase(count: 2)
        // A provision script of the test's own, run by import before the snapshot.
        let provisionDir = scratch.path + "/vagrant"
        try FileManager.default.createDirectory(atPath: provisionDir + "/provision", withIntermediateDirectories: true)
        try provision.write(toFile: provisionDir + "/provision/guest.sh", atomically: true, encoding: .utf8)
        let extra = """
        vms:
          name_prefix: tworker-qemutest-
          memory: 256
          count: 2
          provision: [guest.sh]
        vagrant:
          directory: \(provisionDir)
        ssh:
          port_base: \(portBase)
        qemu:
          accel: tcg
        timeouts:
          vm_boot: 180
          qemu: 120
        limits:
          max_attempts: 3
        """
        try await TestHost.with(config: extra) { host in
            // The operator's file: the image's fragment as the script wrote it, choosing the provider.
            let fragment = try String(contentsOfFile: QEMUGuest.imageDirectory + "/worker.yml", encoding: .utf8)
            try (fragment + "provider: qemu\n").write(toFile: host.configDir + "/worker.yml", atomically: true, encoding: .utf8)
            try await body(host, portBase)
        }
    }

    /// True when an ssh master answers on the machine's control socket (`ssh -O check`).
    static func masterRuns(_ machine: QEMUMachine) async throws -> Bool {
        let path = try #require(machine.target.controlPath)
        var check = ProgramCommand(.ssh, arguments: ["-o", "ControlPath=\(path)", "-O", "check", "-p", String(machine.target.port),
                                                     "-l", machine.target.user, machine.target.host])
        check.timeout = .seconds(10)
        return (try? await ProgramRunner().run(check)) != nil
    }

    static func seconds(_ duration: Duration) -> String {
        String(format: "%.2f s", Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
    }

    @Test(.timeLimit(.minutes(10)))
    func jobsRunInARealVMRestoredFromSandboxEachTime() async throws {
        try await Self.withQEMUHost { host, _ in
            let config = try host.config()
            let provider = QEMUProvider(config: config, logger: Logger(label: "test-qemu"))
            let machine = try provider.qemuMachine(named: "worker-1")
            defer { if let pid = machine.pid { kill(pid, SIGKILL) } }

            // The sandbox is taken with the guest's clock 10 minutes behind: a job must still see the host's time.
            let importStarted = ContinuousClock.now
            try await machine.createSandbox(provision: { target in
                var command = ProgramCommand.ssh(target, remoteCommand: ["date -s @\(Int(Date().timeIntervalSince1970) - 600) >/dev/null"])
                command.timeout = .seconds(60)
                try await ProgramRunner().run(command)
            })
            let bootToSandbox = ContinuousClock.now - importStarted
            try await machine.release()
            #expect(try await machine.hasSandbox())
            #expect(try await Self.masterRuns(machine), "release left the next build's SSH connection open, the guest paused")

            let first = try await host.push(script: ["echo clock:$(date +%s)", "echo job >/root/marker", "echo job >/tmp/marker"])
            let second = try await host.push(script: ["if ls /root/marker /tmp/marker 2>/dev/null; then exit 7; fi", "echo clean"])
            let worker = try host.makeWorker(machine: machine) { $0.burst = true }
            let before = Date().timeIntervalSince1970
            let jobsStarted = ContinuousClock.now
            try await worker.run()
            let twoJobs = ContinuousClock.now - jobsStarted
            let after = Date().timeIntervalSince1970

            let firstLog = try await host.log(first).text
            #expect(try await host.record(first)["state"] == "passed", "\(firstLog)")
            let clock = firstLog.split(separator: "\n").first { $0.hasPrefix("clock:") }.flatMap { Double($0.dropFirst(6)) }
            #expect(clock.map { $0 >= before - 2 && $0 <= after + 2 } == true,
                    "the guest's clock is the host's at job start: guest \(String(describing: clock)), host \(before)...\(after)")
            // busybox `date -s` prints the date it set; the build's session keeps that out of the log.
            #expect(!firstLog.contains(" UTC "), "the clock's output is not in the job's log: \(firstLog)")
            let secondLog = try await host.log(second).text
            #expect(try await host.record(second)["state"] == "passed", "the first job's files are gone: \(secondLog)")
            #expect(secondLog.contains("clean"))

            // Reset to a build: release (loadvm, SSH connection, stop), prepare (cont), then a
            // build's session (clock set, `bash -s`) as the next job sees it.
            var resets: [Duration] = []
            let cycles = ProcessInfo.processInfo.environment["TWORKER_QEMU_RESET_CYCLES"].flatMap(Int.init) ?? 5
            for _ in 0..<cycles {
                let started = ContinuousClock.now
                try await machine.release()
                try await machine.prepare()
                let exit = try await machine.run(script: "true\n", jobID: "reset") { _ in }
                #expect(exit == .exited(0))
                resets.append(ContinuousClock.now - started)
            }
            try await machine.release()

            // SIGKILL of qemu mid-build: the job is requeued, and the next attempt (a new qemu
            // started from the sandbox) passes.
            let killed = try await host.push(script: ["echo started", "sleep 5", "echo finished"])
            let killer = Task {
                for _ in 0..<600 {
                    if (try? await host.log(killed).text.contains("started")) == true, let pid = machine.pid {
                        kill(pid, SIGKILL)
                        return pid
                    }
                    try? await Task.sleep(for: .milliseconds(50))
                }
                return pid_t(0)
            }
            let requeueWorker = try host.makeWorker(machine: machine) { $0.burst = true }
            try await requeueWorker.run()
            let killedPID = await killer.value
            #expect(killedPID > 0, "the build started and its qemu was killed")
            let record = try await host.record(killed)
            let killedLog = try await host.log(killed).text
            #expect(record["state"] == "passed", "\(record) \(killedLog)")
            #expect(record["attempts"] == "2", "\(record)")
            #expect(killedLog.contains("qemu"), "the first attempt's failure names qemu: \(killedLog)")

            // A guest that stops answering mid-build (its qemu SIGSTOPped): the build's session
            // goes over the warm connection, which has no ssh keep-alives, so only the session's
            // own marks show it is gone. The job is requeued as an infrastructure error, not held
            // until its log-silence limit, and its next attempt passes.
            #expect(try await Self.masterRuns(machine), "the next build goes over the warm connection")
            let frozen = try await host.push(script: ["echo started", "sleep 2", "echo finished"])
            let freezer = Task { () -> pid_t in
                for _ in 0..<1200 {
                    if (try? await host.log(frozen).text.contains("started")) == true, let pid = machine.pid {
                        kill(pid, SIGSTOP)
                        // Thawed once the job is given up on, so the reset that follows can run.
                        for _ in 0..<1200 where (try? await host.log(frozen).text.contains("requeued")) != true {
                            try? await Task.sleep(for: .milliseconds(50))
                        }
                        kill(pid, SIGCONT)
                        return pid
                    }
                    try? await Task.sleep(for: .milliseconds(50))
                }
                return pid_t(0)
            }
            let frozenWorker = try host.makeWorker(machine: machine) { $0.burst = true }
            try await frozenWorker.run()
            #expect(await freezer.value > 0, "the build started and its qemu was stopped")
            let frozenRecord = try await host.record(frozen)
            let frozenLog = try await host.log(frozen).text
            #expect(frozenRecord["state"] == "passed" && frozenRecord["attempts"] == "2", "\(frozenRecord) \(frozenLog)")
            #expect(frozenLog.contains("stopped answering"), "the first attempt says the machine stopped answering: \(frozenLog)")

            await machine.shutdown()
            #expect(machine.pid == nil, "no qemu is left running after shutdown")
            #expect(try await !Self.masterRuns(machine), "no ssh master is left running after shutdown")
            let sorted = resets.sorted()
            print("qemu provider figures: boot to sandbox \(Self.seconds(bootToSandbox)), two jobs \(Self.seconds(twoJobs)), "
                  + "reset to a build (loadvm, SSH connection, stop, cont, build session with the clock set) p50 \(Self.seconds(sorted[sorted.count / 2])) "
                  + "max \(Self.seconds(sorted.last!)) over \(sorted.count)")
        }
    }

    /// `tworker stop` leaves no qemu running, even when a second TERM kills the workers mid-build
    /// (a killed worker cannot stop its VM: the master does, by pid file and `-name`).
    @Test(.timeLimit(.minutes(5)))
    func aSecondTermLeavesNoQEMURunning() async throws {
        try await Self.withQEMUHost { host, _ in
            let config = try host.config()
            let provider = QEMUProvider(config: config, logger: Logger(label: "test-qemu"))
            let machines = try (1...2).map { try provider.qemuMachine(named: "worker-\($0)") }
            var seen: [pid_t] = []
            defer { for pid in seen + machines.compactMap(\.pid) { kill(pid, SIGKILL) } }
            let imported = try await host.cli(["vms", "import", "--env", "test", "--config-dir", host.configDir])
            try #require(imported.status == 0, "\(imported.out)\n\(imported.err)")
            try await host.withMaster(workers: 2, waitIdle: false) { master in
                let up = await master.waitForWorkers(2, timeout: .seconds(120))
                try #require(up, "\(master.output)")
                let id = try await host.push(script: ["echo started", "sleep 120"])
                let started = try await eventually(timeout: .seconds(90)) { try await host.log(id).text.contains("started") }
                try #require(started, "\(master.output)")
                seen = machines.compactMap(\.pid)
                #expect(!seen.isEmpty, "the busy worker's qemu runs")
                master.signal(SIGTERM)
                try await Task.sleep(for: .milliseconds(50))
                master.signal(SIGTERM)
                let status = await master.process.waitForExit(timeout: .seconds(30))
                #expect(status == 1, "\(master.output)")
                let gone = await eventually(timeout: .seconds(10)) { machines.allSatisfy { $0.pid == nil } }
                #expect(gone, "qemu left running after the master exited: \(machines.compactMap(\.pid))\n\(master.output)")
                #expect(seen.allSatisfy { !QEMUProcess.isAlive($0) })
                #expect(try await host.record(id)["state"] != "passed", "the job was not run to its end")
            }
        }
    }

    /// `tworker vms import` makes 2 overlays on one base; a worker killed with SIGKILL leaves its
    /// qemu running, and the restarted worker stops it before it takes jobs.
    @Test(.timeLimit(.minutes(10)))
    func importTwoWorkersAndRestartAKilledWorker() async throws {
        try await Self.withQEMUHost { host, _ in
            let config = try host.config()
            let provider = QEMUProvider(config: config, logger: Logger(label: "test-qemu"))
            let machines = try (1...2).map { try provider.qemuMachine(named: "worker-\($0)") }
            var strays: [pid_t] = []
            defer {
                // Whatever failed above, nothing of this test keeps running (stopped by PID).
                for pid in strays + machines.compactMap(\.pid) { kill(pid, SIGKILL) }
            }
            let cli = ["--env", "test", "--config-dir", host.configDir]
            let importStarted = ContinuousClock.now
            let imported = try await host.cli(["vms", "import"] + cli)
            let importTook = ContinuousClock.now - importStarted
            #expect(imported.status == 0, "\(imported.out)\n\(imported.err)")
            for machine in machines {
                #expect(try await machine.hasSandbox(), "\(machine.vmName) has its sandbox: \(imported.out)")
                #expect(machine.pid == nil, "import stops the VMs it made")
                let info = try await ProgramRunner().run(.qemuImg(.info(image: machine.overlay), executable: "qemu-img", timeout: .seconds(30)))
                #expect(info.stdout.contains("\"backing-filename\": \"\(config.vms.baseImage!)\""), "an overlay on the one base: \(info.stdout)")
            }
            #expect(imported.out.contains("provision guest.sh"), "\(imported.out)")
            let again = try await host.cli(["vagrant", "import"] + cli)
            #expect(again.status == 0 && again.out.contains("skipped"), "a second import changes nothing: \(again.out)")
            let status = try await host.cli(["vms", "status", "--json"] + cli)
            #expect(status.status == 0 && status.out.components(separatedBy: "\"snapshot\" : true").count == 3, "\(status.out)\n\(status.err)")

            // A worker serves a job; killed with SIGKILL, it leaves its qemu behind.
            let first = try await host.push(script: ["cat /etc/provisioned"])
            let worker = try host.spawnWorker(vm: "worker-1")
            var state = ""
            for _ in 0..<1200 where state != "passed" {
                state = try await host.record(first)["state"] ?? ""
                try await Task.sleep(for: .milliseconds(50))
            }
            let firstLog = try await host.log(first).text
            #expect(state == "passed", "\(firstLog)")
            #expect(firstLog.contains("provisioned"), "the provision script ran before the snapshot: \(firstLog)")
            let stray = try #require(machines[0].pid, "the worker's qemu runs")
            strays.append(stray)
            await worker.kill9()
            #expect(machines[0].pid == stray, "SIGKILL of the worker leaves its qemu running")

            // The restarted worker stops the stray before it takes jobs, and stops its own VM on exit.
            let second = try await host.push(script: ["echo again"])
            let restarted = try host.spawnWorker(vm: "worker-1", arguments: ["--burst"])
            let exit = await restarted.waitForExit(timeout: .seconds(180))
            #expect(exit == 0)
            let secondLog = try await host.log(second).text
            #expect(try await host.record(second)["state"] == "passed", "\(secondLog)")
            #expect(!QEMUProcess.isAlive(stray), "the stray qemu (pid \(stray)) was stopped")
            #expect(machines[0].pid == nil, "a worker that exits stops its VM")
            print("qemu import figures: 2 workers \(Self.seconds(importTook))")

            // Reprovision re-creates each worker from the base, one at a time.
            let reprovisionStarted = Date()
            let reprovisioned = try await host.cli(["vms", "reprovision", "--strategy", "each"] + cli)
            #expect(reprovisioned.status == 0, "\(reprovisioned.out)\n\(reprovisioned.err)")
            #expect(reprovisioned.out.components(separatedBy: "provision guest.sh").count == 3, "\(reprovisioned.out)")
            for machine in machines {
                let written = try FileManager.default.attributesOfItem(atPath: machine.overlay)[.modificationDate] as? Date
                #expect(written.map { $0 >= reprovisionStarted.addingTimeInterval(-1) } == true, "a new overlay and sandbox")
                #expect(try await machine.hasSandbox())
                #expect(machine.pid == nil)
            }
            let removed = try await host.cli(["vms", "remove", "--yes"] + cli)
            #expect(removed.status == 0, "\(removed.out)\n\(removed.err)")
            for machine in machines { #expect(!FileManager.default.fileExists(atPath: machine.overlay)) }
        }
    }

    /// `reprovision --strategy base` with 2 workers taking jobs: the provision script runs once, in
    /// a VM on a throwaway overlay of the base; the workers are taken out one at a time (a running
    /// job finishes first, the other worker keeps taking jobs) and re-created on the new base; the
    /// next job on each sees the file the script wrote; an old base no overlay uses is deleted.
    /// Then `rebuild --provision` does the same from `vms.base_image` itself.
    @Test(.timeLimit(.minutes(10)))
    func reprovisionBaseRollsTwoBusyWorkersOntoOneProvisionedBase() async throws {
        // The test guest's root is an initramfs (RAM): a new base carries what the script leaves
        // on the disk, so the script keeps its marker on a filesystem there.
        let script = """
            set -e
            mkdir -p /mnt
            mount /dev/vda /mnt 2>/dev/null || { mke2fs /dev/vda >/dev/null; mount /dev/vda /mnt; }
            echo provisioned >>/mnt/provision-runs
            umount /mnt

            """
        try await Self.withQEMUHost(provision: script) { host, portBase in
            let config = try host.config()
            let provider = QEMUProvider(config: config, logger: Logger(label: "test-qemu"))
            let machines = try (1...2).map { try provider.qemuMachine(named: "worker-\($0)") }
            defer { for pid in (machines + [provider.baseMachine()]).compactMap(\.pid) { kill(pid, SIGKILL) } }
            let operatorsBase = try #require(config.vms.baseImage)
            let operatorsBaseBefore = try FileManager.default.attributesOfItem(atPath: operatorsBase)[.modificationDate] as? Date
            // An earlier provisioned base that no overlay uses any more: it goes at the end.
            let images = provider.settings.base.directory
            try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
            let stale = images + "/base-20000101T000000Z.qcow2"
            try Data().write(to: URL(fileURLWithPath: stale))
            let cli = ["--env", "test", "--config-dir", host.configDir]

            // Two workers, each making its sandbox on vms.base_image at its first job (the two VMs boot at once).
            // Each also serves a queue of its own first, so the marker jobs below reach one worker each.
            let workers = try (1...2).map { number in try host.makeWorker(vm: "worker-\(number)") { $0.queue = "marker-\(number),builds" } }
            let running = workers.map { worker in Task { try await worker.run() } }
            defer { for worker in workers { worker.requestStop(.immediate) } }
            let warmup = [try await host.push(script: ["sleep 1"]), try await host.push(script: ["sleep 1"])]
            let warmedUp = try await eventually(timeout: .seconds(240)) {
                for id in warmup where try await host.record(id)["state"] != "passed" { return false }
                return true
            }
            #expect(warmedUp, "both workers made their sandboxes and ran a job")
            for machine in machines { #expect(try await machine.backingFile() == operatorsBase) }

            // A job that runs until the test lets it go, which it does once its worker is asked to step out.
            let held = try await host.push(script: ["for i in $(seq 600); do [ -e /tmp/go ] && break; sleep 1; done", "echo released"])
            var holder = ""
            _ = try await eventually(timeout: .seconds(60)) {
                holder = try await host.record(held)["vm"] ?? ""
                return !holder.isEmpty
            }
            let holderNumber = try #require(VirtualBoxProvider.workerNumber(holder), "a worker took the held job")
            let other = "worker-\(3 - holderNumber)"

            let finished = Mutex(false)
            let reprovisionStarted = ContinuousClock.now
            let reprovision = Task {
                defer { finished.withLock { $0 = true } }
                return try await host.cli(["vms", "reprovision", "--strategy", "base"] + cli, timeout: .seconds(500))
            }
            var maxOut = 0
            var holderBusyWhenMarked: Bool?
            var released = false
            // Each VM taken out while it runs the held job is told to let it end (once per attempt).
            var releasedOn: Set<String> = []
            var flow: [String] = []
            var flowPassedWhileHolderOut = 0
            var otherBusyWhileHolderOut = false
            while !finished.withLock({ $0 }) {
                var out: [String] = []
                var states: [String: (state: String, job: String)] = [:]
                for number in 1...2 {
                    let vm = "worker-\(number)"
                    let replies = try await host.redis.pipeline([["HMGET", host.keys.worker(vm: vm), "state", "job"],
                                                                 ["EXISTS", host.keys.maintenance(vm: vm)]])
                    let fields = replies.first?.array ?? []
                    states[vm] = (fields.first?.string ?? "", fields.last?.string ?? "")
                    if replies.last?.int == 1 { out.append(vm) }
                }
                maxOut = max(maxOut, out.count)
                if out.contains(holder), holderBusyWhenMarked == nil {
                    holderBusyWhenMarked = states[holder]?.state == "busy" && states[holder]?.job == held
                }
                // Let the held job end where it runs (its worker finishes it before its VM is
                // touched). Usually that is the holder; a guest that stopped answering under TCG
                // has its job requeued (an infrastructure error), and the job may then run on the
                // other VM when that one is taken out.
                for vm in out where states[vm]?.job == held {
                    // Per attempt: a rerun on the same VM starts from a restored guest.
                    let run = vm + "#" + (try await host.record(held)["attempts"] ?? "")
                    if releasedOn.contains(run) { continue }
                    let number = try #require(VirtualBoxProvider.workerNumber(vm))
                    let target = SSHTarget(user: config.ssh.user, host: config.ssh.host, port: portBase + number,
                                           key: config.ssh.key, knownHosts: host.stateDir + "/test-known-hosts")
                    var touch = ProgramCommand.ssh(target, remoteCommand: ["touch /tmp/go"])
                    touch.timeout = .seconds(30)
                    if (try? await ProgramRunner().run(touch)) != nil { releasedOn.insert(run) }
                }
                if out.contains(holder) {
                    if !released {
                        // Give the other worker work while this one is out.
                        released = true
                        for _ in 0..<4 { flow.append(try await host.push(script: ["sleep 1"])) }
                    }
                    if states[other]?.state == "busy" { otherBusyWhileHolderOut = true }
                    var passed = 0
                    for id in flow where try await host.record(id)["state"] == "passed" { passed += 1 }
                    flowPassedWhileHolderOut = passed
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            let result = try await reprovision.value
            let reprovisionTook = ContinuousClock.now - reprovisionStarted
            #expect(result.status == 0, "\(result.out)\n\(result.err)")
            #expect(result.out.components(separatedBy: "provision guest.sh").count == 2, "the script ran once, on the base: \(result.out)")
            #expect(maxOut == 1, "one worker out at a time (vms.max_unavailable: 1)")
            let heldRecord = try await host.record(held)
            let heldLog = try await host.log(held).text
            if heldLog.contains("stopped answering") {
                // The rare TCG guest that froze after `loadvm` (see README): the job was requeued as an
                // infrastructure error and finished on its next attempt; the roll still waited for it.
                print("note: the held job's guest stopped answering; it ran again: \(heldRecord)")
                #expect(heldRecord["state"] == "passed" && heldRecord["attempts"] == "2", "\(heldRecord) \(heldLog)")
            } else {
                #expect(holderBusyWhenMarked == true, "\(holder) was running the held job when it was asked to step out")
                #expect(heldRecord["state"] == "passed" && heldRecord["attempts"] == "1", "the running job finished where it ran: \(heldRecord)")
            }
            #expect(heldLog.contains("released"), "\(heldLog)")
            #expect(otherBusyWhileHolderOut && flowPassedWhileHolderOut > 0,
                    "\(other) kept taking jobs while \(holder) was out (\(flowPassedWhileHolderOut) passed)")

            // Every worker on the one new base, with a new sandbox; the operator's file untouched.
            let newBase = try #require(provider.settings.base.provisioned, "a provisioned base is current")
            #expect(newBase != operatorsBase && newBase.hasPrefix(images + "/"))
            for machine in machines {
                #expect(try await machine.backingFile() == newBase, "\(machine.vmName)'s overlay is on the new base")
                #expect(try await machine.hasSandbox())
            }
            #expect(provider.settings.base.images == [newBase], "the unused old base was deleted")
            #expect(try FileManager.default.attributesOfItem(atPath: operatorsBase)[.modificationDate] as? Date == operatorsBaseBefore,
                    "vms.base_image was never written")
            #expect(!FileManager.default.fileExists(atPath: provider.baseMachine().overlay), "the base VM's overlay is gone")

            // The next job on each worker sees what the script wrote, written once.
            let markers = [
                try await host.push(script: ["mkdir -p /mnt", "mount -o ro /dev/vda /mnt", "cat /mnt/provision-runs"], queue: "marker-1"),
                try await host.push(script: ["mkdir -p /mnt", "mount -o ro /dev/vda /mnt", "cat /mnt/provision-runs"], queue: "marker-2"),
            ]
            let ran = try await eventually(timeout: .seconds(120)) {
                var done = 0
                for id in flow + markers where ["passed", "failed", "errored"].contains(try await host.record(id)["state"] ?? "") { done += 1 }
                return done == flow.count + markers.count
            }
            #expect(ran)
            var markerVMs: Set<String> = []
            for id in markers {
                let record = try await host.record(id)
                let log = try await host.log(id).text
                #expect(record["state"] == "passed", "\(record) \(log)")
                #expect(log.components(separatedBy: "provisioned").count == 2, "the marker, written once: \(log)")
                markerVMs.insert(record["vm"] ?? "")
            }
            #expect(markerVMs == ["worker-1", "worker-2"], "one marker job on each worker")
            for id in flow { #expect(try await host.record(id)["state"] == "passed") }

            // status: accel, qemu pid, RSS, SSH port, snapshot and base of each worker.
            let status = try await host.cli(["vms", "status", "--json"] + cli)
            #expect(status.status == 0, "\(status.err)")
            if case .array(let rows)? = try? JSONValue.parse(Array(status.out.utf8)) {
                for (index, row) in rows.enumerated() {
                    guard case .object(let fields) = row else { continue }
                    #expect(fields["accel"] == .string("tcg") && fields["snapshot"] == .bool(true)
                            && fields["ssh_port"] == .int(Int64(portBase + index + 1)) && fields["base"] == .string(newBase), "\(fields)")
                    if case .int(let pid)? = fields["pid"], case .int(let rss)? = fields["rss_mb"] {
                        #expect(machines[index].pid.map(Int64.init) == pid && rss > 50, "\(fields)")
                    } else {
                        Issue.record("a running worker VM shows its pid and RSS: \(fields)")
                    }
                }
                #expect(rows.count == 2)
            } else {
                Issue.record("status --json: \(status.out)")
            }

            // rebuild --provision: the script runs once more, on vms.base_image itself rather than on
            // top of the current base (the marker is written once again), and the workers move to it.
            let rebuildStarted = ContinuousClock.now
            let rebuilt = try await host.cli(["vms", "rebuild", "--provision", "--yes"] + cli, timeout: .seconds(500))
            let rebuildTook = ContinuousClock.now - rebuildStarted
            #expect(rebuilt.status == 0, "\(rebuilt.out)\n\(rebuilt.err)")
            #expect(rebuilt.out.components(separatedBy: "provision guest.sh").count == 2, "\(rebuilt.out)")
            let rebuiltBase = try #require(provider.settings.base.provisioned)
            #expect(rebuiltBase != newBase && provider.settings.base.images == [rebuiltBase], "the replaced base was deleted")
            for machine in machines { #expect(try await machine.backingFile() == rebuiltBase) }
            let fresh = try await host.push(script: ["mkdir -p /mnt", "mount -o ro /dev/vda /mnt", "cat /mnt/provision-runs"])
            #expect(try await eventually(timeout: .seconds(120)) { try await host.record(fresh)["state"] == "passed" })
            let freshLog = try await host.log(fresh).text
            #expect(freshLog.components(separatedBy: "provisioned").count == 2, "provisioned from vms.base_image: \(freshLog)")

            for worker in workers { worker.requestStop(.graceful) }
            for task in running { try await task.value }
            for machine in machines { await machine.shutdown() }
            print("qemu reprovision --strategy base figures: 2 workers \(Self.seconds(reprovisionTook)) "
                  + "(\(holder) drained its running job; \(flowPassedWhileHolderOut) jobs passed on \(other) while it was out); "
                  + "rebuild --provision \(Self.seconds(rebuildTook))")
        }
    }

    /// qemu that will not start: an infrastructure error in qemu's own words, and no process left.
    @Test func aQEMUThatWillNotStartSaysWhy() async throws {
        try await Self.withQEMUHost { host, _ in
            var config = try host.config()
            config.qemu.extraArgs = ["-no-such-option"]
            let machine = try QEMUProvider(config: config, logger: Logger(label: "test-qemu")).qemuMachine(named: "worker-1")
            let error = await #expect(throws: InfrastructureError.self) { try await machine.prepare() }
            #expect(error?.message.contains("qemu for VM tworker-qemutest-worker-1 failed to start") == true, "\(String(describing: error))")
            #expect(error?.message.contains("-no-such-option: invalid option") == true, "qemu's own message: \(String(describing: error))")
            #expect(machine.pid == nil)
        }
    }

    /// A QMP command that fails: the infrastructure error carries qemu's message, and the next
    /// `prepare` starts over (here: makes the missing sandbox again).
    @Test(.timeLimit(.minutes(5)))
    func aFailedLoadvmIsReportedWithQEMUsMessage() async throws {
        try await Self.withQEMUHost { host, _ in
            var config = try host.config()
            // A second QMP socket for the test: qemu lets one client at a time on each.
            let side = host.stateDir + "/side-qmp.sock"
            config.qemu.extraArgs = ["-qmp", "unix:\(side),server=on,wait=off"]
            let machine = try QEMUProvider(config: config, logger: Logger(label: "test-qemu")).qemuMachine(named: "worker-1")
            defer { if let pid = machine.pid { kill(pid, SIGKILL) } }
            try await machine.prepare()
            let qmp = try await QMPClient.connect(path: side, timeout: .seconds(30))
            try await qmp.humanMonitor("delvm \(QEMUProvider.sandboxSnapshot)", timeout: .seconds(60))
            await qmp.close()
            let error = await #expect(throws: InfrastructureError.self) { try await machine.release() }
            #expect(error?.message.contains("loadvm sandbox") == true, "\(String(describing: error))")
            #expect(error?.message.contains("sandbox") == true && error?.message.lowercased().contains("snapshot") == true,
                    "qemu's own words: \(String(describing: error))")
            try await machine.prepare()
            #expect(try await machine.hasSandbox(), "the next prepare made the sandbox again")
            await machine.shutdown()
            #expect(machine.pid == nil)
        }
    }
}
