import Foundation
import Testing
@testable import TWorkerCore

/// A throwaway config directory; removed when the test lets go of it.
final class TempConfigDir {
    let path: String

    init() throws {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("tworker-config-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        path = url.path
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// Full path of a file in the directory, as the loader reports it.
    func file(_ name: String) -> String { path + "/" + name }

    func write(_ name: String, _ text: String) throws {
        try text.write(toFile: file(name), atomically: true, encoding: .utf8)
    }

    func loader(env: String? = nil, environment: [String: String] = [:],
                currentDirectory: String = "/srv/worker") -> ConfigLoader {
        var loader = ConfigLoader(configDir: path, env: env, environment: environment,
                                  currentDirectory: currentDirectory)
        loader.hostname = "testhost"  // independent of the machine running the tests
        return loader
    }
}

/// The problem lines a loader reports; empty when it loads.
func configProblems(_ loader: ConfigLoader) -> [String] {
    do {
        _ = try loader.load()
        return []
    } catch {
        return error.problems
    }
}

@Suite struct ConfigTests {
    // MARK: Defaults

    @Test func noFilesGivesDefaultsEverywhere() throws {
        let dir = try TempConfigDir()
        let loaded = try dir.loader().load()
        let c = loaded.config

        #expect(loaded.files.isEmpty)
        #expect(c.env == "development")
        #expect(c.queue == "builds")
        #expect(c.provider == .local)
        #expect(c.host == "testhost")
        #expect(c.redis == .init(url: "embedded", namespace: "resque"))
        #expect(c.vms == .init(count: 1, namePrefix: "tworker-development-", memory: 1536, cpus: 1,
                               maxConsecutiveFailures: 3, maxUnavailable: 1, baseBox: c.vms.baseBox, provision: ["base.sh"]))
        #expect(c.vms.baseBox.hasSuffix("/boxes/base.box") && c.vms.baseBox.hasPrefix("/"))
        #expect(c.vagrant.vagrant == "vagrant")
        #expect(c.vagrant.directory.hasSuffix("/boxes"))
        #expect(c.timeouts == .init(hardLimit: 2400, logSilence: 600, beforeInstall: 300, install: 300,
                                    beforeScript: 300, script: 600, afterScript: 120, vmBoot: 120, vboxmanage: 120))
        #expect(c.limits == .init(logLength: 4_194_304, maxAttempts: 3, workerMemory: 256))
        #expect(c.user == nil && c.group == nil && !c.allowRoot)
        #expect(c.heartbeat.interval == 10)
        #expect(c.reporting.retention == 604_800)
        #expect(c.stateDir == "/srv/worker/var")
        #expect(c.local.workspace == "/srv/worker/var/local")
        #expect(c.ssh == .init(user: "travis", key: nil, host: "127.0.0.1", portBase: 2220))
        #expect(c.virtualbox == .init(vboxmanage: "VBoxManage", startType: "headless"))
        #expect(c.vm == nil)
        #expect(c.verbose == false)
        #expect(loaded.origins.count == ConfigSchema.keys.count)
        #expect(loaded.origins.values.allSatisfy { $0 == .default })
    }

    @Test func staticDefaultsFollowEnvAndAreAbsolute() {
        let c = WorkerConfig.defaults(env: "staging")
        #expect(c.env == "staging")
        #expect(c.vms.namePrefix == "tworker-staging-")
        #expect(c.stateDir == absolutePath("var", relativeTo: FileManager.default.currentDirectoryPath))
        #expect(c.local.workspace == c.stateDir + "/local")
        #expect(c.host == currentHostname())
        #expect(!c.host.isEmpty)
    }

    @Test func emptyAndCommentOnlyFilesHaveNoKeys() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.development.yml", "")
        try dir.write("worker.yml", "# nothing here yet\n\n")
        let loaded = try dir.loader().load()
        #expect(loaded.files == [dir.file("worker.development.yml"), dir.file("worker.yml")])
        #expect(loaded.config == WorkerConfig.defaults(env: "development", currentDirectory: "/srv/worker",
                                                       hostname: "testhost"))
    }

    // MARK: Deep merge

    @Test func localFileMergesOverEnvFileKeyByKey() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.development.yml", """
            queue: env-queue
            redis:
              url: redis://env:6379
              namespace: env-ns
            timeouts:
              script: 100
              install: 200
            """)
        try dir.write("worker.yml", """
            redis:
              namespace: local-ns
            timeouts:
              script: 999
            queue: local-queue
            """)
        let loaded = try dir.loader().load()
        let c = loaded.config
        let envFile = dir.file("worker.development.yml"), localFile = dir.file("worker.yml")

        #expect(c.queue == "local-queue")                  // scalar replaced
        #expect(c.redis.url == "redis://env:6379")          // sibling kept from env file
        #expect(c.redis.namespace == "local-ns")            // nested key replaced
        #expect(c.timeouts.script == 999)
        #expect(c.timeouts.install == 200)
        #expect(c.timeouts.hardLimit == 2400)               // neither file: default
        #expect(loaded.origins["queue"] == .file(localFile, line: 5))
        #expect(loaded.origins["redis.url"] == .file(envFile, line: 3))
        #expect(loaded.origins["redis.namespace"] == .file(localFile, line: 2))
        #expect(loaded.origins["timeouts.script"] == .file(localFile, line: 4))
        #expect(loaded.origins["timeouts.install"] == .file(envFile, line: 7))
        #expect(loaded.origins["timeouts.hard_limit"] == .default)
        #expect(loaded.files == [envFile, localFile])
    }

    @Test func treeMergeMergesNestedMappingsAndReplacesListsAndScalars() throws {
        let base = try ConfigTree.parse(yaml: """
            a:
              b:
                c: 1
                d: [1, 2, 3]
              e: keep
            f: [x]
            """, file: "base").get()
        let overlay = try ConfigTree.parse(yaml: """
            a:
              b:
                d: [9]
                g: new
            f: scalar-now
            """, file: "over").get()
        let merged = base.merging(overlay)

        func text(_ path: String) -> String? {
            guard case .scalar(let s)? = merged.entry(at: path)?.value else { return nil }
            return s.text
        }
        #expect(text("a.b.c") == "1")
        #expect(text("a.e") == "keep")
        #expect(text("a.b.g") == "new")
        #expect(text("f") == "scalar-now")
        guard case .list(let items, let location)? = merged.entry(at: "a.b.d")?.value else {
            Issue.record("a.b.d is not a list")
            return
        }
        #expect(items.count == 1)                           // replaced, not appended
        #expect(location.file == "over")
    }

    @Test func emptySectionInLocalFileKeepsEnvFileValues() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.development.yml", "timeouts:\n  script: 77\n")
        try dir.write("worker.yml", "timeouts:\n  # script: 1\n")
        let c = try dir.loader().load().config
        #expect(c.timeouts.script == 77)
    }

    @Test(arguments: [
        (env: "queue: from-env\n", local: nil, queue: "from-env", files: ["worker.development.yml"]),
        (env: nil, local: "queue: from-local\n", queue: "from-local", files: ["worker.yml"]),
        (env: nil, local: nil, queue: "builds", files: []),
    ] as [(env: String?, local: String?, queue: String, files: [String])])
    func eitherFileMayBeAbsent(env: String?, local: String?, queue: String, files: [String]) throws {
        let dir = try TempConfigDir()
        if let env { try dir.write("worker.development.yml", env) }
        if let local { try dir.write("worker.yml", local) }
        let loaded = try dir.loader().load()
        #expect(loaded.config.queue == queue)
        #expect(loaded.files == files.map(dir.file))
        #expect((loaded.origins["queue"] == .default) == files.isEmpty)
    }

    // MARK: Environment selection

    @Test(arguments: [
        (flag: "a", tworker: "b", travis: "c", env: "a", origin: ConfigOrigin.commandLine("--env")),
        (flag: nil, tworker: "b", travis: "c", env: "b", origin: .environment("TWORKER_ENV")),
        (flag: nil, tworker: nil, travis: "c", env: "c", origin: .environment("TRAVIS_ENV")),
        (flag: nil, tworker: "", travis: "c", env: "c", origin: .environment("TRAVIS_ENV")),
        (flag: nil, tworker: nil, travis: nil, env: "development", origin: .default),
    ] as [(flag: String?, tworker: String?, travis: String?, env: String, origin: ConfigOrigin)])
    func envSelectionPrecedence(flag: String?, tworker: String?, travis: String?, env: String,
                                origin: ConfigOrigin) throws {
        let dir = try TempConfigDir()
        for name in ["a", "b", "c", "development"] {
            try dir.write("worker.\(name).yml", "queue: q-\(name)\n")
        }
        var environment: [String: String] = [:]
        environment["TWORKER_ENV"] = tworker
        environment["TRAVIS_ENV"] = travis
        let loaded = try dir.loader(env: flag, environment: environment).load()
        #expect(loaded.config.env == env)
        #expect(loaded.config.queue == "q-\(env)")          // the matching file was read
        #expect(loaded.config.vms.namePrefix == "tworker-\(env)-")
        #expect(loaded.origins["env"] == origin)
    }

    @Test func configDirComesFromFlagThenEnvironmentThenDotConfig() throws {
        let root = try TempConfigDir()
        try FileManager.default.createDirectory(atPath: root.file("config"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root.file("other"), withIntermediateDirectories: true)
        try "queue: dot-config\n".write(toFile: root.file("config/worker.yml"), atomically: true, encoding: .utf8)
        try "queue: other\n".write(toFile: root.file("other/worker.yml"), atomically: true, encoding: .utf8)

        let byDefault = try ConfigLoader(environment: [:], currentDirectory: root.path).load()
        #expect(byDefault.config.queue == "dot-config")
        #expect(byDefault.files == ["config/worker.yml"])
        #expect(byDefault.origins["queue"]?.description == "config/worker.yml:1")

        let byEnvironment = try ConfigLoader(environment: ["TWORKER_CONFIG_DIR": "other"],
                                             currentDirectory: root.path).load()
        #expect(byEnvironment.config.queue == "other")
        #expect(byEnvironment.files == ["other/worker.yml"])

        let byFlag = try ConfigLoader(configDir: "config", environment: ["TWORKER_CONFIG_DIR": "other"],
                                      currentDirectory: root.path).load()
        #expect(byFlag.config.queue == "dot-config")
    }

    // MARK: Environment overrides

    @Test func environmentVariablesOverrideFilesWithProvenance() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.development.yml", "queue: env-file\nredis:\n  url: embedded\n")
        try dir.write("worker.yml", "queue: local-file\n")
        let loaded = try dir.loader(environment: [
            "REDIS_URL": "unix:///run/redis.sock", "QUEUE": "from-env", "VM": "tworker-7", "VERBOSE": "yes",
        ]).load()
        #expect(loaded.config.redis.url == "unix:///run/redis.sock")
        #expect(loaded.config.queue == "from-env")
        #expect(loaded.config.vm == "tworker-7")
        #expect(loaded.config.verbose)
        #expect(loaded.origins["redis.url"] == .environment("REDIS_URL"))
        #expect(loaded.origins["redis.url"]?.description == "environment variable REDIS_URL")
        #expect(loaded.origins["queue"] == .environment("QUEUE"))
        #expect(loaded.origins["vm"] == .environment("VM"))
        #expect(loaded.origins["verbose"] == .environment("VERBOSE"))
    }

    @Test(arguments: [("true", true), ("1", true), ("yes", true), ("YES", true),
                      ("false", false), ("0", false), ("no", false)])
    func verboseVariable(text: String, expected: Bool) throws {
        let dir = try TempConfigDir()
        #expect(try dir.loader(environment: ["VERBOSE": text]).load().config.verbose == expected)
    }

    @Test func emptyVariablesCountAsUnset() throws {
        let dir = try TempConfigDir()
        let loaded = try dir.loader(environment: ["REDIS_URL": "", "QUEUE": "", "VM": ""]).load()
        #expect(loaded.config.redis.url == "embedded")
        #expect(loaded.config.vm == nil)
        #expect(loaded.origins["queue"] == .default)
    }

    @Test func flagsBeatEnvironmentForVMAndVerbose() throws {
        let dir = try TempConfigDir()
        var loader = dir.loader(environment: ["VM": "from-env", "VERBOSE": "true"])
        loader.vm = "from-flag"
        loader.verbose = false
        let loaded = try loader.load()
        #expect(loaded.config.vm == "from-flag")
        #expect(loaded.config.verbose == false)
        #expect(loaded.origins["vm"] == .commandLine("--vm"))
        #expect(loaded.origins["verbose"]?.description == "command-line option --verbose")
    }

    // MARK: Provenance and paths

    @Test func provenancePointsAtTheKeyLine() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", """
            # comment

            provider: virtualbox   # line 3
            timeouts:
              # the script stage
              script:
                1200
            ssh: {user: ci, port_base: 3000}
            """)
        let loaded = try dir.loader().load()
        let file = dir.file("worker.yml")
        #expect(loaded.config.provider == .virtualbox)
        #expect(loaded.config.timeouts.script == 1200)
        #expect(loaded.origins["provider"] == .file(file, line: 3))
        #expect(loaded.origins["timeouts.script"] == .file(file, line: 6))
        #expect(loaded.origins["timeouts.script"]?.description == "\(file):6")
        #expect(loaded.origins["ssh.user"] == .file(file, line: 8))
        #expect(loaded.origins["ssh.port_base"] == .file(file, line: 8))
        #expect(loaded.config.ssh.portBase == 3000)
    }

    @Test func relativeStateDirResolvesAgainstCurrentDirectory() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "state_dir: ./data/../state\n")
        let c = try dir.loader(currentDirectory: "/home/ci/tworker").load().config
        #expect(c.stateDir == "/home/ci/tworker/state")
        #expect(c.local.workspace == "/home/ci/tworker/state/local")  // default follows state_dir
    }

    @Test func absoluteStateDirAndExplicitWorkspace() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "state_dir: /var/lib/tworker/\nlocal:\n  workspace: ws\n")
        let loaded = try dir.loader(currentDirectory: "/home/ci").load()
        #expect(loaded.config.stateDir == "/var/lib/tworker")
        #expect(loaded.config.local.workspace == "/home/ci/ws")       // relative to cwd, not state_dir
        #expect(loaded.origins["local.workspace"] == .file(dir.file("worker.yml"), line: 3))
    }

    @Test func sshKeyIsOptional() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.development.yml", "ssh:\n  key: /keys/id_ed25519\n")
        #expect(try dir.loader().load().config.ssh.key == "/keys/id_ed25519")
        try dir.write("worker.yml", "ssh:\n  key: ~\n")        // the local file can unset it again
        let loaded = try dir.loader().load()
        #expect(loaded.config.ssh.key == nil)
        #expect(loaded.origins["ssh.key"] == .file(dir.file("worker.yml"), line: 2))
    }

    @Test func yamlIntegerForms() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "limits:\n  log_length: 1_048_576\nvms:\n  memory: 0x800\n")
        let c = try dir.loader().load().config
        #expect(c.limits.logLength == 1_048_576)
        #expect(c.vms.memory == 2048)
    }

    @Test(arguments: [
        ("before_install", 301), ("install", 302), ("before_script", 303), ("script", 304),
        ("after_script", 305), ("after_success", 305), ("after_failure", 305),
    ])
    func stageTimeouts(stage: String, expected: Int) {
        var t = WorkerConfig.defaults(env: "test").timeouts
        (t.beforeInstall, t.install, t.beforeScript, t.script, t.afterScript) = (301, 302, 303, 304, 305)
        #expect(t.stageTimeout(stage) == expected)
    }

    @Test func stagesWithoutTimeout() {
        let t = WorkerConfig.defaults(env: "test").timeouts
        #expect(t.stageTimeout("deploy") == nil)
        #expect(t.stageTimeout("") == nil)
    }

    // MARK: Rendering

    @Test func renderTextHasValueAndOriginPerKeySorted() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "timeouts:\n  script: 900\n")
        let loaded = try dir.loader(environment: ["QUEUE": "q1"]).load()
        let lines = loaded.render(json: false).split(separator: "\n").map(String.init)
        #expect(lines.contains("timeouts.script: 900    (\(dir.file("worker.yml")):2)"))
        #expect(lines.contains("queue: q1    (environment variable QUEUE)"))
        #expect(lines.contains("redis.url: embedded    (default)"))
        #expect(lines.contains("ssh.key: null    (default)"))
        #expect(lines.contains("verbose: false    (default)"))
        #expect(lines.count == ConfigSchema.keys.count)
        #expect(lines == lines.sorted())
        #expect(!loaded.render(json: false).hasSuffix("\n"))   // callers print() it
    }

    @Test func renderJSONHasValueAndOriginPerKey() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "timeouts:\n  script: 900\n")
        let loaded = try dir.loader(environment: ["QUEUE": "q1"]).load()
        let json = loaded.render(json: true)
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: [String: Any]])
        #expect(object.count == ConfigSchema.keys.count)
        #expect(object["timeouts.script"]?["value"] as? Int == 900)
        #expect(object["timeouts.script"]?["origin"] as? String == "\(dir.file("worker.yml")):2")
        #expect(object["queue"]?["value"] as? String == "q1")
        #expect(object["queue"]?["origin"] as? String == "environment variable QUEUE")
        #expect(object["ssh.key"]?["value"] is NSNull)
        #expect(object["verbose"]?["value"] as? Bool == false)
        // Sorted keys: "env" comes before "heartbeat.interval" in the text.
        let env = try #require(json.range(of: "\"env\""))
        let heartbeat = try #require(json.range(of: "\"heartbeat.interval\""))
        #expect(env.lowerBound < heartbeat.lowerBound)
        #expect(!json.contains("\\/"))                       // paths stay readable
    }
}

@Suite struct ConfigListTests {
    func load(_ yaml: String) throws -> Result<LoadedConfig, ConfigError> {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tworker-list-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try yaml.write(toFile: directory + "/worker.test.yml", atomically: true, encoding: .utf8)
        do {
            return .success(try ConfigLoader(configDir: directory, env: "test", environment: [:], currentDirectory: "/srv").load())
        } catch {
            return .failure(error)
        }
    }

    @Test func provisionIsAListOfScripts() throws {
        let loaded = try load("vms:\n  provision:\n    - base.sh\n    - ruby.sh\n").get()
        #expect(loaded.config.vms.provision == ["base.sh", "ruby.sh"])
        #expect(loaded.render(json: false).contains("vms.provision: [base.sh, ruby.sh]"))
        #expect(loaded.render(json: true).contains("\"ruby.sh\""))
    }

    @Test(arguments: [
        ("vms:\n  provision: base.sh\n", "vms.provision: expected a list of strings, got a string"),
        ("vms:\n  provision:\n    - base.sh\n    - ~\n", "vms.provision: item 2: expected a non-empty string"),
        ("vms:\n  provision:\n    a: b\n", "vms.provision: expected a list of strings, got a mapping"),
    ])
    func badListsAreReportedWithTheirLine(yaml: String, message: String) throws {
        guard case .failure(let error) = try load(yaml) else {
            Issue.record("expected an error for \(yaml)")
            return
        }
        #expect(error.description.contains("worker.test.yml:2: " + message), "\(error.description)")
    }
}
