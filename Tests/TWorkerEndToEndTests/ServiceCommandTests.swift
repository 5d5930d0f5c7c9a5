import Foundation
import Testing
import TWorkerTestSupport

/// `tworker service install`, run as the built binary against a throwaway config dir.
@Suite(.tags(.endToEnd))
struct ServiceCommandTests {
    /// A temp dir holding `config/worker.test.yml`; the CLI runs with it as current directory.
    final class Sandbox {
        let directory: TempDirectory
        var path: String { directory.path }
        var configDir: String { path + "/config" }
        let binary: String

        init() throws {
            directory = try TempDirectory(prefix: "tworker-service")
            binary = URL(fileURLWithPath: try tworkerExecutable()).resolvingSymlinksInPath().path
            try FileManager.default.createDirectory(atPath: path + "/config", withIntermediateDirectories: true)
            try "provider: local\ntimeouts:\n  hard_limit: 300\n".write(toFile: configDir + "/worker.test.yml", atomically: true, encoding: .utf8)
        }

        deinit { directory.remove() }

        /// Runs `tworker <arguments>` in the sandbox; stdout and stderr apart.
        func cli(_ arguments: [String], in directory: String? = nil) async throws -> (status: Int32, out: String, err: String) {
            let out = path + "/cli-\(UUID().uuidString).out"
            let err = out + ".err"
            let cwd = directory ?? path
            let script = "cd \"$1\" && shift && exec \"$0\" \"$@\" >\(out) 2>\(err)"
            let process = try SpawnedProcess.spawn("/bin/bash", ["-c", script, binary, cwd] + arguments,
                                                   environment: ["PATH": "/usr/bin:/bin", "HOME": path],
                                                   log: "/dev/null")
            let status = await process.waitForExit(timeout: .seconds(60)) ?? -1
            return (status, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                    (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
        }

        func mode(_ file: String) throws -> Int {
            try (FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? NSNumber)?.intValue ?? -1
        }
    }

    @Test func systemdPrintRunsThisBinaryWithThisConfig() async throws {
        let box = try Sandbox()
        let result = try await box.cli(["service", "install", "--systemd", "--print", "--env", "test", "--config-dir", "config"])
        #expect(result.status == 0, "\(result.err)")
        let lines = result.out.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.contains("ExecStart=\(box.binary) start --env test --config-dir \(box.configDir)"), "\(result.out)")
        #expect(lines.contains("WorkingDirectory=\(box.path)"))
        #expect(lines.contains("Environment=TWORKER_ENV=test"))
        #expect(lines.contains("TimeoutStopSec=360"), "hard_limit 300 + 60")
        #expect(lines.contains("KillSignal=SIGQUIT"))
        #expect(lines.contains("ExecReload=/bin/kill -HUP $MAINPID"))
        #expect(lines.contains("[Install]") && lines.contains("WantedBy=multi-user.target"))
        #expect(!result.out.contains("User="), "no --user: runs as root")
        #expect(box.binary.hasPrefix("/"))
        #expect(!FileManager.default.fileExists(atPath: box.path + "/tworker.service"), "--print writes nothing")

        let asUser = try await box.cli(["service", "install", "--systemd", "--print", "--user", "no-such-user-xyz",
                                        "--env", "test", "--config-dir", box.configDir])
        #expect(asUser.status == 0, "--print does not need the user to exist: \(asUser.err)")
        #expect(asUser.out.contains("\nUser=no-such-user-xyz\n"))
        #expect(asUser.err.isEmpty, "\(asUser.err)")
    }

    @Test func systemdUnitPassesSystemdAnalyzeVerify() async throws {
        guard let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].first(where: FileManager.default.isExecutableFile) else {
            print("ServiceCommandTests: systemd-analyze is not installed; skipping `systemd-analyze verify`")
            return
        }
        let box = try Sandbox()
        // Run from, and name, a directory whose name needs escaping in a unit: quote, space, %, $.
        let odd = box.path + "/it's 100% $HOME"
        try FileManager.default.createDirectory(atPath: odd + "/con fig", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: box.configDir + "/worker.test.yml", toPath: odd + "/con fig/worker.test.yml")
        let units = box.path + "/units"
        let result = try await box.cli(["service", "install", "--systemd", "--output-dir", units, "--user", "nobody",
                                        "--env", "test", "--config-dir", "con fig"], in: odd)
        #expect(result.status == 0, "\(result.err)")
        let unit = try String(contentsOfFile: units + "/tworker.service", encoding: .utf8)
        #expect(unit.contains("\nExecStart=\(box.binary) start --env test --config-dir \"\(box.path)/it's 100%% $$HOME/con fig\"\n"), "\(unit)")
        #expect(unit.contains("\nWorkingDirectory=\(box.path)/it's 100%% $HOME\n"), "\(unit)")
        let log = box.path + "/verify.log"
        let verify = try SpawnedProcess.spawn(analyze, ["verify", "--man=no", units + "/tworker.service"],
                                              environment: ["PATH": "/usr/bin:/bin", "SYSTEMD_LOG_LEVEL": "warning"], log: log)
        let status = await verify.waitForExit(timeout: .seconds(60))
        // Only what concerns our unit: verify also reports on the host's own units when it can see them.
        let ours = verify.output.split(separator: "\n").filter { $0.contains("tworker.service") }
        #expect(status == 0 && ours.isEmpty, "systemd-analyze verify exited \(String(describing: status)):\n\(verify.output)")
    }

    @Test func runitPrintShowsBothScripts() async throws {
        let box = try Sandbox()
        let result = try await box.cli(["service", "install", "--runit", "--print", "--user", "travis",
                                        "--env", "test", "--config-dir", box.configDir])
        #expect(result.status == 0, "\(result.err)")
        #expect(result.out.hasPrefix("# run\n#!/bin/sh\n"), "\(result.out)")
        #expect(result.out.contains("\ncd \(box.path) || exit 1\nexec chpst -u travis \(box.binary) start --env test --config-dir \(box.configDir)\n"))
        #expect(result.out.contains("\n# log/run\n#!/bin/sh\nmkdir -p /var/log/tworker\nchown travis /var/log/tworker\nexec chpst -u travis svlogd -tt /var/log/tworker\n"))
    }

    @Test func outputDirWritesRunitScriptsExecutable() async throws {
        let box = try Sandbox()
        let out = box.path + "/sv"
        let result = try await box.cli(["service", "install", "--runit", "--output-dir", out, "--env", "test", "--config-dir", box.configDir])
        #expect(result.status == 0, "\(result.err)")
        let run = out + "/tworker/run", logRun = out + "/tworker/log/run"
        #expect(try box.mode(run) == 0o755)
        #expect(try box.mode(logRun) == 0o755)
        let text = try String(contentsOfFile: run, encoding: .utf8)
        #expect(text.hasPrefix("#!/bin/sh\n"))
        #expect(text.hasSuffix("\nexec \(box.binary) start --env test --config-dir \(box.configDir)\n"), "\(text)")
        #expect(try String(contentsOfFile: logRun, encoding: .utf8).contains("\nexec svlogd -tt /var/log/tworker\n"))
        #expect(result.out.contains("Wrote \(out)/tworker/run and \(out)/tworker/log/run"), "\(result.out)")
        #expect(result.out.contains("ln -s \(out)/tworker /etc/service/"))

        // The run script is valid sh.
        let check = try SpawnedProcess.spawn("/bin/sh", ["-n", run], environment: [:], log: box.path + "/sh-n.log")
        #expect(await check.waitForExit(timeout: .seconds(10)) == 0, "\(check.output)")

        // The same again is no change.
        let again = try await box.cli(["service", "install", "--runit", "--output-dir", out, "--env", "test", "--config-dir", box.configDir])
        #expect(again.status == 0, "\(again.err)")
        #expect(again.out.contains("already up to date"), "\(again.out)")
    }

    @Test func outputDirWritesTheSystemdUnitAndSaysWhatNext() async throws {
        let box = try Sandbox()
        let out = box.path + "/system"
        let result = try await box.cli(["service", "install", "--systemd", "--output-dir", out, "--env", "test", "--config-dir", box.configDir])
        #expect(result.status == 0, "\(result.err)")
        let unit = try String(contentsOfFile: out + "/tworker.service", encoding: .utf8)
        let printed = try await box.cli(["service", "install", "--systemd", "--print", "--env", "test", "--config-dir", box.configDir])
        #expect(unit == printed.out, "the file holds exactly what --print shows")
        #expect(try box.mode(out + "/tworker.service") == 0o644)
        #expect(result.out == "Wrote \(out)/tworker.service\nNext: systemctl daemon-reload && systemctl enable --now tworker\n")
    }

    @Test func refusesToOverwriteADifferentFileWithoutForce() async throws {
        let box = try Sandbox()
        let out = box.path + "/system"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let path = out + "/tworker.service"
        try "[Service]\nExecStart=/bin/true\n".write(toFile: path, atomically: true, encoding: .utf8)
        let common = ["service", "install", "--systemd", "--output-dir", out, "--env", "test", "--config-dir", box.configDir]

        let refused = try await box.cli(common)
        #expect(refused.status == 1)
        #expect(refused.err.contains("\(path) exists and differs") && refused.err.contains("--force"), "\(refused.err)")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "[Service]\nExecStart=/bin/true\n")

        let forced = try await box.cli(common + ["--force"])
        #expect(forced.status == 0, "\(forced.err)")
        #expect(try String(contentsOfFile: path, encoding: .utf8).contains("\nExecStart=\(box.binary) start --env test"))

        // runit: nothing is written when either script differs.
        let sv = box.path + "/sv/tworker"
        try FileManager.default.createDirectory(atPath: sv + "/log", withIntermediateDirectories: true)
        try "#!/bin/sh\nexec mine\n".write(toFile: sv + "/log/run", atomically: true, encoding: .utf8)
        let runit = try await box.cli(["service", "install", "--runit", "--output-dir", box.path + "/sv", "--env", "test", "--config-dir", box.configDir])
        #expect(runit.status == 1)
        #expect(runit.err.contains("\(sv)/log/run exists and differs"), "\(runit.err)")
        #expect(!FileManager.default.fileExists(atPath: sv + "/run"))
    }

    @Test func warnsButWritesForAUserThatDoesNotExist() async throws {
        let box = try Sandbox()
        let result = try await box.cli(["service", "install", "--systemd", "--user", "no-such-user-xyz", "--output-dir", box.path + "/u",
                                        "--env", "test", "--config-dir", box.configDir])
        #expect(result.status == 0, "\(result.err)")
        #expect(result.err.contains("warning: user 'no-such-user-xyz' does not exist"), "\(result.err)")
        #expect(try String(contentsOfFile: box.path + "/u/tworker.service", encoding: .utf8).contains("\nUser=no-such-user-xyz\n"))
    }

    @Test(arguments: [
        ([String](), "--systemd or --runit"),
        (["--systemd", "--runit"], "cannot be combined"),
        (["--systemd", "--user", "Bad User"], "invalid user name"),
        (["--runit", "--user", String(repeating: "u", count: 33)], "invalid user name"),
        (["--systemd", "--print"], "--output-dir"),
    ])
    func usageErrorsExit64(_ flags: [String], _ message: String) async throws {
        let box = try Sandbox()
        // Always into the sandbox: should the check regress, nothing lands in /etc.
        let out = box.path + "/out"
        let result = try await box.cli(["service", "install"] + flags + ["--output-dir", out, "--env", "test", "--config-dir", box.configDir])
        #expect(result.status == 64, "\(result.out)\(result.err)")
        #expect(result.err.contains(message), "\(result.err)")
        #expect(result.out.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: out), "nothing is written")
    }

    @Test func anInvalidConfigExits78() async throws {
        let box = try Sandbox()
        try "provider: local\ntimeouts:\n  hard_limit: 0\n".write(toFile: box.configDir + "/worker.test.yml", atomically: true, encoding: .utf8)
        let result = try await box.cli(["service", "install", "--systemd", "--print", "--env", "test", "--config-dir", box.configDir])
        #expect(result.status == 78)
        #expect(result.err.contains("timeouts.hard_limit"), "\(result.err)")
    }
}
