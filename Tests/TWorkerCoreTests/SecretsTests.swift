import Foundation
import Logging
import RedisClient
import Testing
@testable import TWorkerCore
import TWorkerTestSupport

/// The whole of `chunks` through one redactor, as the log would get it.
private func streamed(_ mask: SecretMask, _ chunks: [[UInt8]]) -> String {
    var redactor = SecretRedactor(mask: mask)
    var out: [UInt8] = []
    for chunk in chunks { out += redactor.redact(chunk) }
    out += redactor.flush()
    return String(decoding: out, as: UTF8.self)
}

@Suite struct SecretMaskTests {
    let secrets = ["hunter2-Sup3r", "s3cr3t/value+x=y", "abcdef"]

    @Test func masksEveryOccurrenceAndLeavesTheRestAlone() {
        let mask = SecretMask(values: secrets)
        #expect(mask.redact("token=hunter2-Sup3r; again hunter2-Sup3r.") == "token=[secure]; again [secure].")
        #expect(mask.redact("nothing to see") == "nothing to see")
        #expect(mask.redact("abcdeabcdef") == "abcde[secure]")
        #expect(SecretMask(values: []).redact("abcdef") == "abcdef")
    }

    @Test func overlappingSecretsBecomeOneMask() {
        let mask = SecretMask(values: ["abcdefgh", "efghijkl"])
        #expect(mask.redact("xxabcdefghijklxx") == "xx[secure]xx")
        #expect(mask.redact("abcdefghabcdefgh") == "[secure][secure]")
    }

    /// The text is cut once at every byte, and also fed a byte at a time: the masked log is
    /// the same as when the text came in one read.
    @Test func aSecretSplitAtEveryByteBoundaryIsStillMasked() {
        let mask = SecretMask(values: secrets)
        let text = Array("start hunter2-Sup3r mid s3cr3t/value+x=y é abcdef\nhunter2-Sup3rabcdef end hunter2-Sup3".utf8)
        let expected = "start [secure] mid [secure] é [secure]\n[secure][secure] end hunter2-Sup3"
        #expect(streamed(mask, [text]) == expected)
        for cut in 0...text.count {
            #expect(streamed(mask, [Array(text[..<cut]), Array(text[cut...])]) == expected, "cut at \(cut)")
        }
        for first in stride(from: 0, through: text.count, by: 3) {
            for second in first...min(text.count, first + 20) {
                let parts = [Array(text[..<first]), Array(text[first..<second]), Array(text[second...])]
                #expect(streamed(mask, parts) == expected, "cuts at \(first), \(second)")
            }
        }
        #expect(streamed(mask, text.map { [$0] }) == expected)
    }

    @Test func onlyAPossibleStartOfASecretIsHeldBack() {
        var redactor = SecretRedactor(mask: SecretMask(values: ["hunter2-Sup3r"]))
        #expect(String(decoding: redactor.redact(Array("plain line\n".utf8)), as: UTF8.self) == "plain line\n")
        #expect(redactor.heldCount == 0)
        #expect(String(decoding: redactor.redact(Array("a hun".utf8)), as: UTF8.self) == "a ")
        #expect(redactor.heldCount == 3)
        #expect(String(decoding: redactor.redact(Array("gry\n".utf8)), as: UTF8.self) == "hungry\n")
        #expect(String(decoding: redactor.redact(Array("hunter2-Sup".utf8)), as: UTF8.self) == "")
        #expect(String(decoding: redactor.flush(), as: UTF8.self) == "hunter2-Sup")
    }

    @Test(arguments: ["hunter2-Sup3r", "s3cr3t/value+x=y", "pass word with spaces ü"])
    func base64AtAnyAlignmentIsMasked(_ secret: String) {
        let mask = SecretMask(values: [secret])
        for prefix in ["", "a", "ab", "abc", "user:"] {
            let encoded = Data((prefix + secret + "\n").utf8).base64EncodedString()
            let shown = mask.redact("Authorization: Basic \(encoded) done")
            #expect(shown.contains("[secure]"), "prefix \(prefix.debugDescription): \(shown)")
            // What is left around the mask is at most the characters shared with the neighbours.
            let left = shown.replacingOccurrences(of: "Authorization: Basic ", with: "").replacingOccurrences(of: " done", with: "")
            #expect(left.count <= "[secure]".count + Data((prefix + "\n").utf8).base64EncodedString().count + 3, "\(shown)")
        }
    }

    @Test func urlEncodedFormsAreMasked() {
        let secret = "p@ss/word with+plus"
        let mask = SecretMask(values: [secret])
        let upper = secret.addingPercentEncoding(withAllowedCharacters: CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"))!
        #expect(mask.redact("https://u:\(upper)@host/") == "https://u:[secure]@host/")
        #expect(mask.redact("q=\(upper.lowercased())&x") == "q=[secure]&x")
        #expect(mask.redact("q=p%40ss%2Fword+with%2Bplus&x") == "q=[secure]&x")
        #expect(mask.redact("raw \(secret)") == "raw [secure]")
    }

    @Test func maskingKeepsPaceWithABigLog() {
        let mask = SecretMask(values: (0..<20).map { "secret-number-\($0)-value" })
        let line = Array("the quick brown fox jumps over the lazy dog 0123456789 secret-numbe secret-number-7-value\n".utf8)
        var chunk: [UInt8] = []
        while chunk.count < 64 * 1024 { chunk += line }
        var redactor = SecretRedactor(mask: mask)
        let started = ContinuousClock.now
        var total = 0
        for _ in 0..<256 { total += redactor.redact(chunk).count }
        let elapsed = ContinuousClock.now - started
        let mibPerSecond = 16.0 / (Double(elapsed.components.attoseconds) / 1e18 + Double(elapsed.components.seconds))
        #expect(total > 0)
        // Debug build; the release build's log benchmark asks 50 MiB/s of the whole pipeline.
        #expect(mibPerSecond > 20, "masking ran at \(mibPerSecond) MiB/s")
    }
}

@Suite struct JobSecretsTests {
    @Test func secureEntriesAndRedactedNamesAreSecret() throws {
        let mask = try JobSecrets.mask(for: [
            .init(name: "PLAIN", value: "visible-value"),
            .init(name: "ANYTHING", value: "marked-secure", secure: true),
            .init(name: "GITHUB_TOKEN", value: "ghp_1234567890"),
            .init(name: "db_password", value: "lowercase-too"),
            .init(name: "EMPTY_SECRET", value: ""),
        ], redact: JobSecrets.defaultRedact)
        #expect(mask.redact("visible-value marked-secure ghp_1234567890 lowercase-too") == "visible-value [secure] [secure] [secure]")
        #expect(JobSecrets.matches("STRIPE_API_KEY", patterns: JobSecrets.defaultRedact))
        #expect(!JobSecrets.matches("KEYBOARD", patterns: JobSecrets.defaultRedact))
        #expect(!JobSecrets.matches("TOKEN", patterns: JobSecrets.defaultRedact))
    }

    @Test func aShortSecretIsRefusedWithItsName() {
        #expect(throws: SecretTooShort(name: "PIN", length: 4)) {
            try JobSecrets.mask(for: [.init(name: "PIN", value: "1234", secure: true)], redact: [])
        }
        #expect(throws: SecretTooShort(name: "A_TOKEN", length: 5)) {
            try JobSecrets.mask(for: [.init(name: "A_TOKEN", value: "abcde")], redact: JobSecrets.defaultRedact)
        }
        #expect(SecretTooShort(name: "PIN", length: 4).description.hasPrefix("The secret variable PIN is 4 characters long; secrets must be at least 6 characters"))
        // Not secret: short is fine.
        #expect((try? JobSecrets.mask(for: [.init(name: "A_TOKEN", value: "abcde")], redact: [])) != nil)
    }
}

@Suite struct SecretsFileTests {
    @Test func readsNameValueLinesAsSecrets() throws {
        let variables = try SecretsFile.parse("# deploy keys\n\nAPI_TOKEN=abc=def=ghi\nexport_me = spaced value \r\n", display: "config/secrets.env")
        #expect(variables == [.init(name: "API_TOKEN", value: "abc=def=ghi", secure: true),
                              .init(name: "export_me", value: " spaced value ", secure: true)])
    }

    @Test func everyBadLineIsNamedWithItsLine() {
        #expect(throws: ConfigError.self) { try SecretsFile.parse("OK=long-enough\nNOEQUALS\n1X=long-enough\nPIN=1234\n", display: "c/secrets.env") }
        do {
            _ = try SecretsFile.parse("OK=long-enough\nNOEQUALS\n1X=long-enough\nPIN=1234\n", display: "c/secrets.env")
        } catch {
            #expect(error.problems == [
                "c/secrets.env:2: expected NAME=value",
                "c/secrets.env:3: invalid variable name (must match [A-Za-z_][A-Za-z0-9_]*)",
                "c/secrets.env:4: PIN: a secret must be at least 6 characters, got 4 (a shorter value would mask ordinary text all over the log)",
            ])
        }
    }

    @Test func onlyItsOwnerMayReadIt() throws {
        let dir = try TempConfigDir()
        try dir.write("secrets.env", "DEPLOY_KEY=0123456789\n")
        chmod(dir.file("secrets.env"), 0o644)
        var loader = dir.loader()
        loader.readsSecrets = true
        #expect(configProblems(loader) == ["\(dir.path)/secrets.env: mode 644 lets other users read the secrets; it must be 0600 (chmod 600 \(dir.path)/secrets.env)"])
        chmod(dir.file("secrets.env"), 0o600)
        #expect(try loader.load().config.secrets.variables == [.init(name: "DEPLOY_KEY", value: "0123456789", secure: true)])
        // Commands that run no jobs never read it.
        loader.readsSecrets = false
        chmod(dir.file("secrets.env"), 0o644)
        #expect(try loader.load().config.secrets.variables.isEmpty)
        // No file, no secrets.
        try FileManager.default.removeItem(atPath: dir.file("secrets.env"))
        loader.readsSecrets = true
        #expect(try loader.load().config.secrets.variables.isEmpty)
    }

    @Test func redactAndHooksKeys() throws {
        let dir = try TempConfigDir()
        let defaults = try dir.loader().load().config
        #expect(defaults.secrets.redact == ["*_TOKEN", "*_PASSWORD", "*_SECRET", "*_KEY", "*_API_KEY"])
        #expect(defaults.hooks == WorkerConfig.Hooks(beforeJob: nil, afterJob: nil, timeout: 60))
        try dir.write("worker.yml", "secrets:\n  redact: [\"*_CREDENTIAL\"]\nhooks:\n  before_job: hooks/before\n  after_job: /opt/after\n  timeout: 5\n")
        let config = try dir.loader().load().config
        #expect(config.secrets.redact == ["*_CREDENTIAL"])
        #expect(config.hooks == WorkerConfig.Hooks(beforeJob: "/srv/worker/hooks/before", afterJob: "/opt/after", timeout: 5))
        try dir.write("worker.yml", "hooks:\n  timeout: 0\n")
        #expect(configProblems(dir.loader()) == ["\(dir.path)/worker.yml:2: hooks.timeout: must be between 1 and 86400, got 0"])
    }
}

@Suite struct SecretEchoTests {
    @Test func theScriptNeverPrintsASecret() {
        let payload = JobPayload(
            id: "j",
            checkout: .init(slug: "a/b", sourceURL: "https://x:ghp_abcdef123@git.example/a/b.git", commit: "abcdef1", branch: "main"),
            env: [.init(name: "API_TOKEN", value: "ghp_abcdef123", secure: true), .init(name: "DB_PASSWORD", value: "pa55w0rd!"),
                  .init(name: "PLAIN", value: "shown")],
            stages: [.install: ["curl -H 'Authorization: ghp_abcdef123' x"], .script: ["deploy --password pa55w0rd!"]])
        let mask = try! JobSecrets.mask(for: payload.env, redact: JobSecrets.defaultRedact)
        let script = BuildScript.render(payload, secrets: mask)
        let printed = script.split(separator: "\n").filter { $0.contains("printf") || $0.contains("tw_failed") || $0.contains("tw_script_failed") }
            .filter { !$0.hasPrefix("tw_failed()") && !$0.hasPrefix("tw_script_failed()") }
        #expect(!printed.isEmpty)
        for line in printed {
            #expect(!line.contains("ghp_abcdef123") && !line.contains("pa55w0rd!"), "\(line)")
        }
        #expect(script.contains("printf '%s\\n' '$ export API_TOKEN=[secure]'"))
        #expect(script.contains("printf '%s\\n' '$ export DB_PASSWORD=[secure]'"))
        #expect(script.contains("printf '%s\\n' '$ export PLAIN=shown'"))
        #expect(script.contains("printf '%s\\n' '$ deploy --password [secure]'"))
        // The commands themselves run with the real values.
        #expect(script.contains("eval 'deploy --password pa55w0rd!'"))
        #expect(script.contains("export API_TOKEN='ghp_abcdef123'"))
    }
}

@Suite struct StageTimesTests {
    @Test func foldMarkersOfTheScriptsStagesBecomeRecordFields() async throws {
        let stages = StageTimes()
        let machine = ScriptedMachine(chunks: [
            "travis_fold:start:install\n$ make\n", "travis_fold:end:install\n",
            "travis_fold:start:made-up\n", "travis_fold:start:script\n$ run\n", "travis_fold:end:script\n",
            "The script stage exited with 0.\n", "travis_fold:start:after_script\n",
        ], exit: .exited(0))
        _ = await BuildRun.execute(machine: machine, script: "", jobID: "j", limits: limits(), stages: stages) { _ in }
        #expect(stages.stages.map(\.name) == ["install", "script", "after_script"])
        #expect(stages.stages.allSatisfy { $0.duration != nil }, "an open stage ends with the build")
        let fields = stages.fields
        #expect(fields.keys.sorted() == ["stage:after_script:duration", "stage:after_script:started", "stage:install:duration",
                                         "stage:install:started", "stage:script:duration", "stage:script:started"])
        #expect(fields["stage:install:duration"]?.wholeMatch(of: /\d+\.\d{3}/) != nil)
        #expect(Timestamp.parse(fields["stage:script:started"] ?? "") != nil)
        #expect(stages.recordCommands(key: "tworker:job:j").first?.prefix(2) == ["HSET", "tworker:job:j"])
        #expect(StageTimes.resetCommands(key: "k").first?.count == 2 + 2 * 8)
    }
}

@Suite struct JobHooksTests {
    @Test func aHookRunsWithTheJobsVariablesAndItsTimeout() throws {
        let hooks = JobHooks(beforeJob: "/opt/hooks/before", afterJob: nil, timeout: .seconds(7))
        let context = JobHooks.Context(jobID: "j-1", vm: "worker-2", worker: "h:worker-2", queue: "builds", attempt: 2)
        let command = try #require(hooks.command(.beforeJob, context: context))
        #expect(command.program.name == "/opt/hooks/before")
        #expect(command.arguments == [])
        #expect(command.timeout == .seconds(7))
        #expect(command.environment == .inherit(updating: ["TWORKER_JOB_ID": "j-1", "TWORKER_VM": "worker-2", "TWORKER_WORKER": "h:worker-2",
                                                           "TWORKER_QUEUE": "builds", "TWORKER_ATTEMPT": "2"]))
        #expect(hooks.command(.afterJob, context: context) == nil)
        var after = context
        after.result = "passed"
        #expect(after.variables["TWORKER_JOB_RESULT"] == "passed")
    }
}

@Suite(.tags(.redis)) struct MaskedLogTests {
    let logger = Logger(label: "test")

    @Test func entriesCarryTheirTimeAndNeverASecret() async throws {
        try await withRedisServer { server in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            let before = Timestamp.milliseconds()
            let streamer = LogStreamer(redis: redis, key: "log:s", retention: 60, logger: logger, lastNumber: 0,
                                       secrets: SecretMask(values: ["hunter2-Sup3r"]))
            await streamer.append("one hunt")
            await streamer.append("er2-Sup3r two\n")
            await streamer.drain()
            await streamer.append("ends in hunter2-Su")
            await streamer.finish()
            let reply = try await redis.send(["XRANGE", "log:s", "-", "+"])
            var data = ""
            var ats: [Int64] = []
            for entry in reply.array ?? [] {
                let fields = entry.array?.last?.array?.compactMap(\.string) ?? []
                for index in stride(from: 0, to: fields.count - 1, by: 2) {
                    if fields[index] == "data" { data += fields[index + 1] }
                    if fields[index] == "at" { ats.append(Int64(fields[index + 1]) ?? 0) }
                }
            }
            #expect(data == "one [secure] two\nends in hunter2-Su")
            #expect(ats.count == (reply.array ?? []).count)
            #expect(ats.allSatisfy { $0 >= before && $0 <= Timestamp.milliseconds() })
        }
    }
}
