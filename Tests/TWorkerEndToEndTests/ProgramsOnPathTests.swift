import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// A host set up the way operators install tworker: the fakes sit on PATH under their real names
/// (`VBoxManage`, `vagrant`) and the config names neither (no `virtualbox.vboxmanage`, no
/// `vagrant.vagrant`), so every command finds them the way a shell would.
struct PathHost {
    let host: TestHost
    let fake: FakeVirtualBox
    let portBase: Int
    /// `VBoxManage` and `vagrant`.
    let fakes: String
    /// `VBoxManage` alone.
    let vboxmanageOnly: String
    static let prefix = "tworker-test-"

    /// The test process's PATH without any directory holding a VBoxManage or vagrant.
    static let systemPath: String = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin")
        .split(separator: ":").map(String.init)
        .filter { !FileManager.default.fileExists(atPath: $0 + "/VBoxManage") && !FileManager.default.fileExists(atPath: $0 + "/vagrant") }
        .joined(separator: ":")

    var pathWithFakes: String { fakes + ":" + Self.systemPath }
    var pathWithoutVagrant: String { vboxmanageOnly + ":" + Self.systemPath }

    /// `createVMs`: worker VMs with their `sandbox` already there (else an operator's first `import` makes them).
    static func with(workers: Int = 1, createVMs: Bool, extraConfig: String = "", _ body: (PathHost) async throws -> Void) async throws {
        try await withFakeVagrant { fake, vagrant in
            let portBase = try VirtualBoxHost.freePortBase(count: workers + 1)
            try await TestHost.with(config: extraConfig) { host in
                let boxesDir = host.directory.path + "/boxes"
                try FileManager.default.createDirectory(atPath: boxesDir + "/provision", withIntermediateDirectories: true)
                try "#!/bin/bash\nset -e\necho provisioned > provision-marker\n".write(toFile: boxesDir + "/provision/base.sh", atomically: true, encoding: .utf8)
                let box = boxesDir + "/base.box"
                _ = try BoxBuilder.makeBox(at: box, files: ["etc/os-release": "NAME=tworker-test-box\n"])
                let config = """
                provider: virtualbox
                vms:
                  count: \(workers)
                  name_prefix: \(prefix)
                  base_box: \(box)
                  provision: [base.sh]
                ssh:
                  user: \(FakeVirtualBox.currentUser)
                  key: \(fake.privateKeyPath)
                  port_base: \(portBase)
                vagrant:
                  directory: \(boxesDir)
                timeouts:
                  vm_boot: 15
                """
                try config.write(toFile: host.configDir + "/worker.yml", atomically: true, encoding: .utf8)
                if createVMs {
                    for number in 1...workers {
                        try await fake.createVM(name: "\(prefix)worker-\(number)", port: portBase + number, snapshot: "sandbox", online: true)
                    }
                }
                try await body(PathHost(host: host, fake: fake, portBase: portBase,
                                        fakes: try vagrant.installOnPath(), vboxmanageOnly: try fake.installOnPath()))
            }
        }
    }

    /// `tworker ARGS --env test --config-dir ...` with exactly this PATH.
    func cli(_ arguments: [String], path: String) async throws -> (status: Int32, out: String, err: String) {
        try await host.cli(arguments + ["--env", "test", "--config-dir", host.configDir], environment: ["PATH": path])
    }

    /// `VM=worker-1 tworker work --burst` with exactly this PATH; its exit status (nil: still running after `timeout`, then killed).
    func workBurst(path: String, timeout: Duration = .seconds(90)) async throws -> (status: Int32?, output: String) {
        let process = try SpawnedProcess.spawn(
            try tworkerExecutable(), ["work", "--burst", "--env", "test", "--config-dir", host.configDir],
            environment: ["PATH": path, "HOME": host.directory.path, "VM": "worker-1"],
            log: host.directory.path + "/work-\(UUID().uuidString.prefix(6)).log")
        let status = await process.waitForExit(timeout: timeout)
        if status == nil { await process.kill9() }
        return (status, process.output)
    }

    func missingLine(_ name: String, path: String, remedy: String) -> String {
        Self.missingLine(name, path: path, remedy: remedy)
    }

    static func missingLine(_ name: String, path: String, remedy: String) -> String {
        "tworker: \(name) not found on PATH (\(path)); \(remedy)\n"
    }
}

/// A PATH of one directory (under `parent`) holding symlinks to only the programs wanted:
/// name → what it runs (a path, or a bare name found on the test's own PATH).
func pathOf(_ programs: [String: String], in parent: String) throws -> String {
    let directory = parent + "/path-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    for (name, target) in programs {
        let resolved = target.contains("/") ? target : try ProgramLocator().locate(Program(name: target, remedy: ""))
        try FileManager.default.createSymbolicLink(atPath: directory + "/" + name, withDestinationPath: resolved)
    }
    return directory
}

@Suite(.tags(.endToEnd), .serialized)
struct ProgramsOnPathTests {
    @Test func workRunsAJobOnVBoxManageFoundOnPATH() async throws {
        try await PathHost.with(createVMs: true) { path in
            let id = try await path.host.push(script: ["echo hello-from-the-vm"])
            let run = try await path.workBurst(path: path.pathWithFakes)
            #expect(run.status == 0, "\(run.output)")
            let record = try await path.host.record(id)
            #expect(record["state"] == "passed", "\(record)\n\(run.output)")
            #expect(try await path.host.log(id).text.contains("hello-from-the-vm"))
            #expect(try path.fake.calls().contains { $0.first == "startvm" }, "the fake on PATH ran the VM")
        }
    }

    @Test func startRunsAJobOnVBoxManageFoundOnPATH() async throws {
        try await PathHost.with(createVMs: true) { path in
            try await path.host.withMaster(workers: 1, environment: ["PATH": path.pathWithFakes]) { master in
                let id = try await path.host.push(script: ["echo hello-under-the-master"])
                let done = try await eventually(timeout: .seconds(60)) { try await path.host.record(id)["state"] == "passed" }
                let record = try await path.host.record(id)
                #expect(done, "\(record)\n\(master.output)")
                #expect(try await path.host.log(id).text.contains("hello-under-the-master"))
                master.signal(SIGQUIT)
                let status = await master.process.waitForExit(timeout: .seconds(30))
                #expect(status == 0, "\(master.output)")
            }
        }
    }

    @Test func lifecycleCommandsFindVBoxManageOnPATH() async throws {
        try await PathHost.with(createVMs: false) { path in
            let vm = "\(PathHost.prefix)worker-1"
            let imported = try await path.cli(["vagrant", "import"], path: path.pathWithFakes)
            #expect(imported.status == 0, "\(imported.err)\n\(imported.out)")
            #expect(try await path.fake.state(of: vm) == "poweroff")

            let status = try await path.cli(["vagrant", "status", "--json"], path: path.pathWithFakes)
            #expect(status.status == 0, "\(status.err)")
            #expect(status.out.contains(vm) && status.out.contains("poweroff"), "\(status.out)")

            let reprovisioned = try await path.cli(["vagrant", "reprovision", "--strategy", "each"], path: path.pathWithFakes)
            #expect(reprovisioned.status == 0, "\(reprovisioned.err)\n\(reprovisioned.out)")
            #expect(reprovisioned.out.contains("provision base.sh"), "ssh on PATH ran the provision script: \(reprovisioned.out)")

            let removed = try await path.cli(["vagrant", "remove", "--yes"], path: path.pathWithFakes)
            #expect(removed.status == 0, "\(removed.err)\n\(removed.out)")
            #expect(try await path.fake.run(["list", "vms"]).stdout.isEmpty, "every VM is gone")
        }
    }

    @Test func withoutVBoxManageOnPATHLifecycleCommandsAndStartSayOneLineAndExit1() async throws {
        try await PathHost.with(createVMs: true) { path in
            let system = PathHost.systemPath
            let line = path.missingLine("VBoxManage", path: system, remedy: "install VirtualBox or set virtualbox.vboxmanage")
            let before = try path.fake.callRecords().count
            let commands: [[String]] = [
                ["vagrant", "import"], ["vagrant", "status"], ["vagrant", "reprovision", "--strategy", "each"],
                ["vagrant", "remove", "--yes"], ["vagrant", "rebuild", "--yes"],
            ]
            for command in commands {
                let result = try await path.cli(command, path: system)
                #expect(result.status == 1, "\(command): \(result.err)")
                #expect(result.err == line, "\(command)")
                #expect(result.out.isEmpty, "\(command): nothing done before the check: \(result.out)")
            }

            let master = try path.host.spawnMaster(environment: ["PATH": system])
            let status = await master.process.waitForExit(timeout: .seconds(30))
            await master.cleanUp()
            #expect(status == 1, "\(master.output)")
            #expect(master.output == line)
            #expect(!FileManager.default.fileExists(atPath: master.paths.pidFile), "nothing started: \(master.output)")

            // VBoxManage there, vagrant not: a rebuild that builds a box with vagrant names vagrant.
            let rebuild = try await path.cli(["vagrant", "rebuild", "--provision", "--yes"], path: path.pathWithoutVagrant)
            #expect(rebuild.status == 1)
            #expect(rebuild.err == path.missingLine("vagrant", path: path.pathWithoutVagrant, remedy: "install Vagrant or set vagrant.vagrant"))
            #expect(try path.fake.callRecords().count == before, "no VBoxManage call was made")
        }
    }

    @Test func withoutTarOnPATHLifecycleCommandsThatUnpackTheBoxSayOneLineAndTouchNoVM() async throws {
        try await PathHost.with(createVMs: true) { path in
            // ssh for reprovision: everything but tar.
            let bin = try pathOf(["VBoxManage": path.vboxmanageOnly + "/VBoxManage", "ssh": "ssh"], in: path.host.directory.path)
            let line = path.missingLine("tar", path: bin, remedy: "install tar")
            let before = try path.fake.callRecords().count
            // rebuild would power off and set the old base aside before unpacking; import and
            // reprovision --strategy base unpack the box when the base is missing.
            for command in [["vagrant", "rebuild", "--yes"], ["vagrant", "import"], ["vms", "reprovision", "--strategy", "base"]] {
                let result = try await path.cli(command, path: bin)
                #expect(result.status == 1, "\(command): \(result.err)")
                #expect(result.err == line, "\(command)")
                #expect(result.out.isEmpty, "\(command): \(result.out)")
            }
            #expect(try path.fake.callRecords().count == before, "no VBoxManage call was made")
        }
    }

    @Test func withoutSSHOnPATHReprovisionSaysOneLineAndTouchesNoVM() async throws {
        try await PathHost.with(createVMs: true) { path in
            let bin = try pathOf(["VBoxManage": path.vboxmanageOnly + "/VBoxManage", "tar": "tar"], in: path.host.directory.path)
            let before = try path.fake.callRecords().count
            let result = try await path.cli(["vagrant", "reprovision", "--strategy", "each"], path: bin)
            #expect(result.status == 1, "\(result.err)")
            #expect(result.err == path.missingLine("ssh", path: bin, remedy: "install the ssh client (openssh-client)"))
            #expect(result.out.isEmpty, "\(result.out)")
            #expect(try path.fake.callRecords().count == before, "no VBoxManage call was made")
        }
    }

    @Test func withoutVBoxManageOnPATHAWorkerRequeuesTheJobThenErrorsIt() async throws {
        try await PathHost.with(createVMs: true, extraConfig: "limits:\n  max_attempts: 2\n") { path in
            let system = PathHost.systemPath
            let reason = "VBoxManage not found on PATH (\(system)); install VirtualBox or set virtualbox.vboxmanage"
            let id = try await path.host.push(script: ["echo never-runs"])
            let run = try await path.workBurst(path: system)
            #expect(run.status == 0, "\(run.output)")
            let record = try await path.host.record(id)
            #expect(record["state"] == "errored", "\(record)\n\(run.output)")
            #expect(record["attempts"] == "2", "\(record)")
            #expect(record["error"]?.contains(reason) == true, "\(record)")
            let events = try await path.host.events(for: id)
            #expect(events.filter { $0 == "job:requeued" }.count == 1, "requeued once, then errored: \(events)")
            #expect(try await path.host.log(id).text.contains(reason))
            #expect(try await path.host.int(["LLEN", path.host.keys.processing(vm: "worker-1")]) == 0, "never left in processing")
            #expect(try await path.host.int(["LLEN", "resque:queue:builds"]) == 0)
            #expect(!(try await path.host.log(id).text.contains("never-runs\n")))
        }
    }
}

/// The other providers' programs, redis-server for the embedded Redis, and `tworker setup`'s
/// programs, each missing from a PATH of symlinks to only the others: one line naming it and
/// what sets it, exit 1, nothing started.
@Suite(.tags(.endToEnd), .serialized)
struct MissingProgramsTests {
    /// `tworker start` with exactly this PATH: its exit status and output, and whether it took the master lock.
    func start(_ host: TestHost, path: String) async throws -> (status: Int32?, output: String, locked: Bool) {
        let master = try host.spawnMaster(environment: ["PATH": path])
        let status = await master.process.waitForExit(timeout: .seconds(30))
        await master.cleanUp()
        return (status, master.output, FileManager.default.fileExists(atPath: master.paths.pidFile))
    }

    @Test func qemuStartAndImportNameEachMissingProgramAndItsKey() async throws {
        try await TestHost.with { host in
            let image = host.directory.path + "/base.qcow2"
            try Data().write(to: URL(fileURLWithPath: image))
            try "provider: qemu\nvms:\n  base_image: \(image)\n".write(toFile: host.configDir + "/worker.yml", atomically: true, encoding: .utf8)
            let cases: [(present: [String: String], missing: String, remedy: String)] = [
                ([:], "qemu-system-x86_64", "install qemu-system-x86 or set qemu.binary"),
                (["qemu-system-x86_64": "/bin/true"], "qemu-img", "install qemu-utils or set qemu.img"),
                (["qemu-system-x86_64": "/bin/true", "qemu-img": "/bin/true"], "ssh", "install the ssh client (openssh-client)"),
            ]
            for (present, missing, remedy) in cases {
                let bin = try pathOf(present, in: host.directory.path)
                let line = PathHost.missingLine(missing, path: bin, remedy: remedy)
                let started = try await start(host, path: bin)
                #expect(started.status == 1, "start without \(missing): \(started.output)")
                #expect(started.output == line, "start without \(missing)")
                #expect(!started.locked, "nothing started")
                let imported = try await host.cli(["vms", "import", "--env", "test", "--config-dir", host.configDir], environment: ["PATH": bin])
                #expect(imported.status == 1, "import without \(missing): \(imported.err)")
                #expect(imported.err == line, "import without \(missing)")
                #expect(imported.out.isEmpty, "\(imported.out)")
            }
            #expect(!FileManager.default.fileExists(atPath: host.stateDir + "/qemu"), "no VM file was made")
        }
    }

    @Test func localStartWithoutBashSaysOneLine() async throws {
        try await TestHost.with { host in
            let bin = try pathOf([:], in: host.directory.path)
            let started = try await start(host, path: bin)
            #expect(started.status == 1, "\(started.output)")
            #expect(started.output == PathHost.missingLine("bash", path: bin, remedy: "install bash"))
            #expect(!started.locked)
        }
    }

    @Test func startOnTheEmbeddedRedisWithoutRedisServerSaysSoBeforeTakingTheMasterLock() async throws {
        try await TestHost.with { host in
            var embedded = host
            embedded.redisSection = "  url: embedded"
            try embedded.writeConfig("")
            let bin = try pathOf(["bash": "bash"], in: host.directory.path)
            let started = try await start(embedded, path: bin)
            #expect(started.status == 1, "\(started.output)")
            #expect(started.output == PathHost.missingLine("redis-server", path: bin, remedy: "install redis-server or set redis.url to an existing server"))
            #expect(!started.locked, "the master lock was not taken")
            #expect(!FileManager.default.fileExists(atPath: host.stateDir + "/redis"), "no embedded Redis was set up")
        }
    }

    @Test func setupNamesEveryMissingProgramBeforeItsFirstStep() async throws {
        try await TestHost.with { host in
            try "provider: local\n".write(toFile: host.configDir + "/worker.example.yml", atomically: true, encoding: .utf8)
            let bin = try pathOf(["bash": "bash", "useradd": "/bin/true"], in: host.directory.path)
            let result = try await host.cli(["setup", "--env", "test", "--config-dir", host.configDir, "--prefix", host.directory.path + "/prefix",
                                             "--no-service"], environment: ["PATH": bin])
            #expect(result.status == 1, "\(result.out)\n\(result.err)")
            #expect(result.err == PathHost.missingLine("groupadd", path: bin, remedy: "install passwd (useradd, groupadd)")
                    + PathHost.missingLine("ssh-keygen", path: bin, remedy: "install the ssh client (openssh-client)"), "\(result.err)")
            #expect(result.out.isEmpty, "no step ran: \(result.out)")
            #expect(!FileManager.default.fileExists(atPath: host.configDir + "/worker.yml"), "the first step (config) did not run")
            #expect(!FileManager.default.fileExists(atPath: host.directory.path + "/prefix"))
        }
    }
}

/// Ctrl-C of a lifecycle command: the programs it runs sit in process groups of their own (so a
/// timeout can end everything they started), out of the terminal's reach; tworker ends them.
@Suite(.serialized) struct LifecycleInterruptTests {
    @Test(arguments: [SIGINT, SIGTERM])
    func aSignalToALifecycleCommandEndsTheProgramItWasRunning(signal: Int32) async throws {
        try await PathHost.with(createVMs: true) { host in
            try host.fake.inject("showvminfo", fault: .hang)
            let process = try SpawnedProcess.spawn(
                try tworkerExecutable(), ["vagrant", "status", "--env", "test", "--config-dir", host.host.configDir],
                environment: ["PATH": host.pathWithFakes, "HOME": host.host.directory.path],
                log: host.host.directory.path + "/status-\(signal).log")
            var hung: pid_t?
            _ = await eventually(timeout: .seconds(20)) {
                hung = childProcesses(of: process.pid).first { commandLine(of: $0).contains("VBoxManage") }
                return hung != nil
            }
            let vboxmanage = try #require(hung, "tworker never ran VBoxManage: \(process.output)")
            try await Task.sleep(for: .milliseconds(500))
            #expect(!processIsGone(vboxmanage), "VBoxManage did not hang: \(process.output)")
            process.signal(signal)
            let status = await process.waitForExit(timeout: .seconds(10))
            if status == nil { await process.kill9() }
            #expect(status == 128 + signal, "\(process.output)")
            #expect(await eventually(timeout: .seconds(5)) { processIsGone(vboxmanage) }, "VBoxManage outlived tworker")
            try host.fake.clearFaults()
        }
    }
}

/// Direct children of `pid`, found by parent pid in /proc.
private func childProcesses(of pid: pid_t) -> [pid_t] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { pid_t($0) }.filter { candidate in
        guard let stat = try? String(contentsOfFile: "/proc/\(candidate)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 && pid_t(fields[1]) == pid
    }
}

private func commandLine(of pid: pid_t) -> String {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return "" }
    return String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
}
