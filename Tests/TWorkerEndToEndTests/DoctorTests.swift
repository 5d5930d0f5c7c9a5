import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// `tworker doctor` against the real thing: the built binary, a real redis-server, the fake
/// VBoxManage and vagrant on PATH under their real names, real files and ports.
@Suite(.tags(.endToEnd), .serialized)
struct DoctorEndToEndTests {
    /// A root test run needs allow_root (or a user) for the master to start at all.
    static let rootConfig = geteuid() == 0 ? "allow_root: true\n" : ""

    /// `name status` of every human line.
    static func onPath(_ name: String) -> Bool {
        (try? ProgramLocator().locate(Program(name: name, remedy: ""))) != nil
    }

    static func lines(_ output: String) -> [(status: String, name: String, line: String)] {
        output.split(separator: "\n").map(String.init).map { line in
            let fields = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true).map(String.init)
            return (fields.first ?? "", fields.count > 1 ? fields[1] : "", line)
        }
    }

    /// The line of check `name`, its column padding collapsed to single spaces.
    static func line(_ output: String, _ name: String) -> (status: String, name: String, line: String)? {
        lines(output).first { $0.name == name }.map { ($0.status, $0.name, collapsed($0.line)) }
    }

    static func collapsed(_ text: String) -> String {
        text.replacing(#/ {2,}/#, with: " ")
    }

    @Test func aHealthyHostPassesAndEachBreakageFailsWithItsFix() async throws {
        try await PathHost.with(createVMs: true, extraConfig: Self.rootConfig) { path in
            let healthy = try await path.cli(["doctor"], path: path.pathWithFakes)
            #expect(healthy.status == 0, "\(healthy.out)\n\(healthy.err)")
            let rows = Self.lines(healthy.out)
            #expect(rows.allSatisfy { $0.status == "ok" || $0.status == "WARN" }, "\(healthy.out)")
            for name in ["config", "redis", "vboxmanage", "vagrant", "ssh", "ssh.key", "base", "vm.worker-1", "port.worker-1", "disk", "user", "master"] {
                #expect(Self.line(healthy.out, name) != nil, "no \(name) line:\n\(healthy.out)")
            }
            #expect(Self.line(healthy.out, "redis")?.line.contains(#/ok redis redis://127\.0\.0\.1:\d+/0 reachable \(role master, \d/#) == true, "\(healthy.out)")
            #expect(Self.line(healthy.out, "vboxmanage")?.line.contains(#/ok vboxmanage /\S+/VBoxManage \(\d+\.\d+/#) == true, "\(healthy.out)")
            #expect(Self.line(healthy.out, "vm.worker-1")?.line.contains("\(PathHost.prefix)worker-1 saved, snapshot sandbox") == true, "\(healthy.out)")
            #expect(Self.line(healthy.out, "master")?.line.hasSuffix("not running") == true)

            let json = try await path.cli(["doctor", "--json"], path: path.pathWithFakes)
            #expect(json.status == 0)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(json.out.utf8)) as? [String: Any], "\(json.out)")
            #expect(object["ok"] as? Bool == true)
            let checks = try #require(object["checks"] as? [[String: Any]])
            #expect(checks.count == rows.count, "the same checks as the human output")
            #expect(checks.allSatisfy { $0["name"] is String && $0["status"] is String && $0["detail"] is String }, "\(json.out)")

            // VBoxManage missing from PATH.
            let noVBox = try await path.cli(["doctor"], path: PathHost.systemPath)
            #expect(noVBox.status == 1, "\(noVBox.out)")
            #expect(Self.line(noVBox.out, "vboxmanage")?.line
                    == "FAIL vboxmanage VBoxManage not found on PATH (\(PathHost.systemPath)) fix: install VirtualBox or set virtualbox.vboxmanage",
                    "\(noVBox.out)")
            #expect(Self.line(noVBox.out, "vm.worker-1")?.status == "skip", "\(noVBox.out)")

            // The key readable by everyone.
            let key = path.fake.privateKeyPath
            chmod(key, 0o644)
            let openKey = try await path.cli(["doctor"], path: path.pathWithFakes)
            chmod(key, 0o600)
            #expect(openKey.status == 1)
            #expect(Self.line(openKey.out, "ssh.key")?.line.contains("FAIL") == true, "\(openKey.out)")
            #expect(Self.line(openKey.out, "ssh.key")?.line.hasSuffix("is mode 0644: group/world readable, ssh refuses it fix: chmod 600 \(key)") == true,
                    "\(openKey.out)")

            // Redis down (nothing listens on the URL's port).
            let deadURL = "redis://127.0.0.1:\(try freeLoopbackPort())/0"
            let noRedis = try await path.host.cli(["doctor", "--env", "test", "--config-dir", path.host.configDir],
                                                  environment: ["PATH": path.pathWithFakes, "REDIS_URL": deadURL])
            #expect(noRedis.status == 1)
            let redis = try #require(Self.line(noRedis.out, "redis"), "\(noRedis.out)")
            #expect(redis.status == "FAIL" && redis.line.contains("\(deadURL) unreachable: ") && redis.line.contains("fix: start that redis-server"),
                    "\(noRedis.out)")

            // Worker 1's SSH port taken by another process.
            let listener = try PortHolder(port: path.portBase + 1)
            let taken = try await path.cli(["doctor"], path: path.pathWithFakes)
            listener.stop()
            #expect(taken.status == 1)
            let port = try #require(Self.line(taken.out, "port.worker-1"), "\(taken.out)")
            #expect(port.status == "FAIL" && port.line.contains("127.0.0.1:\(path.portBase + 1) is in use by another process")
                    && port.line.contains("fix: stop whatever listens there"), "\(taken.out)")

            // All well again.
            let healthyAgain = try await path.cli(["doctor"], path: path.pathWithFakes)
            #expect(healthyAgain.status == 0, "\(healthyAgain.out)")
        }
    }

    @Test func aWorkerVMWithoutItsSnapshotFails() async throws {
        try await PathHost.with(createVMs: false, extraConfig: Self.rootConfig) { path in
            _ = try await path.fake.createVM(name: "\(PathHost.prefix)worker-1", port: path.portBase + 1)
            let result = try await path.cli(["doctor"], path: path.pathWithFakes)
            #expect(result.status == 1)
            let vm = try #require(Self.line(result.out, "vm.worker-1"), "\(result.out)")
            #expect(vm.line == "FAIL vm.worker-1 \(PathHost.prefix)worker-1 (poweroff) has no snapshot sandbox fix: tworker vms remove worker-1 --yes && tworker vms import",
                    "\(result.out)")
        }
    }

    /// The qemu provider's checks with the real qemu-system-x86_64 and qemu-img: a worker
    /// without its overlay fails; an overlay holding a `sandbox` snapshot passes.
    @Test(.enabled(if: Self.onPath("qemu-img") && Self.onPath("qemu-system-x86_64"), "needs qemu"))
    func qemuHostWithRealQEMUPrograms() async throws {
        let portBase = try VirtualBoxHost.freePortBase(count: 2)
        try await TestHost.with(config: Self.rootConfig) { host in
            let base = host.directory.path + "/base.qcow2"
            let made = try await WorkersAsUserTests.run("/usr/bin/env", ["qemu-img", "create", "-q", "-f", "qcow2", base, "16M"])
            try #require(made.status == 0, "\(made.output)")
            let key = host.directory.path + "/id_ed25519"
            try "not a real key: doctor reads its mode and owner\n".write(toFile: key, atomically: true, encoding: .utf8)
            chmod(key, 0o600)
            try "provider: qemu\nvms:\n  count: 1\n  base_image: \(base)\nssh:\n  key: \(key)\n  port_base: \(portBase)\nqemu:\n  accel: tcg\n"
                .write(toFile: host.configDir + "/worker.yml", atomically: true, encoding: .utf8)

            let missing = try await host.cli(["doctor", "--env", "test", "--config-dir", host.configDir])
            #expect(missing.status == 1, "\(missing.out)")
            #expect(Self.line(missing.out, "qemu")?.line.contains(#/ok qemu /\S+/qemu-system-x86_64 \(QEMU emulator version \d/#) == true, "\(missing.out)")
            #expect(Self.line(missing.out, "qemu-img")?.line.contains(#/ok qemu-img /\S+/qemu-img \(qemu-img version \d/#) == true, "\(missing.out)")
            #expect(Self.line(missing.out, "accel")?.line == "ok accel tcg (qemu.accel)" || Self.line(missing.out, "accel")?.line.hasPrefix("ok accel tcg (qemu.accel);") == true,
                    "\(missing.out)")
            #expect(Self.line(missing.out, "base")?.line == "ok base vms.base_image \(base)", "\(missing.out)")
            let overlay = host.stateDir + "/qemu/worker-1/disk.qcow2"
            #expect(Self.line(missing.out, "vm.worker-1")?.line == "FAIL vm.worker-1 \(overlay) missing or without snapshot sandbox fix: tworker vms import",
                    "\(missing.out)")
            #expect(Self.line(missing.out, "port.worker-1")?.line == "ok port.worker-1 127.0.0.1:\(portBase + 1) free", "\(missing.out)")

            try FileManager.default.createDirectory(atPath: host.stateDir + "/qemu/worker-1", withIntermediateDirectories: true)
            let overlaid = try await WorkersAsUserTests.run("/usr/bin/env", ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, overlay])
            try #require(overlaid.status == 0, "\(overlaid.output)")
            let snapshot = try await WorkersAsUserTests.run("/usr/bin/env", ["qemu-img", "snapshot", "-c", "sandbox", overlay])
            try #require(snapshot.status == 0, "\(snapshot.output)")
            let ready = try await host.cli(["doctor", "--env", "test", "--config-dir", host.configDir])
            #expect(ready.status == 0, "\(ready.out)")
            #expect(Self.line(ready.out, "vm.worker-1")?.line == "ok vm.worker-1 \(overlay), snapshot sandbox", "\(ready.out)")
        }
    }

    @Test func aBrokenConfigFailsWithFileLineAndTheRestIsSkipped() async throws {
        try await TestHost.with(config: "timeouts:\n  script: 0\n") { host in
            let result = try await host.cli(["doctor", "--env", "test", "--config-dir", host.configDir])
            #expect(result.status == 1, "doctor reports, it does not exit 78: \(result.err)")
            let first = try #require(Self.lines(result.out).first)
            #expect(Self.collapsed(first.line).hasPrefix("FAIL config \(host.configDir)/worker.test.yml:"), "\(result.out)")
            #expect(first.line.contains("timeouts.script: "), "\(result.out)")
            #expect(Self.lines(result.out).dropFirst().allSatisfy { $0.status == "skip" }, "\(result.out)")
            let json = try await host.cli(["doctor", "--json", "--env", "test", "--config-dir", host.configDir])
            #expect(json.status == 1)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(json.out.utf8)) as? [String: Any], "\(json.out)")
            #expect(object["ok"] as? Bool == false)
        }
    }
}

/// A TCP listener on 127.0.0.1 held by the test process: "another process" to tworker.
final class PortHolder {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard bound, listen(fd, 1) == 0 else {
            close(fd)
            throw TestSupportError("cannot listen on 127.0.0.1:\(port): errno \(errno)")
        }
    }

    func stop() { close(fd) }
}

/// `tworker setup` and `scripts/setup-host` for real, as root: a real account (unique name,
/// removed afterwards), its key, the binary, config and unit in temp directories.
@Suite(.tags(.endToEnd), .serialized, .enabled(if: geteuid() == 0, "needs root to create an account"))
struct SetupEndToEndTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    static func removeAccount(_ name: String) async {
        _ = try? await WorkersAsUserTests.run("/usr/sbin/userdel", ["--remove", name])
        _ = try? await WorkersAsUserTests.run("/usr/sbin/groupdel", [name])
    }

    static func modified(_ path: String) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
    }

    @Test func setupTwiceMakesTheUserKeyBinaryConfigAndUnitThenChangesNothing() async throws {
        let user = "twsetup" + String(UUID().uuidString.lowercased().prefix(6))
        do {
            try await setupTwice(user: user)
        } catch {
            await Self.removeAccount(user)
            throw error
        }
        await Self.removeAccount(user)
        #expect(getpwnam(user) == nil, "the test's account is gone again")
    }

    func setupTwice(user: String) async throws {
        try await TestHost.with(config: "user: \(user)\ngroup: \(user)\nssh:\n  key: KEYPATH\n") { host in
            // Like /var/lib: root-owned, passable by the build user.
            chmod(host.directory.path, 0o711)
            let key = host.directory.path + "/keys/id_ed25519"
            let config = try String(contentsOfFile: host.configDir + "/worker.test.yml", encoding: .utf8)
            try config.replacingOccurrences(of: "KEYPATH", with: key).write(toFile: host.configDir + "/worker.test.yml", atomically: true, encoding: .utf8)
            try FileManager.default.copyItem(atPath: Self.packageRoot + "/config/worker.example.yml", toPath: host.configDir + "/worker.example.yml")
            let prefix = host.directory.path + "/prefix"
            let units = host.directory.path + "/units"
            let arguments = ["setup", "--env", "test", "--config-dir", host.configDir, "--prefix", prefix, "--unit-dir", units]
            #expect(getpwnam(user) == nil)

            let first = try await host.cli(arguments, timeout: .seconds(120))
            await Self.check(first, "first run")
            #expect(first.status == 0, "\(first.out)\n\(first.err)")
            #expect(first.out.contains("changed group    created \(user)"), "\(first.out)")
            #expect(first.out.contains("changed user     created \(user) in group \(user)"), "\(first.out)")
            let account = try #require(getpwnam(user)?.pointee, "useradd made the account")
            #expect(account.pw_gid == getgrnam(user)?.pointee.gr_gid)
            #expect(FileManager.default.fileExists(atPath: String(cString: account.pw_dir)), "with a home")
            #expect(String(cString: account.pw_shell) == (try ProgramLocator().locate(.bash())), "the login shell is the bash on PATH")

            var info = stat()
            try #require(stat(key, &info) == 0, "\(first.out)")
            #expect(info.st_uid == account.pw_uid && info.st_gid == account.pw_gid && info.st_mode & 0o777 == 0o600,
                    "uid \(info.st_uid) mode \(String(info.st_mode & 0o777, radix: 8))")
            #expect(FileManager.default.fileExists(atPath: key + ".pub"))
            #expect(FileManager.default.contents(atPath: prefix + "/bin/tworker") == FileManager.default.contents(atPath: try tworkerExecutable()))
            #expect(FileManager.default.contents(atPath: host.configDir + "/worker.yml")
                    == FileManager.default.contents(atPath: host.configDir + "/worker.example.yml"))
            let unit = try String(contentsOfFile: units + "/tworker.service", encoding: .utf8)
            #expect(unit.contains("ExecStart=\(prefix)/bin/tworker start --env test --config-dir \(host.configDir)"), "\(unit)")
            #expect(first.out.contains("tworker doctor:"), "doctor runs at the end")
            #expect(first.out.contains("ok    user "), "\(first.out)")

            let paths = [key, key + ".pub", prefix + "/bin/tworker", host.configDir + "/worker.yml", units + "/tworker.service"]
            let before = paths.map(Self.modified)
            let second = try await host.cli(arguments, timeout: .seconds(120))
            #expect(second.status == 0, "\(second.out)\n\(second.err)")
            let steps = second.out.components(separatedBy: "\ntworker doctor:")[0].split(separator: "\n")
            #expect(!steps.isEmpty && steps.allSatisfy { $0.hasPrefix("ok ") }, "the second run changes nothing:\n\(second.out)")
            #expect(paths.map(Self.modified) == before, "no file rewritten")
            #expect(second.out.contains("tworker doctor:"))
        }
    }

    static func check(_ result: (status: Int32, out: String, err: String), _ what: String) async {
        if result.status != 0 { print("\(what):\n\(result.out)\n\(result.err)") }
    }

    @Test func setupHostSkipsInstalledPackagesAndRunsSetup() async throws {
        try await TestHost.with(config: "allow_root: true\n") { host in
            let prefix = host.directory.path + "/prefix"
            let units = host.directory.path + "/units"
            let script = Self.packageRoot + "/scripts/setup-host"
            let arguments = ["--binary", try tworkerExecutable(), "--env", "test", "--config-dir", host.configDir,
                             "--prefix", prefix, "--unit-dir", units, "--runit"]
            for run in 1...2 {
                let log = host.directory.path + "/setup-host-\(run).log"
                let process = try SpawnedProcess.spawn("/bin/bash", [script] + arguments,
                                                       environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
                                                                     "HOME": host.directory.path], log: log)
                let status = await process.waitForExit(timeout: .seconds(120))
                #expect(status == 0, "\(process.output)")
                #expect(process.output.contains("setup-host: Debian packages in place"), "installed packages are skipped: \(process.output)")
                #expect(!process.output.contains("installing"), "\(process.output)")
                #expect(process.output.contains("tworker doctor:"), "\(process.output)")
                if run == 2 { #expect(!process.output.contains("changed "), "\(process.output)") }
            }
            #expect(FileManager.default.isExecutableFile(atPath: prefix + "/bin/tworker"))
            #expect(FileManager.default.isExecutableFile(atPath: units + "/tworker/run"))
            #expect(FileManager.default.isExecutableFile(atPath: units + "/tworker/log/run"))
        }
    }
}
