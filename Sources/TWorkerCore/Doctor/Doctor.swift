import Foundation
import Logging
import RedisClient

/// `tworker doctor`: whether this host can run a master for `config`, one check per thing that
/// could stop it, each with a fix. Only what the config's provider needs is checked; a check
/// whose prerequisite failed says `skipped` rather than failing twice.
public struct Doctor: Sendable {
    public var config: WorkerConfig
    /// The config files read, for the config line.
    public var files: [String]
    public var probes: any DoctorProbing
    public var logger: Logger

    /// Free space under `state_dir` below which a check fails: a build's log, a box being
    /// unpacked or a qemu overlay growing would run the filesystem full.
    public static let diskFailBytes: UInt64 = 1 << 30
    /// Below this it warns.
    public static let diskWarnBytes: UInt64 = 5 << 30

    public init(config: WorkerConfig, files: [String], probes: any DoctorProbing = SystemDoctorProbes(),
                logger: Logger = Logger(label: "tworker.doctor")) {
        self.config = config
        self.files = files
        self.probes = probes
        self.logger = logger
    }

    /// The report for a config that did not load: one failed `config` line per problem
    /// (`file:line: key: what is wrong`), every other check skipped.
    public static func brokenConfig(_ error: ConfigError) -> DoctorReport {
        let problems = error.problems.isEmpty ? ["the configuration is invalid"] : error.problems
        let failed = problems.map { DoctorCheck.fail("config", $0, fix: "correct that value (`tworker config` prints every effective value and its origin)") }
        let skipped = ["redis", "programs", "ssh.key", "base", "vms", "disk", "user", "master"].map {
            DoctorCheck.skipped($0, "needs a valid configuration")
        }
        return DoctorReport(checks: failed + skipped)
    }

    public func run() async -> DoctorReport {
        var checks = [configCheck()]
        let account = userCheck()
        checks += await redisChecks(account: account.account)
        let programs = await programChecks()
        checks += programs.checks
        if config.provider != .local { checks.append(sshKeyCheck(account: account.account)) }
        checks += await machineChecks(located: programs.located)
        checks.append(diskCheck())
        checks.append(account.check)
        if let account = account.account { checks.append(stateDirCheck(account: account)) }
        checks.append(masterCheck())
        return DoctorReport(checks: checks)
    }

    // MARK: - Config

    func configCheck() -> DoctorCheck {
        let read = files.isEmpty ? "no config file (built-in defaults)" : files.joined(separator: ", ")
        return .ok("config", "\(read) valid (env \(config.env), provider \(config.provider.rawValue))")
    }

    // MARK: - Redis

    func redisChecks(account: WorkerAccount?) async -> [DoctorCheck] {
        guard config.redis.usesEmbedded else {
            // The endpoint every command uses: with redis.sentinels, the master they name
            // (found and ROLE-checked the same way the workers find it).
            let endpoint: RedisEndpoint
            do {
                guard let external = try RedisSetup.externalEndpoint(config) else { return [] }
                endpoint = external
            } catch {
                return [.fail("redis", "\(error)", fix: "correct redis.url (or REDIS_URL)")]
            }
            let setting = config.redis.sentinels.isEmpty ? "redis.url (or REDIS_URL)" : "redis.sentinels and redis.master_name"
            do {
                let facts = try await probes.redis(endpoint)
                return [redisRoleCheck(facts, where: endpoint.description)]
            } catch {
                return [.fail("redis", "\(endpoint.description) unreachable: \(error)",
                              fix: "start that redis-server, or correct \(setting)")]
            }
        }
        let socket = EmbeddedRedis.socketPath(stateDir: config.stateDir)
        var checks: [DoctorCheck] = []
        if probes.file(socket) != nil, !probes.canWrite(socket) {
            // The socket is the master's and its workers' group's (0770): not ours to ask.
            checks.append(.warn("redis", "cannot ask the embedded redis-server: \(socket) is closed to uid \(probes.euid)",
                                fix: "run doctor as root (or as the build user)"))
        } else if probes.file(socket) != nil {
            // A server runs (or a dead one left its socket): ask it.
            do {
                // Parsing a unix:// URL of an absolute path cannot fail.
                let facts = try await probes.redis(try RedisEndpoint(url: "unix://" + socket))
                checks.append(redisRoleCheck(facts, where: "embedded redis-server at \(socket)"))
            } catch {
                if probes.masterPID(stateDir: config.stateDir) != nil {
                    checks.append(.fail("redis", "embedded redis-server at \(socket) does not answer while a master runs: \(error)",
                                        fix: "see \(config.stateDir)/redis/redis.log; restart the master (tworker restart)"))
                } else {
                    checks.append(.warn("redis", "\(socket) is left from an embedded redis-server that no longer answers",
                                        fix: "nothing to do: tworker start replaces it"))
                }
            }
        } else {
            do {
                let path = try probes.locate(.redisServer)
                checks.append(.ok("redis", "embedded: \(path), started on \(socket) by tworker start"))
            } catch {
                checks.append(.fail("redis", "embedded, but redis-server not found on PATH (\(error.searchPath ?? error.program.name))",
                                    fix: Program.redisServer.remedy))
            }
        }
        if let account { checks.append(redisSocketCheck(socket, account: account)) }
        return checks
    }

    func redisRoleCheck(_ facts: RedisFacts, where place: String) -> DoctorCheck {
        let detail = "\(place) reachable (role \(facts.role), \(facts.version))"
        switch facts.role {
        case "master": return .ok("redis", detail)
        case "slave", "replica":
            return .fail("redis", detail + ": a replica is read-only, workers cannot write job states",
                         fix: "point redis.url at the master")
        default:
            return .fail("redis", detail + ": not a Redis master", fix: "point redis.url at the Redis master")
        }
    }

    /// The workers (another account) reach the embedded Redis through its socket: every
    /// directory on the way passable, the socket writable.
    func redisSocketCheck(_ socket: String, account: WorkerAccount) -> DoctorCheck {
        let name = "redis.socket"
        guard let facts = probes.file(socket) else {
            return .ok(name, "\(account.user) gets \(socket) (group \(account.gid), 0770) when tworker start, as root, starts the server")
        }
        let blocked = Self.blockedDirectory(on: socket, account: account, file: probes.file)
        if blocked == nil, Self.allows(facts, account: account, 0o2) {
            return .ok(name, "\(account.user) can use \(socket)")
        }
        let what = blocked.map { "\($0) (mode \(Self.octal(probes.file($0)?.mode ?? 0))) is closed to \(account.user)" }
            ?? "\(socket) (mode \(Self.octal(facts.mode)), gid \(facts.gid)) is not writable by \(account.user)"
        // The master opens up state_dir and its redis/ directory; anything above is the operator's.
        if let blocked, !(blocked + "/").hasPrefix(config.stateDir + "/") {
            return .fail(name, what, fix: "chmod o+x \(blocked), or move state_dir")
        }
        if probes.masterPID(stateDir: config.stateDir) != nil {
            return .fail(name, what, fix: "restart the master as root (tworker restart): it gives the socket to the workers' group")
        }
        return .warn(name, what, fix: "none needed if the master starts as root: it gives the socket to the workers' group")
    }

    // MARK: - Programs

    struct ProgramChecks {
        var checks: [DoctorCheck] = []
        /// Tool names found, for the checks that run them.
        var located: Set<String> = []
    }

    func programChecks() async -> ProgramChecks {
        var result = ProgramChecks()
        func add(_ found: (check: DoctorCheck, located: Bool), tool: String) {
            result.checks.append(found.check)
            if found.located { result.located.insert(tool) }
        }
        switch config.provider {
        case .local:
            add(await program("bash", .bash(), versionFlag: nil), tool: "bash")
        case .virtualbox:
            add(await program("vboxmanage", .vboxmanage(config.virtualbox.vboxmanage), tool: "VBoxManage"), tool: "VBoxManage")
            let vagrantfile = (config.vagrant.directory as NSString).appendingPathComponent("Vagrantfile")
            if probes.file(vagrantfile) != nil {
                add(await program("vagrant", .vagrant(config.vagrant.vagrant), tool: "vagrant", missing: .warn,
                                  needed: "needed by `tworker vms rebuild --provision` (\(vagrantfile))"), tool: "vagrant")
            } else {
                result.checks.append(.ok("vagrant", "not needed: no Vagrantfile in \(config.vagrant.directory) (vagrant only builds boxes)"))
            }
            add(await program("ssh", .ssh, versionFlag: "-V"), tool: "ssh")
        case .qemu:
            add(await program("qemu", .qemuSystem(config.qemu.binary), tool: "qemu-system"), tool: "qemu-system")
            add(await program("qemu-img", .qemuImg(config.qemu.img), tool: "qemu-img"), tool: "qemu-img")
            result.checks.append(acceleratorCheck())
            add(await program("ssh", .ssh, versionFlag: "-V"), tool: "ssh")
        }
        for (key, path) in [("hooks.before_job", config.hooks.beforeJob), ("hooks.after_job", config.hooks.afterJob)] {
            guard let path else { continue }
            add(await program(key, .hook(path, key: key), versionFlag: nil), tool: key)
        }
        return result
    }

    /// Where `program` is and, with `versionFlag`, the version it reports; a program that is
    /// there but cannot say its version cannot do its job either.
    func program(_ name: String, _ program: Program, tool: String? = nil, versionFlag: String? = "--version",
                 missing: DoctorCheck.Status = .fail, needed: String? = nil) async -> (check: DoctorCheck, located: Bool) {
        let path: String
        do {
            path = try probes.locate(program)
        } catch {
            let place = error.searchPath.map { "not found on PATH (\($0))" } ?? "not found or not executable"
            return (DoctorCheck(name, missing, "\(program.name) \(place)" + (needed.map { "; \($0)" } ?? ""), fix: program.remedy), false)
        }
        guard let versionFlag else { return (.ok(name, path), true) }
        do {
            let output = try await probes.run(.version(of: program, tool: tool, flag: versionFlag))
            let version = (output.stdout + "\n" + output.stderr).split(whereSeparator: \.isNewline)
                .map { $0.trimmingCharacters(in: .whitespaces) }.first { !$0.isEmpty } ?? "no version printed"
            return (.ok(name, "\(path) (\(version))"), true)
        } catch {
            return (DoctorCheck(name, missing, "\(path) \(versionFlag) failed: \(error)",
                                fix: "reinstall it (\(program.remedy)); `\(path) \(versionFlag)` must work"), false)
        }
    }

    func acceleratorCheck() -> DoctorCheck {
        let kvm = probes.hardwareKVMWorks()
        switch config.qemu.accel {
        case .tcg:
            return .ok("accel", "tcg (qemu.accel)" + (kvm ? "; /dev/kvm would work: accel auto is much faster" : ""))
        case .kvm where kvm, .auto where kvm:
            return .ok("accel", "kvm (/dev/kvm works)")
        case .kvm:
            return .fail("accel", "qemu.accel is kvm but /dev/kvm does not work here (missing, no access, or no VT-x/AMD-V)",
                         fix: "load the kvm module and give the workers' account access to /dev/kvm, or set qemu.accel: tcg")
        case .auto:
            return .warn("accel", "no working /dev/kvm: VMs run under tcg (software emulation, many times slower)",
                         fix: "enable VT-x/AMD-V and load the kvm module, or set qemu.accel: tcg to accept it")
        }
    }

    // MARK: - SSH key

    func sshKeyCheck(account: WorkerAccount?) -> DoctorCheck {
        let name = "ssh.key"
        guard let key = config.ssh.key else {
            return .warn(name, "ssh.key is not set: ssh offers the workers' account's default keys",
                         fix: "set ssh.key to the private key the VMs accept (tworker setup generates it when missing)")
        }
        guard let facts = probes.file(key), !facts.isDirectory else {
            return .fail(name, "\(key) does not exist", fix: "tworker setup generates it, or set ssh.key to an existing private key")
        }
        if facts.mode & 0o077 != 0 {
            return .fail(name, "\(key) is mode \(Self.octal(facts.mode)): group/world readable, ssh refuses it", fix: "chmod 600 \(key)")
        }
        let uid = account?.uid ?? probes.euid
        let user = account?.user ?? String(uid)
        if uid != 0, facts.uid != uid {
            return .fail(name, "\(key) is owned by uid \(facts.uid); ssh runs as \(account?.user ?? "uid \(uid)") and cannot read it",
                         fix: "chown \(user) \(key)")
        }
        if let account, let blocked = Self.blockedDirectory(on: key, account: account, file: probes.file) {
            return .fail(name, "\(account.user) cannot reach \(key): \(blocked) is closed to it",
                         fix: "chmod o+x \(blocked) (or keep the key under the account's home)")
        }
        if !Self.allows(facts, account: account ?? WorkerAccount(user: user, uid: uid, gid: getegid(), groups: []), 0o4) {
            return .fail(name, "\(key) is not readable by its owner (mode \(Self.octal(facts.mode)))", fix: "chmod 600 \(key)")
        }
        return .ok(name, "\(key) mode \(Self.octal(facts.mode)), readable by \(account?.user ?? "uid \(uid)") only")
    }

    // MARK: - Base and worker VMs

    func machineChecks(located: Set<String>) async -> [DoctorCheck] {
        switch config.provider {
        case .local:
            return []
        case .virtualbox:
            var checks = [await baseBoxCheck(vboxmanage: located.contains("VBoxManage"))]
            checks += await virtualBoxWorkerChecks(vboxmanage: located.contains("VBoxManage"))
            return checks
        case .qemu:
            return [qemuBaseCheck()] + (await qemuWorkerChecks(qemuImg: located.contains("qemu-img")))
        }
    }

    var vboxRunner: VBoxManageRunner {
        VBoxManageRunner(executable: config.virtualbox.vboxmanage, namePrefix: config.vms.namePrefix,
                         timeout: .seconds(config.timeouts.vboxmanage), logger: logger, programs: probes)
    }

    func baseBoxCheck(vboxmanage: Bool) async -> DoctorCheck {
        let box = config.vms.baseBox
        if let facts = probes.file(box), !facts.isDirectory {
            return .ok("base", "vms.base_box \(box)")
        }
        var problem = "vms.base_box \(box) does not exist"
        if !(box.contains("/") && box.hasSuffix(".box")) {
            do {
                return .ok("base", "vms.base_box: vagrant box \(try BaseBox.vagrantBox(named: box, environment: ProcessInfo.processInfo.environment))")
            } catch {
                problem = "\(error)"
            }
        }
        // The workers are linked clones of the base VM: with it (or them) there, jobs still run;
        // only a rebuild needs the box.
        let baseVM = config.vms.namePrefix + "base"
        let baseExists = vboxmanage ? ((try? await vboxRunner.info(baseVM)) ?? nil) != nil : false
        return .warn("base", problem + (baseExists ? "; the base VM \(baseVM) exists, so only a rebuild needs it" : ""),
                     fix: "build it (tworker vms rebuild --provision) or set vms.base_box to a .box file or a `vagrant box add` name")
    }

    func virtualBoxWorkerChecks(vboxmanage: Bool) async -> [DoctorCheck] {
        let numbers = Array(1...max(1, config.vms.count))
        guard vboxmanage else {
            return numbers.map { .skipped("vm.worker-\($0)", "needs VBoxManage") }
        }
        let runner = vboxRunner
        var checks: [DoctorCheck] = []
        var infos: [Int: MachineReadable] = [:]
        for number in numbers {
            let vm = config.vms.namePrefix + "worker-\(number)"
            let name = "vm.worker-\(number)"
            do {
                guard let info = try await runner.info(vm) else {
                    checks.append(.fail(name, "\(vm) does not exist", fix: "tworker vms import"))
                    continue
                }
                infos[number] = info
                let state = info.state ?? "unknown state"
                if !info.snapshotNames.contains(VirtualBoxProvider.sandboxSnapshot) {
                    checks.append(.fail(name, "\(vm) (\(state)) has no snapshot \(VirtualBoxProvider.sandboxSnapshot)",
                                        fix: "tworker vms remove worker-\(number) --yes && tworker vms import"))
                } else {
                    checks.append(.ok(name, "\(vm) \(state), snapshot \(VirtualBoxProvider.sandboxSnapshot)"))
                }
            } catch {
                checks.append(.fail(name, "\(error)", fix: "see what VBoxManage says; `VBoxManage showvminfo \(vm)`"))
            }
        }
        for number in numbers { checks.append(portCheck(number, infos: infos)) }
        return checks
    }

    /// Worker N's SSH port under VirtualBox: its VM must forward it, and it must be free or
    /// held by one of our running VMs (VirtualBox's NAT listens there while the VM runs).
    func portCheck(_ number: Int, infos: [Int: MachineReadable]) -> DoctorCheck {
        let port = config.ssh.portBase + number
        if let rules = infos[number]?.forwardingRules, !rules.isEmpty, !rules.contains(where: { $0.hostPort == port }) {
            let ports = rules.map { String($0.hostPort) }.joined(separator: ", ")
            return .fail("port.worker-\(number)", "\(config.vms.namePrefix)worker-\(number) forwards \(ports), not \(port) (ssh.port_base + \(number))",
                         fix: "set ssh.port_base back, or rebuild the VMs for the new one (tworker vms rebuild)")
        }
        let running: Set<String> = ["running", "paused", "starting", "stopping", "restoring", "saving"]
        let owner = infos.sorted { $0.key < $1.key }.first { _, info in
            running.contains(info.state ?? "") && info.forwardingRules.contains { $0.hostPort == port }
        }
        return portCheck(number, heldBy: owner.map { "\(config.vms.namePrefix)worker-\($0.key) (\($0.value.state ?? "running"))" })
    }

    /// `ssh.port_base + N`: free, or held by `owner` (our own VM); anything else takes the VM's SSH away.
    func portCheck(_ number: Int, heldBy owner: String?) -> DoctorCheck {
        let name = "port.worker-\(number)"
        let port = config.ssh.portBase + number
        let address = "\(config.ssh.host):\(port)"
        guard probes.portInUse(host: config.ssh.host, port: port) else { return .ok(name, "\(address) free") }
        if let owner { return .ok(name, "\(address) held by \(owner)") }
        return .fail(name, "\(address) is in use by another process; \(config.vms.namePrefix)worker-\(number)'s SSH forward cannot bind it",
                     fix: "stop whatever listens there (ss -ltnp 'sport = :\(port)'), or move ssh.port_base")
    }

    func qemuBaseCheck() -> DoctorCheck {
        guard let configured = config.vms.baseImage else {
            return .fail("base", "vms.base_image is not set", fix: "set vms.base_image to the qcow2 disk the worker overlays are based on")
        }
        let base = QEMUBaseImage(configured: configured, stateDir: config.stateDir)
        let current = base.current
        guard let facts = probes.file(current), !facts.isDirectory else {
            return .fail("base", "\(current) does not exist", fix: "set vms.base_image to an existing qcow2 disk (README: The qemu provider; boxes/qemu/build-test-image makes a small one)")
        }
        return .ok("base", current == configured ? "vms.base_image \(current)" : "\(current) (provisioned from \(configured))")
    }

    func qemuWorkerChecks(qemuImg: Bool) async -> [DoctorCheck] {
        let numbers = Array(1...max(1, config.vms.count))
        guard qemuImg else { return numbers.map { .skipped("vm.worker-\($0)", "needs qemu-img") } }
        let provider = QEMUProvider(config: config, logger: logger, runner: probes)
        var checks: [DoctorCheck] = []
        var ports: [DoctorCheck] = []
        for number in numbers {
            let name = "vm.worker-\(number)"
            do {
                let machine = try provider.qemuMachine(named: "worker-\(number)")
                // qemu's user network listens on the port while the VM runs.
                ports.append(portCheck(number, heldBy: machine.pid.map { "\(machine.vmName)'s qemu (pid \($0))" }))
                if try await machine.hasSandbox() {
                    checks.append(.ok(name, "\(machine.overlay), snapshot \(QEMUProvider.sandboxSnapshot)"))
                } else {
                    checks.append(.fail(name, "\(machine.overlay) missing or without snapshot \(QEMUProvider.sandboxSnapshot)",
                                        fix: "tworker vms import"))
                }
            } catch {
                checks.append(.fail(name, "\(error)", fix: "tworker vms remove worker-\(number) --yes && tworker vms import"))
            }
        }
        return checks + ports
    }

    // MARK: - Disk

    func diskCheck() -> DoctorCheck {
        // state_dir may not exist yet: measure the filesystem it will be made on.
        var path = config.stateDir
        while probes.file(path) == nil, path != "/", !path.isEmpty { path = (path as NSString).deletingLastPathComponent }
        guard let space = probes.diskSpace(path) else {
            return .warn("disk", "cannot read the free space of \(path)", fix: nil)
        }
        let measured = path == config.stateDir ? config.stateDir : "\(path) (state_dir \(config.stateDir) not made yet)"
        let detail = "\(Self.gibibytes(space.available)) free of \(Self.gibibytes(space.total)) under \(measured)"
        let fix = "free space there, or move state_dir to a larger filesystem"
        if space.available < Self.diskFailBytes {
            return .fail("disk", detail + " (below \(Self.gibibytes(Self.diskFailBytes)))", fix: fix)
        }
        if space.available < Self.diskWarnBytes {
            return .warn("disk", detail + " (below \(Self.gibibytes(Self.diskWarnBytes)))", fix: fix)
        }
        return .ok("disk", detail)
    }

    static func gibibytes(_ bytes: UInt64) -> String {
        String(format: "%.1f GiB", Double(bytes) / Double(1 << 30))
    }

    // MARK: - Build user and state_dir

    /// The master's own verdict on the account its workers run as (`WorkerAccount.resolve`).
    func userCheck() -> (check: DoctorCheck, account: WorkerAccount?) {
        let settings = SupervisorSettings(config: config)
        do {
            guard let account = try WorkerAccount.resolve(settings, euid: probes.euid) else {
                if probes.euid == 0 {
                    return (.warn("user", "workers and their builds run as root (allow_root)",
                                  fix: "set user (and group) to an unprivileged account; tworker setup creates it"), nil)
                }
                return (.ok("user", "workers run as the master's own account (uid \(probes.euid)); user is for a master started as root"), nil)
            }
            return (.ok("user", "workers run as \(account.user) (uid \(account.uid), gid \(account.gid))"), account)
        } catch {
            let fix = if error.description.contains("does not exist") {
                "tworker setup creates it (or useradd/groupadd it yourself)"
            } else if error.description.contains("only when the master runs as root") {
                "run the master, and doctor, as root (the service does)"
            } else {
                "set user (and group) to the account builds run as"
            }
            return (.fail("user", error.description, fix: fix), nil)
        }
    }

    /// The workers read `state_dir` and write what the master gives them under it: every
    /// directory on the way must let them through. `state_dir` itself the master (as root)
    /// gives to their group at start.
    func stateDirCheck(account: WorkerAccount) -> DoctorCheck {
        let name = "state_dir"
        let stateDir = config.stateDir
        if let blocked = Self.blockedDirectory(on: stateDir, account: account, file: probes.file) {
            let mode = probes.file(blocked).map { Self.octal($0.mode) } ?? "?"
            return .fail(name, "\(account.user) cannot pass through \(blocked) (mode \(mode)) to \(stateDir)",
                         fix: "chmod o+x \(blocked), or move state_dir")
        }
        guard let facts = probes.file(stateDir) else {
            return .ok(name, "\(stateDir) does not exist yet: tworker start makes it, for group \(account.gid)")
        }
        if Self.allows(facts, account: account, 0o5) {
            return .ok(name, "\(account.user) can use \(stateDir)")
        }
        let detail = "\(stateDir) (mode \(Self.octal(facts.mode)), gid \(facts.gid)) is closed to \(account.user)"
        if probes.euid == 0 {
            return .warn(name, detail, fix: "none needed: tworker start, as root, gives it to group \(account.gid) (0750)")
        }
        return .fail(name, detail, fix: "start the master as root, or chgrp \(account.gid) \(stateDir) && chmod 750 \(stateDir)")
    }

    // MARK: - Master

    func masterCheck() -> DoctorCheck {
        if let pid = probes.masterPID(stateDir: config.stateDir) {
            return .ok("master", "running (pid \(pid), \(MasterPaths(stateDir: config.stateDir).socket))")
        }
        return .ok("master", "not running")
    }

    // MARK: - Permissions

    /// Whether `account` has every one of `bits` (r 4, w 2, x 1) on a file: root has all; else
    /// the owner, group or other bits, whichever class it falls in.
    public static func allows(_ facts: FileFacts, account: WorkerAccount, _ bits: mode_t) -> Bool {
        if account.uid == 0 { return true }
        let shift: mode_t = facts.uid == account.uid ? 6 : (facts.gid == account.gid || account.groups.contains(facts.gid)) ? 3 : 0
        return (facts.mode >> shift) & bits == bits
    }

    /// The first existing directory above `path` that `account` cannot pass through (no x),
    /// nil when all let it through. Directories that do not exist yet are made by tworker.
    public static func blockedDirectory(on path: String, account: WorkerAccount, file: (String) -> FileFacts?) -> String? {
        var directory = ""
        for component in (path as NSString).deletingLastPathComponent.split(separator: "/") {
            directory += "/" + component
            guard let facts = file(directory) else { return nil }
            if !allows(facts, account: account, 0o1) { return directory }
        }
        return nil
    }

    static func octal(_ mode: mode_t) -> String {
        let text = String(mode & 0o7777, radix: 8)
        return String(repeating: "0", count: max(0, 4 - text.count)) + text
    }
}
