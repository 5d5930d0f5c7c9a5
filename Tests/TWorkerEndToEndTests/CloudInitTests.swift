import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// `tworker host cloud-init`: its user data validated by Debian's `cloud-init schema`, and its
/// update script run for real against releases made by `scripts/release` in a temp directory.
@Suite(.tags(.endToEnd))
struct CloudInitTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], scratch: String,
                    timeout: Duration = .seconds(60)) async throws -> (status: Int32, stdout: String, stderr: String) {
        var env = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": scratch, "LC_ALL": "C.UTF-8"]
        env.merge(environment) { $1 }
        return try await FakeVirtualBox.capture(executable, arguments, environment: env, scratch: scratch, timeout: timeout)
    }

    /// The user data's `write_files` entry at `path`, read back with PyYAML (what cloud-init parses with).
    static func writtenFile(_ userData: String, _ path: String, scratch: String) async throws -> String {
        let file = scratch + "/user-data-\(UUID().uuidString.prefix(6)).yml"
        try userData.write(toFile: file, atomically: true, encoding: .utf8)
        let program = """
        import sys, yaml
        data = yaml.safe_load(open(sys.argv[1]))
        sys.stdout.write(next(f["content"] for f in data["write_files"] if f["path"] == sys.argv[2]))
        """
        let result = try await run("/usr/bin/env", ["python3", "-c", program, file, path], scratch: scratch)
        try #require(result.status == 0, "\(result.stderr)")
        return result.stdout
    }

    @Test func theUserDataIsValidCloudConfigAndCarriesTheGivenSettings() async throws {
        try await TestHost.with { host in
            try host.writeConfig("")
            let result = try await host.control(["host", "cloud-init", "--redis-url", "redis://:s3cret@10.0.0.5:6379/2", "--vms", "3",
                                                 "--release", "https://releases.example/tworker-latest-linux-x86_64.tar.gz"])
            #expect(result.status == 0, "\(result.err)")
            #expect(result.out.hasPrefix("#cloud-config\n"))
            let file = host.directory.path + "/user-data.yml"
            try result.out.write(toFile: file, atomically: true, encoding: .utf8)
            let schema = try await Self.run("/usr/bin/env", ["cloud-init", "schema", "--config-file", file], scratch: host.directory.path)
            #expect(schema.status == 0, "cloud-init schema: \(schema.stdout)\(schema.stderr)")
            #expect((schema.stdout + schema.stderr).contains("Valid cloud-config"), "\(schema.stdout)\(schema.stderr)")

            // What the VM gets, as cloud-init will read it.
            let workerYAML = try await Self.writtenFile(result.out, "/etc/tworker/worker.yml", scratch: host.directory.path)
            #expect(workerYAML.contains("url: \"redis://:s3cret@10.0.0.5:6379/2\"") && workerYAML.contains("count: 3"), "\(workerYAML)")
            let defaults = try await Self.writtenFile(result.out, "/etc/default/tworker-update", scratch: host.directory.path)
            #expect(defaults.contains("TWORKER_RELEASE='https://releases.example/tworker-latest-linux-x86_64.tar.gz'"))
            let unit = try await Self.writtenFile(result.out, "/etc/systemd/system/tworker-update.service", scratch: host.directory.path)
            #expect(unit == CloudInit.updateUnit)
            // The host's worker.yml is valid tworker config: loaded beside the test env's settings.
            let check = host.directory.path + "/config-check"
            try FileManager.default.createDirectory(atPath: check, withIntermediateDirectories: true)
            try workerYAML.write(toFile: check + "/worker.yml", atomically: true, encoding: .utf8)
            let loaded = try ConfigLoader(configDir: check, env: "production").load().config
            #expect(loaded.redis.url == "redis://:s3cret@10.0.0.5:6379/2" && loaded.vms.count == 3 && loaded.user == "tworker")

            // A host that finds its Redis through Sentinel.
            let sentinel = try await host.control(["host", "cloud-init", "--sentinel", "10.0.0.11:26379", "--sentinel", "10.0.0.12:26379",
                                                   "--master-name", "tworker", "--vms", "2", "--release", "/srv/tworker.tar.gz"])
            #expect(sentinel.status == 0, "\(sentinel.err)")
            let sentinelFile = host.directory.path + "/user-data-sentinel.yml"
            try sentinel.out.write(toFile: sentinelFile, atomically: true, encoding: .utf8)
            let sentinelSchema = try await Self.run("/usr/bin/env", ["cloud-init", "schema", "--config-file", sentinelFile], scratch: host.directory.path)
            #expect(sentinelSchema.status == 0, "cloud-init schema: \(sentinelSchema.stdout)\(sentinelSchema.stderr)")
            let sentinelYAML = try await Self.writtenFile(sentinel.out, "/etc/tworker/worker.yml", scratch: host.directory.path)
            try sentinelYAML.write(toFile: check + "/worker.yml", atomically: true, encoding: .utf8)
            let viaSentinel = try ConfigLoader(configDir: check, env: "production").load().config
            #expect(viaSentinel.redis.sentinels == ["10.0.0.11:26379", "10.0.0.12:26379"] && viaSentinel.redis.masterName == "tworker",
                    "\(sentinelYAML)")

            // A config whose Redis is shared and count set gives the defaults.
            try host.writeMasterConfig(workers: 4)
            let defaulted = try await host.control(["host", "cloud-init", "--release", "/srv/tworker.tar.gz"])
            #expect(defaulted.status == 0, "\(defaulted.err)")
            #expect(defaulted.out.contains("url: \"\(host.redisServer.url)\"") && defaulted.out.contains("count: 4"))
        }
    }

    @Test func badInputIsAClearUsageError() async throws {
        try await TestHost.with { host in
            try host.writeConfig("")
            let release = ["--release", "https://releases.example/t.tar.gz"]
            let cases: [([String], String)] = [
                (["--vms", "0"] + release, "--vms must be between 1 and 64, got 0"),
                (["--vms", "3", "--release", "ftp://releases.example/t.tar.gz"], "only http:// and https:// URLs are fetched"),
                (["--vms", "3", "--release", "tworker.tar.gz"], "neither an absolute path nor an http(s) URL"),
                (["--vms", "3", "--redis-url", "embedded"] + release, "not 'embedded'"),
                (["--vms", "3", "--redis-url", "redis://10.0.0.5:notaport"] + release, "--redis-url: "),
            ]
            for (arguments, message) in cases {
                let result = try await host.control(["host", "cloud-init"] + arguments)
                #expect(result.status == 64, "\(arguments)")
                #expect(result.err.contains(message), "\(arguments): \(result.err)")
                #expect(result.out.isEmpty, "nothing printed on bad input")
            }
            let missing = try await host.control(["host", "cloud-init", "--vms", "2"])
            #expect(missing.status == 64 && missing.err.contains("--release"), "\(missing.err)")
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func theUpdateScriptInstallsAReleaseKeepsItUntilItChangesAndFetchesOverHTTP() async throws {
        let scratch = try TempDirectory(prefix: "tworker-cloud-init")
        defer { scratch.remove() }
        let root = scratch.path
        let dist = root + "/dist"
        let made = try await Self.run(Self.packageRoot + "/scripts/release", ["--binary", try tworkerExecutable(), "--output", dist],
                                      scratch: root, timeout: .seconds(120))
        try #require(made.status == 0, "scripts/release: \(made.stderr)")
        let arch = made.stdout.trimmingCharacters(in: .whitespacesAndNewlines).components(separatedBy: "-linux-").last ?? ""
        let latest = dist + "/tworker-latest-linux-\(arch)"
        #expect(FileManager.default.fileExists(atPath: latest), "\(made.stdout)")

        // The script and defaults exactly as the user data writes them.
        let userData = try CloudInit(redisURL: "redis://10.0.0.5:6379/0", vms: 2, release: try ReleaseSource(latest)).userData
        let script = root + "/tworker-update"
        try (try await Self.writtenFile(userData, CloudInit.updateScript, scratch: root)).write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let defaults = root + "/defaults"
        try (try await Self.writtenFile(userData, CloudInit.updateDefaults, scratch: root)).write(toFile: defaults, atomically: true, encoding: .utf8)
        func update(prefix: String = root + "/opt", _ extra: [String: String] = [:]) async throws -> (status: Int32, stdout: String, stderr: String) {
            var environment = ["TWORKER_UPDATE_DEFAULTS": defaults, "TWORKER_PREFIX": prefix,
                               "TWORKER_BIN": prefix + "/bin-tworker", "TWORKER_CONFIG_DIR": prefix + "/etc"]
            environment.merge(extra) { $1 }
            return try await Self.run(script, [], environment: environment, scratch: root, timeout: .seconds(120))
        }
        let opt = root + "/opt"
        try FileManager.default.createDirectory(atPath: opt, withIntermediateDirectories: true)

        // First boot: installed, runnable, with the release's production settings.
        let first = try await update()
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stderr.contains("installed tworker \(TWorkerVersion.current) from \(latest)"), "\(first.stderr)")
        let version = try await Self.run(opt + "/bin-tworker", ["--version"], scratch: root)
        #expect(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == TWorkerVersion.current)
        #expect(FileManager.default.fileExists(atPath: opt + "/current/boxes/Vagrantfile"))
        #expect(FileManager.default.fileExists(atPath: opt + "/etc/worker.production.yml"))
        let installedTarget = try FileManager.default.destinationOfSymbolicLink(atPath: opt + "/current")

        // Next boot, same release: nothing changes.
        let again = try await update()
        #expect(again.status == 0 && again.stderr.contains("is installed already"), "\(again.stderr)")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: opt + "/current") == installedTarget)

        // A new release at the same place: installed on the next boot.
        let repack = root + "/repack"
        try FileManager.default.createDirectory(atPath: repack, withIntermediateDirectories: true)
        #expect(try await Self.run("/usr/bin/env", ["tar", "-xzf", latest, "-C", repack], scratch: root).status == 0)
        let top = try #require(try FileManager.default.contentsOfDirectory(atPath: repack).first)
        try "a newer build\n".write(toFile: "\(repack)/\(top)/NEWER", atomically: true, encoding: .utf8)
        #expect(try await Self.run("/usr/bin/env", ["tar", "-czf", latest, "-C", repack, top], scratch: root).status == 0)
        let newer = try await update()
        #expect(newer.status == 0 && newer.stderr.contains("installed tworker"), "\(newer.stderr)")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: opt + "/current") != installedTarget)
        #expect(FileManager.default.fileExists(atPath: opt + "/current/NEWER"))

        // The release gone (or the network down): the installed one is kept and tworker still starts.
        let missing = try await update(["TWORKER_RELEASE": root + "/nowhere.tar.gz"])
        #expect(missing.status == 0 && missing.stderr.contains("keeping the installed tworker"), "\(missing.stderr)")
        // Not a release: refused, the installed one kept.
        try "not a tarball".write(toFile: root + "/bogus.tar.gz", atomically: true, encoding: .utf8)
        let bogus = try await update(["TWORKER_RELEASE": root + "/bogus.tar.gz"])
        #expect(bogus.status == 0 && bogus.stderr.contains("is not a gzipped tar archive"), "\(bogus.stderr)")
        #expect(FileManager.default.fileExists(atPath: opt + "/current/NEWER"))
        // A fresh machine without any release fails, so systemd shows why tworker did not start.
        let fresh = root + "/fresh"
        try FileManager.default.createDirectory(atPath: fresh, withIntermediateDirectories: true)
        let none = try await update(prefix: fresh, ["TWORKER_RELEASE": root + "/nowhere.tar.gz"])
        #expect(none.status == 1 && none.stderr.contains("no tworker is installed"), "\(none.stderr)")

        // Over HTTP with curl, from a loopback server.
        let port = try freeLoopbackPort()
        let server = try SpawnedProcess.spawn("/usr/bin/env", ["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", dist, String(port)],
                                              environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"],
                                              log: root + "/http.log")
        defer { if !processIsGone(server.pid) { server.signal(SIGTERM) } }
        let url = "http://127.0.0.1:\(port)/tworker-latest-linux-\(arch)"
        let served = try await eventually(timeout: .seconds(10)) {
            try await Self.run("/usr/bin/env", ["curl", "-fsS", "-o", "/dev/null", url], scratch: root).status == 0
        }
        try #require(served, "python3 -m http.server never answered")
        let overHTTP = root + "/http-opt"
        try FileManager.default.createDirectory(atPath: overHTTP, withIntermediateDirectories: true)
        let fetched = try await update(prefix: overHTTP, ["TWORKER_RELEASE": url])
        #expect(fetched.status == 0 && fetched.stderr.contains("installed tworker \(TWorkerVersion.current) from \(url)"), "\(fetched.stderr)")
        #expect(FileManager.default.fileExists(atPath: overHTTP + "/current/NEWER"))
        let notFound = try await update(prefix: overHTTP, ["TWORKER_RELEASE": url + ".missing"])
        #expect(notFound.status == 0 && notFound.stderr.contains("cannot fetch"), "\(notFound.stderr)")
        server.signal(SIGTERM)
        _ = await server.waitForExit(timeout: .seconds(5))
    }
}
