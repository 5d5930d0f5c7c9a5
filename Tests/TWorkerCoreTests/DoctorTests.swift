import Foundation
import RedisClient
import Synchronization
import Testing
@testable import TWorkerCore

/// A made-up host for the doctor's checks: which programs are where, what they print, which
/// files exist with which owner and mode, which ports are taken.
final class FakeDoctorHost: DoctorProbing {
    struct State {
        var programs: [String: String] = [:]
        /// Output by `tool argv...`; a missing entry fails the run.
        var outputs: [String: String] = [:]
        var redis: Result<RedisFacts, RedisError> = .success(RedisFacts(role: "master", version: "7.0.15"))
        var files: [String: FileFacts] = [:]
        var space: (available: UInt64, total: UInt64) = (100 << 30, 200 << 30)
        var takenPorts: Set<Int> = []
        var unwritable: Set<String> = []
        var master: pid_t?
        var kvm = false
        var euid: uid_t = 1000
        var commands: [String] = []
    }

    let state = Mutex(State())

    init(_ change: (inout State) -> Void = { _ in }) { state.withLock { change(&$0) } }

    func update(_ change: (inout State) -> Void) { state.withLock { change(&$0) } }

    func locate(_ program: Program) throws(ProgramNotFound) -> String {
        guard let path = state.withLock({ $0.programs[program.name] }) else { throw ProgramNotFound(program: program, searchPath: "/usr/bin:/bin") }
        return path
    }

    func run(_ command: ProgramCommand) async throws -> ProgramOutput {
        _ = try locate(command.program)
        let key = ([command.tool] + command.arguments).joined(separator: " ")
        let output = state.withLock { state -> String? in
            state.commands.append(key)
            return state.outputs[key]
        }
        guard let output else {
            throw ProgramFailure(tool: command.tool, arguments: command.arguments, status: .exited(1), stdout: "",
                                 stderr: command.tool == "VBoxManage" ? "VBoxManage: error: Could not find a registered machine named 'x'\nVBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001)" : "boom",
                                 wording: command.wording)
        }
        return ProgramOutput(stdout: output)
    }

    func redis(_ endpoint: RedisEndpoint) async throws -> RedisFacts { try state.withLock { $0.redis }.get() }
    func file(_ path: String) -> FileFacts? { state.withLock { $0.files[path] } }
    func canWrite(_ path: String) -> Bool { state.withLock { !$0.unwritable.contains(path) } }
    func diskSpace(_ path: String) -> (available: UInt64, total: UInt64)? { state.withLock { $0.space } }
    func portInUse(host: String, port: Int) -> Bool { state.withLock { $0.takenPorts.contains(port) } }
    func masterPID(stateDir: String) -> pid_t? { state.withLock { $0.master } }
    func hardwareKVMWorks() -> Bool { state.withLock { $0.kvm } }
    var euid: uid_t { state.withLock { $0.euid } }
}

@Suite struct DoctorTests {
    static let stateDir = "/srv/tworker/var"

    static func config(_ provider: ProviderKind = .virtualbox, change: (inout WorkerConfig) -> Void = { _ in }) -> WorkerConfig {
        var config = WorkerConfig.defaults(env: "test", currentDirectory: "/srv/tworker", hostname: "box")
        config.provider = provider
        config.stateDir = stateDir
        config.redis.url = "redis://127.0.0.1:6379/0"
        config.vms.count = 2
        config.vms.namePrefix = "tw-"
        config.vms.baseBox = "/srv/tworker/boxes/base.box"
        config.ssh.key = "/home/travis/.ssh/id_ed25519"
        config.ssh.portBase = 2220
        change(&config)
        return config
    }

    static func vmInfo(_ name: String, state: String = "poweroff", port: Int, snapshot: Bool = true) -> String {
        var lines = ["name=\"\(name)\"", "VMState=\"\(state)\"", "Forwarding(0)=\"guestssh,tcp,127.0.0.1,\(port),,22\""]
        if snapshot { lines.append("SnapshotName=\"sandbox\"") }
        return lines.joined(separator: "\n")
    }

    /// Everything in place for a virtualbox host with two workers, as the current user (uid 1000).
    static func healthyHost(_ change: (inout FakeDoctorHost.State) -> Void = { _ in }) -> FakeDoctorHost {
        FakeDoctorHost { state in
            state.programs = ["VBoxManage": "/usr/bin/VBoxManage", "ssh": "/usr/bin/ssh", "vagrant": "/usr/bin/vagrant", "redis-server": "/usr/bin/redis-server"]
            state.outputs = [
                "VBoxManage --version": "7.0.14r161095\n",
                "ssh -V": "OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15 3 Sep 2024\n",
                "VBoxManage showvminfo tw-worker-1 --machinereadable": vmInfo("tw-worker-1", port: 2221),
                "VBoxManage showvminfo tw-worker-2 --machinereadable": vmInfo("tw-worker-2", port: 2222),
            ]
            state.files = [
                "/srv/tworker/boxes/base.box": FileFacts(uid: 0, gid: 0, mode: 0o644, isDirectory: false),
                "/home/travis/.ssh/id_ed25519": FileFacts(uid: 1000, gid: 1000, mode: 0o600, isDirectory: false),
                stateDir: FileFacts(uid: 1000, gid: 1000, mode: 0o755, isDirectory: true),
            ]
            change(&state)
        }
    }

    static func run(_ config: WorkerConfig, _ host: FakeDoctorHost) async -> DoctorReport {
        await Doctor(config: config, files: ["/srv/tworker/config/worker.yml"], probes: host).run()
    }

    static func check(_ report: DoctorReport, _ name: String) throws -> DoctorCheck {
        try #require(report.checks.first { $0.name == name }, "no \(name) in \(report.render())")
    }

    @Test func aHealthyVirtualBoxHostPassesWithEveryCheckOk() async throws {
        let report = await Self.run(Self.config(), Self.healthyHost())
        #expect(report.passed, "\(report.render())")
        #expect(report.exitCode == 0)
        #expect(report.checks.allSatisfy { $0.status == .ok }, "\(report.render())")
        let names = report.checks.map(\.name)
        #expect(names == ["config", "redis", "vboxmanage", "vagrant", "ssh", "ssh.key", "base", "vm.worker-1", "vm.worker-2",
                          "port.worker-1", "port.worker-2", "disk", "user", "master"], "\(names)")
        #expect(try Self.check(report, "redis").detail == "redis://127.0.0.1:6379/0 reachable (role master, 7.0.15)")
        #expect(try Self.check(report, "vboxmanage").detail == "/usr/bin/VBoxManage (7.0.14r161095)")
        #expect(try Self.check(report, "ssh").detail.contains("OpenSSH_9.2p1"), "ssh -V prints on stderr or stdout: the first line counts")
        #expect(try Self.check(report, "vm.worker-2").detail == "tw-worker-2 poweroff, snapshot sandbox")
        #expect(try Self.check(report, "master").detail == "not running")
    }

    @Test func theHumanOutputIsOneLinePerCheckWithItsFixAndJSONHasTheSameFields() throws {
        let report = DoctorReport(checks: [.ok("redis", "reachable"), .fail("ssh.key", "/k is mode 0644", fix: "chmod 600 /k"),
                                           .warn("disk", "4.0 GiB free", fix: "free space"), .skipped("vm.worker-1", "needs VBoxManage")])
        #expect(report.render() == """
        ok    redis        reachable
        FAIL  ssh.key      /k is mode 0644  fix: chmod 600 /k
        WARN  disk         4.0 GiB free  fix: free space
        skip  vm.worker-1  needs VBoxManage
        """)
        #expect(!report.passed && report.exitCode == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(report.json().utf8)) as? [String: Any])
        #expect(object["ok"] as? Bool == false)
        let checks = try #require(object["checks"] as? [[String: Any]])
        #expect(checks.count == 4)
        #expect(checks[1]["name"] as? String == "ssh.key" && checks[1]["status"] as? String == "fail" && checks[1]["fix"] as? String == "chmod 600 /k")
        #expect(checks[0]["fix"] == nil)
        #expect(DoctorReport(checks: [.ok("a", "b"), .warn("c", "d", fix: nil), .skipped("e", "f")]).passed, "warn and skip do not block")
    }

    @Test func aMissingProgramFailsWithTheLocatorsLineAndItsRemedy() async throws {
        let host = Self.healthyHost { $0.programs["VBoxManage"] = nil }
        let report = await Self.run(Self.config(), host)
        #expect(!report.passed)
        let check = try Self.check(report, "vboxmanage")
        #expect(check.status == .fail)
        #expect(check.detail == "VBoxManage not found on PATH (/usr/bin:/bin)")
        #expect(check.fix == "install VirtualBox or set virtualbox.vboxmanage")
        #expect(try Self.check(report, "vm.worker-1").status == .skipped, "no VBoxManage call without VBoxManage")
        #expect(!host.state.withLock { $0.commands }.contains { $0.hasPrefix("VBoxManage") })
    }

    @Test func aProgramThatCannotSayItsVersionFails() async throws {
        let host = Self.healthyHost { $0.outputs["VBoxManage --version"] = nil }
        let check = try Self.check(await Self.run(Self.config(), host), "vboxmanage")
        #expect(check.status == .fail)
        #expect(check.detail.hasPrefix("/usr/bin/VBoxManage --version failed"), "\(check.detail)")
    }

    @Test func vagrantIsCheckedOnlyWhenTheVagrantDirectoryHasAVagrantfileAndMissingItOnlyWarns() async throws {
        let config = Self.config { $0.vagrant.directory = "/srv/tworker/boxes" }
        let notNeeded = try Self.check(await Self.run(config, Self.healthyHost { $0.programs["vagrant"] = nil }), "vagrant")
        #expect(notNeeded.status == .ok && notNeeded.detail.hasPrefix("not needed"), "\(notNeeded)")

        let host = Self.healthyHost { state in
            state.programs["vagrant"] = nil
            state.files["/srv/tworker/boxes/Vagrantfile"] = FileFacts(uid: 0, gid: 0, mode: 0o644, isDirectory: false)
        }
        let report = await Self.run(config, host)
        let missing = try Self.check(report, "vagrant")
        #expect(missing.status == .warn && missing.fix == "install Vagrant or set vagrant.vagrant", "\(missing)")
        #expect(report.passed, "jobs run without vagrant")
    }

    @Test(arguments: [(mode_t(0o644), "group/world readable"), (mode_t(0o640), "group/world readable"), (mode_t(0o604), "group/world readable")])
    func aKeyOthersCanReadFailsWithChmod600(mode: mode_t, words: String) async throws {
        let host = Self.healthyHost { $0.files["/home/travis/.ssh/id_ed25519"]?.mode = mode }
        let check = try Self.check(await Self.run(Self.config(), host), "ssh.key")
        #expect(check.status == .fail)
        #expect(check.detail.contains(words) && check.detail.contains(DoctorTestsSupport.octal(mode)), "\(check.detail)")
        #expect(check.fix == "chmod 600 /home/travis/.ssh/id_ed25519")
    }

    @Test func aKeyThatIsMissingOrSomeoneElsesFailsAndNoKeySettingWarns() async throws {
        let missing = try Self.check(await Self.run(Self.config(), Self.healthyHost { $0.files["/home/travis/.ssh/id_ed25519"] = nil }), "ssh.key")
        #expect(missing.status == .fail && missing.detail.contains("does not exist"))

        let foreign = try Self.check(await Self.run(Self.config(), Self.healthyHost { $0.files["/home/travis/.ssh/id_ed25519"]?.uid = 1001 }), "ssh.key")
        #expect(foreign.status == .fail && foreign.fix == "chown 1000 /home/travis/.ssh/id_ed25519", "\(foreign)")

        let unset = try Self.check(await Self.run(Self.config { $0.ssh.key = nil }, Self.healthyHost()), "ssh.key")
        #expect(unset.status == .warn)

        let local = await Self.run(Self.config(.local), Self.healthyHost { $0.programs["bash"] = "/bin/bash" })
        #expect(!local.checks.contains { $0.name == "ssh.key" || $0.name.hasPrefix("vm.") || $0.name.hasPrefix("port.") || $0.name == "vboxmanage" },
                "the local provider needs neither VMs nor keys: \(local.render())")
        #expect(try Self.check(local, "bash").detail == "/bin/bash")
        #expect(local.passed, "\(local.render())")
    }

    @Test func redisDownFailsAndAReplicaFails() async throws {
        let down = Self.healthyHost { $0.redis = .failure(RedisError.connectionFailed("Connection refused")) }
        let failed = try Self.check(await Self.run(Self.config(), down), "redis")
        #expect(failed.status == .fail)
        #expect(failed.detail.hasPrefix("redis://127.0.0.1:6379/0 unreachable: "), "\(failed.detail)")
        #expect(failed.fix?.contains("redis.url") == true)

        let replica = Self.healthyHost { $0.redis = .success(RedisFacts(role: "slave", version: "7.0.15")) }
        let check = try Self.check(await Self.run(Self.config(), replica), "redis")
        #expect(check.status == .fail && check.detail.contains("role slave") && check.fix == "point redis.url at the master")
    }

    @Test func withSentinelsDoctorAsksTheMasterTheyName() async throws {
        let config = Self.config {
            $0.redis.url = "embedded"
            $0.redis.sentinels = ["127.0.0.1:26379", "127.0.0.1:26380"]
            $0.redis.masterName = "tworker"
        }
        let ok = try Self.check(await Self.run(config, Self.healthyHost()), "redis")
        #expect(ok.status == .ok)
        #expect(ok.detail == "sentinel://127.0.0.1:26379,127.0.0.1:26380/tworker/0 reachable (role master, 7.0.15)", "\(ok.detail)")
        let down = try Self.check(await Self.run(config, Self.healthyHost { $0.redis = .failure(RedisError.connectionFailed("no sentinel led to master 'tworker'")) }), "redis")
        #expect(down.status == .fail)
        #expect(down.fix == "start that redis-server, or correct redis.sentinels and redis.master_name")
    }

    @Test func embeddedRedisNotRunningIsFineWhenRedisServerIsThere() async throws {
        let config = Self.config { $0.redis.url = "embedded" }
        let ok = try Self.check(await Self.run(config, Self.healthyHost()), "redis")
        #expect(ok.status == .ok && ok.detail.contains("/usr/bin/redis-server") && ok.detail.contains("\(Self.stateDir)/redis/redis.sock"), "\(ok)")

        let missing = try Self.check(await Self.run(config, Self.healthyHost { $0.programs["redis-server"] = nil }), "redis")
        #expect(missing.status == .fail && missing.fix == Program.redisServer.remedy)

        let socket = "\(Self.stateDir)/redis/redis.sock"
        let running = try Self.check(await Self.run(config, Self.healthyHost { $0.files[socket] = FileFacts(uid: 0, gid: 0, mode: 0o770, isDirectory: false) }), "redis")
        #expect(running.detail == "embedded redis-server at \(socket) reachable (role master, 7.0.15)")

        let closed = try Self.check(await Self.run(config, Self.healthyHost { state in
            state.files[socket] = FileFacts(uid: 0, gid: 0, mode: 0o770, isDirectory: false)
            state.unwritable = [socket]
            state.redis = .failure(.connectionFailed("Permission denied"))
        }), "redis")
        #expect(closed.status == .warn && closed.fix == "run doctor as root (or as the build user)", "not the server's fault: \(closed)")
    }

    @Test func aWorkerVMMissingOrWithoutItsSnapshotFails() async throws {
        let host = Self.healthyHost { state in
            state.outputs["VBoxManage showvminfo tw-worker-1 --machinereadable"] = Self.vmInfo("tw-worker-1", port: 2221, snapshot: false)
            state.outputs["VBoxManage showvminfo tw-worker-2 --machinereadable"] = nil
        }
        let report = await Self.run(Self.config(), host)
        let first = try Self.check(report, "vm.worker-1")
        #expect(first.status == .fail && first.detail == "tw-worker-1 (poweroff) has no snapshot sandbox", "\(first)")
        #expect(first.fix == "tworker vms remove worker-1 --yes && tworker vms import")
        let second = try Self.check(report, "vm.worker-2")
        #expect(second.status == .fail && second.detail == "tw-worker-2 does not exist" && second.fix == "tworker vms import", "\(second)")
    }

    @Test func aPortTakenByAnotherProcessFailsButOurRunningVMsPortIsOk() async throws {
        let host = Self.healthyHost { state in
            state.takenPorts = [2221, 2222]
            state.outputs["VBoxManage showvminfo tw-worker-1 --machinereadable"] = Self.vmInfo("tw-worker-1", state: "running", port: 2221)
        }
        let report = await Self.run(Self.config(), host)
        let ours = try Self.check(report, "port.worker-1")
        #expect(ours.status == .ok && ours.detail == "127.0.0.1:2221 held by tw-worker-1 (running)", "\(ours)")
        let theirs = try Self.check(report, "port.worker-2")
        #expect(theirs.status == .fail && theirs.detail.hasPrefix("127.0.0.1:2222 is in use by another process"), "\(theirs)")
        #expect(theirs.fix?.contains("ssh.port_base") == true)
    }

    @Test func aVMForwardingAnotherPortThanItsWorkerNumberFails() async throws {
        let host = Self.healthyHost { $0.outputs["VBoxManage showvminfo tw-worker-2 --machinereadable"] = Self.vmInfo("tw-worker-2", port: 3333) }
        let check = try Self.check(await Self.run(Self.config(), host), "port.worker-2")
        #expect(check.status == .fail && check.detail == "tw-worker-2 forwards 3333, not 2222 (ssh.port_base + 2)", "\(check)")
    }

    @Test func aMissingBaseBoxOnlyWarns() async throws {
        let report = await Self.run(Self.config(), Self.healthyHost { $0.files["/srv/tworker/boxes/base.box"] = nil })
        let check = try Self.check(report, "base")
        #expect(check.status == .warn && check.detail.contains("/srv/tworker/boxes/base.box does not exist"), "\(check)")
        #expect(report.passed, "the worker VMs exist: jobs run without the box")
    }

    @Test func diskThresholds() async throws {
        for (available, status) in [(UInt64(512) << 20, DoctorCheck.Status.fail), (UInt64(3) << 30, .warn), (UInt64(6) << 30, .ok)] {
            let check = try Self.check(await Self.run(Self.config(), Self.healthyHost { $0.space = (available, 100 << 30) }), "disk")
            #expect(check.status == status, "\(available): \(check)")
        }
        let measured = try Self.check(await Self.run(Self.config(), Self.healthyHost { state in
            state.files[Self.stateDir] = nil
            state.files["/srv/tworker"] = FileFacts(uid: 0, gid: 0, mode: 0o755, isDirectory: true)
        }), "disk")
        #expect(measured.detail.contains("under /srv/tworker (state_dir \(Self.stateDir) not made yet)"), "\(measured.detail)")
    }

    @Test func qemuNeedsItsProgramsItsBaseImageAndAnAccelerator() async throws {
        let config = Self.config(.qemu) { $0.vms.baseImage = "/srv/tworker/boxes/base.qcow2"; $0.vms.count = 1 }
        let host = FakeDoctorHost { state in
            state.programs = ["qemu-system-x86_64": "/usr/bin/qemu-system-x86_64", "qemu-img": "/usr/bin/qemu-img", "ssh": "/usr/bin/ssh"]
            state.outputs = ["qemu-system --version": "QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)\n",
                             "qemu-img --version": "qemu-img version 7.2.15\n", "ssh -V": "OpenSSH_9.2p1\n"]
            state.files = ["/home/travis/.ssh/id_ed25519": FileFacts(uid: 1000, gid: 1000, mode: 0o600, isDirectory: false)]
        }
        let report = await Self.run(config, host)
        #expect(try Self.check(report, "qemu").detail == "/usr/bin/qemu-system-x86_64 (QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12))")
        #expect(try Self.check(report, "qemu-img").detail == "/usr/bin/qemu-img (qemu-img version 7.2.15)")
        #expect(try Self.check(report, "accel").status == .warn, "auto without KVM: tcg, slow but running")
        #expect(try Self.check(report, "base").status == .fail, "no base image file")
        let vm = try Self.check(report, "vm.worker-1")
        #expect(vm.status == .fail && vm.fix == "tworker vms import", "\(vm)")
        #expect(!report.checks.contains { $0.name == "vboxmanage" })
        #expect(try Self.check(report, "port.worker-1").status == .ok)
        host.update { $0.takenPorts = [2221] }
        let taken = try Self.check(await Self.run(config, host), "port.worker-1")
        #expect(taken.status == .fail && taken.detail.hasPrefix("127.0.0.1:2221 is in use by another process"), "no qemu of ours runs: \(taken)")
        host.update { $0.takenPorts = [] }

        let kvmConfig = Self.config(.qemu) { $0.qemu.accel = .kvm }
        #expect(try Self.check(await Self.run(kvmConfig, host), "accel").status == .fail)
        host.update { $0.kvm = true }
        #expect(try Self.check(await Self.run(kvmConfig, host), "accel").status == .ok)
    }

    @Test func aBrokenConfigFailsWithItsFileLineMessageAndSkipsTheRest() {
        let report = Doctor.brokenConfig(ConfigError(problems: ["config/worker.yml:3: timeouts.script: must be between 1 and 86400, got 0"]))
        #expect(!report.passed)
        #expect(report.checks.first == .fail("config", "config/worker.yml:3: timeouts.script: must be between 1 and 86400, got 0",
                                            fix: "correct that value (`tworker config` prints every effective value and its origin)"))
        #expect(report.checks.dropFirst().allSatisfy { $0.status == .skipped }, "\(report.render())")
    }

    @Test func aRootDoctorWithoutAUserFailsAsTheMasterWould() async throws {
        let report = await Self.run(Self.config(), Self.healthyHost { $0.euid = 0 })
        let check = try Self.check(report, "user")
        #expect(check.status == .fail && check.detail.hasPrefix("refusing to run workers as root"), "\(check)")
        let missing = try Self.check(await Self.run(Self.config { $0.user = "tworker-no-such-user-x" }, Self.healthyHost { $0.euid = 0 }), "user")
        #expect(missing.status == .fail && missing.detail == "user 'tworker-no-such-user-x' does not exist on this machine")
        #expect(missing.fix?.contains("tworker setup") == true)
        #expect(try Self.check(report, "master").status == .ok)
    }

    @Test func accessFollowsTheOwnerGroupOtherClassAndEveryDirectoryOnTheWay() {
        let account = WorkerAccount(user: "travis", uid: 1000, gid: 1000, groups: [1000, 27])
        #expect(Doctor.allows(FileFacts(uid: 1000, gid: 0, mode: 0o700, isDirectory: true), account: account, 0o5))
        #expect(!Doctor.allows(FileFacts(uid: 0, gid: 1000, mode: 0o700, isDirectory: true), account: account, 0o1))
        #expect(Doctor.allows(FileFacts(uid: 0, gid: 27, mode: 0o750, isDirectory: true), account: account, 0o5))
        #expect(!Doctor.allows(FileFacts(uid: 0, gid: 27, mode: 0o705, isDirectory: true), account: account, 0o5),
                "the group class decides for a group member, not other")
        #expect(Doctor.allows(FileFacts(uid: 0, gid: 0, mode: 0o755, isDirectory: true), account: account, 0o5))
        let files: [String: FileFacts] = [
            "/srv": FileFacts(uid: 0, gid: 0, mode: 0o755, isDirectory: true),
            "/srv/private": FileFacts(uid: 0, gid: 0, mode: 0o700, isDirectory: true),
        ]
        #expect(Doctor.blockedDirectory(on: "/srv/private/var", account: account, file: { files[$0] }) == "/srv/private")
        #expect(Doctor.blockedDirectory(on: "/srv/var", account: account, file: { files[$0] }) == nil)
        #expect(Doctor.blockedDirectory(on: "/srv/new/deeper/var", account: account, file: { files[$0] }) == nil, "made later by tworker")
    }

    @Test func aMasterRunningIsInformational() async throws {
        let report = await Self.run(Self.config(), Self.healthyHost { $0.master = 4242 })
        let check = try Self.check(report, "master")
        #expect(check.status == .ok && check.detail.hasPrefix("running (pid 4242"))
    }
}

enum DoctorTestsSupport {
    static func octal(_ mode: mode_t) -> String { "0" + String(mode, radix: 8) }
}

@Suite struct HostSetupTests {
    final class RecordingRunner: ProgramRunning {
        let commands = Mutex<[ProgramCommand]>([])
        func run(_ command: ProgramCommand) async throws -> ProgramOutput {
            commands.withLock { $0.append(command) }
            return ProgramOutput()
        }
    }

    struct Accounts: AccountLookup {
        var users: [String: (uid_t, gid_t)] = [:]
        var groups: [String: gid_t] = [:]
        func user(_ name: String) -> (uid: uid_t, gid: gid_t)? { users[name].map { (uid: $0.0, gid: $0.1) } }
        func group(_ name: String) -> gid_t? { groups[name] }
    }

    /// A PATH of one temp directory holding executables named `programs`.
    static func withPath(_ programs: [String], _ body: (String) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tworker-setup-path-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for program in programs {
            try "#!/bin/sh\nexit 0\n".write(toFile: directory + "/" + program, atomically: true, encoding: .utf8)
            chmod(directory + "/" + program, 0o755)
        }
        try await body(directory)
    }

    @Test func missingGroupAndUserAreMadeWithTypedCommandsAndExistingOnesAreLeftAlone() async throws {
        try await Self.withPath(["bash"]) { bin in
            let locator = ProgramLocator(searchPath: bin)
            let shell = bin + "/bash"
            let runner = RecordingRunner()
            let steps = try await HostSetup(runner: runner, accounts: Accounts(), locator: locator).account(user: "travis", group: "builders")
            #expect(steps.map(\.changed) == [true, true])
            #expect(runner.commands.withLock { $0 } == [.groupadd("builders"), .useradd("travis", group: "builders", shell: shell)])
            #expect(runner.commands.withLock { $0 }.map { "\($0)" } == ["groupadd --system builders",
                                                                         "useradd --create-home --shell \(shell) --gid builders travis"],
                    "the login shell is the bash found on PATH")

            let again = RecordingRunner()
            let unchanged = try await HostSetup(runner: again, accounts: Accounts(users: ["travis": (1000, 1000)], groups: ["builders": 1001]),
                                                locator: locator)
                .account(user: "travis", group: "builders")
            #expect(unchanged.map(\.changed) == [false, false])
            #expect(again.commands.withLock { $0 }.isEmpty)

            let ownGroup = RecordingRunner()
            _ = try await HostSetup(runner: ownGroup, accounts: Accounts(), locator: locator).account(user: "travis", group: nil)
            #expect(ownGroup.commands.withLock { $0 }.map { "\($0)" } == ["useradd --create-home --shell \(shell) --user-group travis"])
            let groupExists = RecordingRunner()
            _ = try await HostSetup(runner: groupExists, accounts: Accounts(groups: ["travis": 1000]), locator: locator)
                .account(user: "travis", group: nil)
            #expect(groupExists.commands.withLock { $0 }.map { "\($0)" } == ["useradd --create-home --shell \(shell) --gid travis travis"],
                    "useradd --user-group refuses when the group exists")

            let none = RecordingRunner()
            let skipped = try await HostSetup(runner: none, accounts: Accounts(), locator: locator).account(user: nil, group: nil)
            #expect(skipped.map(\.changed) == [false] && none.commands.withLock { $0 }.isEmpty)
        }
    }

    @Test func theUseraddShellIsWhateverBashPATHFinds() {
        #expect(ProgramCommand.useradd("travis", group: nil, shell: "/usr/local/bin/bash").arguments
                == ["--create-home", "--shell", "/usr/local/bin/bash", "--user-group", "travis"])
        #expect(ProgramCommand.useradd("travis", group: "ci", shell: "/bin/bash").arguments
                == ["--create-home", "--shell", "/bin/bash", "--gid", "ci", "travis"])
    }

    @Test func withoutBashOnPATHNoUserIsMadeAndTheStepSaysWhy() async throws {
        try await Self.withPath(["groupadd"]) { bin in
            let runner = RecordingRunner()
            let error = await #expect(throws: HostSetup.Failure.self) {
                try await HostSetup(runner: runner, accounts: Accounts(), locator: ProgramLocator(searchPath: bin)).account(user: "travis", group: nil)
            }
            #expect(error?.step == "user")
            #expect(error?.description == "bash not found on PATH (\(bin)); install bash")
            #expect(runner.commands.withLock { $0 }.isEmpty, "useradd never ran")
        }
    }

    @Test func everyMissingProgramOfTheStepsIsNamedInOrder() async throws {
        try await Self.withPath(["useradd"]) { bin in
            let setup = HostSetup(runner: RecordingRunner(), accounts: Accounts(), locator: ProgramLocator(searchPath: bin))
            #expect(setup.missingPrograms().map(\.description) == [
                "groupadd not found on PATH (\(bin)); install passwd (useradd, groupadd)",
                "ssh-keygen not found on PATH (\(bin)); install the ssh client (openssh-client)",
                "bash not found on PATH (\(bin)); install bash",
            ])
        }
        try await Self.withPath(["groupadd", "useradd", "ssh-keygen", "bash"]) { bin in
            #expect(HostSetup(runner: RecordingRunner(), accounts: Accounts(), locator: ProgramLocator(searchPath: bin)).missingPrograms().isEmpty)
        }
    }

    @Test func aMissingKeyIsGeneratedAndAnOpenOneIsClosed() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tworker-setup-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let key = directory + "/ssh/id_ed25519"
        let runner = RecordingRunner()
        // The recording runner writes nothing: the generated key is then missing, which fails clearly.
        await #expect(throws: HostSetup.Failure.self) { try await HostSetup(runner: runner, accounts: Accounts()).sshKey(key, user: nil) }
        #expect(runner.commands.withLock { $0 }.map { "\($0)" } == ["ssh-keygen -q -t ed25519 -N  -C tworker@\(currentHostname()) -f \(key)"])
        var info = stat()
        #expect(stat(directory + "/ssh", &info) == 0 && info.st_mode & 0o777 == 0o700, "the key's directory is made private")

        try "secret".write(toFile: key, atomically: true, encoding: .utf8)
        chmod(key, 0o644)
        let closed = try await HostSetup(runner: runner, accounts: Accounts()).sshKey(key, user: nil)
        #expect(closed.changed && closed.detail.contains("mode 0600"))
        #expect(stat(key, &info) == 0 && info.st_mode & 0o777 == 0o600)
        let again = try await HostSetup(runner: runner, accounts: Accounts()).sshKey(key, user: nil)
        #expect(!again.changed, "\(again)")
    }

    @Test func configAndBinaryAreCopiedOnceThenLeftAlone() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tworker-setup-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory + "/config", withIntermediateDirectories: true)
        try "# example\n".write(toFile: directory + "/config/worker.example.yml", atomically: true, encoding: .utf8)
        let setup = HostSetup(runner: RecordingRunner(), accounts: Accounts())
        #expect(try setup.configFile(configDir: directory + "/config").changed)
        #expect(FileManager.default.contents(atPath: directory + "/config/worker.yml") == Data("# example\n".utf8))
        try "edited: true\n".write(toFile: directory + "/config/worker.yml", atomically: true, encoding: .utf8)
        #expect(try !setup.configFile(configDir: directory + "/config").changed)
        #expect(FileManager.default.contents(atPath: directory + "/config/worker.yml") == Data("edited: true\n".utf8), "never overwritten")

        try "binary-1".write(toFile: directory + "/built", atomically: true, encoding: .utf8)
        #expect(try setup.binary(from: directory + "/built", to: directory + "/prefix/bin/tworker").changed)
        #expect(try !setup.binary(from: directory + "/built", to: directory + "/prefix/bin/tworker").changed)
        try "binary-2".write(toFile: directory + "/built", atomically: true, encoding: .utf8)
        #expect(try setup.binary(from: directory + "/built", to: directory + "/prefix/bin/tworker").changed, "a new build replaces it")
        var info = stat()
        #expect(stat(directory + "/prefix/bin/tworker", &info) == 0 && info.st_mode & 0o777 == 0o755)
    }
}

@Suite struct DoctorAccountTests {
    /// A root doctor for a config with a real account: root's own entry stands in (uid 0 passes everything), so
    /// this uses `nobody`, which exists on every Debian host.
    static func config(_ change: (inout WorkerConfig) -> Void = { _ in }) -> WorkerConfig {
        DoctorTests.config(.local) { config in
            config.user = "nobody"
            config.redis.url = "embedded"
            change(&config)
        }
    }

    static func host(_ change: (inout FakeDoctorHost.State) -> Void = { _ in }) -> FakeDoctorHost {
        FakeDoctorHost { state in
            state.euid = 0
            state.programs = ["bash": "/bin/bash", "redis-server": "/usr/bin/redis-server"]
            state.files = [
                "/srv": FileFacts(uid: 0, gid: 0, mode: 0o755, isDirectory: true),
                "/srv/tworker": FileFacts(uid: 0, gid: 0, mode: 0o755, isDirectory: true),
            ]
            change(&state)
        }
    }

    @Test func aDirectoryAboveStateDirClosedToTheBuildUserFailsWithChmod() async throws {
        let report = await DoctorTests.run(Self.config(), Self.host { $0.files["/srv/tworker"]?.mode = 0o700 })
        let stateDir = try DoctorTests.check(report, "state_dir")
        #expect(stateDir.status == .fail && stateDir.fix == "chmod o+x /srv/tworker, or move state_dir", "\(stateDir)")
        #expect(try DoctorTests.check(report, "user").status == .ok)
    }

    @Test func aStateDirTheMasterHasNotOpenedYetOnlyWarnsAndTheSocketFollowsTheMaster() async throws {
        let socket = DoctorTests.stateDir + "/redis/redis.sock"
        let host = Self.host { state in
            state.files[DoctorTests.stateDir] = FileFacts(uid: 0, gid: 0, mode: 0o700, isDirectory: true)
            state.files[DoctorTests.stateDir + "/redis"] = FileFacts(uid: 0, gid: 0, mode: 0o700, isDirectory: true)
            state.files[socket] = FileFacts(uid: 0, gid: 0, mode: 0o700, isDirectory: false)
        }
        let report = await DoctorTests.run(Self.config(), host)
        #expect(try DoctorTests.check(report, "state_dir").status == .warn, "tworker start as root opens it")
        #expect(try DoctorTests.check(report, "redis.socket").status == .warn)
        host.update { $0.master = 99 }
        let running = await DoctorTests.run(Self.config(), host)
        let socketCheck = try DoctorTests.check(running, "redis.socket")
        #expect(socketCheck.status == .fail && socketCheck.fix?.contains("tworker restart") == true, "a running master should have opened it: \(socketCheck)")

        let nobody = try #require(getpwnam("nobody")?.pointee)
        host.update { state in
            state.files[DoctorTests.stateDir] = FileFacts(uid: 0, gid: nobody.pw_gid, mode: 0o750, isDirectory: true)
            state.files[DoctorTests.stateDir + "/redis"] = FileFacts(uid: 0, gid: nobody.pw_gid, mode: 0o750, isDirectory: true)
            state.files[socket] = FileFacts(uid: 0, gid: nobody.pw_gid, mode: 0o770, isDirectory: false)
        }
        let opened = await DoctorTests.run(Self.config(), host)
        #expect(try DoctorTests.check(opened, "state_dir").status == .ok)
        #expect(try DoctorTests.check(opened, "redis.socket").status == .ok)
    }
}
