import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// Issue 13: secrets masked in the log, entries' times and the stages' fields, host hooks —
/// all through the real `tworker` binary against a real redis-server.
@Suite(.tags(.endToEnd))
struct SecretsAndHooksTests {
    func work(_ host: TestHost) async throws -> (status: Int32, out: String, err: String) {
        try await host.cli(["work", "--env", "test", "--config-dir", host.configDir, "--burst"], timeout: .seconds(120))
    }

    func writeSecrets(_ host: TestHost, _ text: String, mode: mode_t = 0o600) throws {
        let path = host.configDir + "/secrets.env"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, mode)
    }

    /// An executable the test writes: a hook.
    func writeHook(_ host: TestHost, _ name: String, _ body: String) throws -> String {
        let path = host.directory.path + "/" + name
        try "#!/bin/bash\n\(body)\n".write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
        return path
    }

    @Test func noSecretReachesTheLogInAnyForm() async throws {
        try await TestHost.with { host in
            try writeSecrets(host, "# the host's own\nHOST_DEPLOY=host/deploy secret+1\n")
            let secure = "payload-secure-value"
            let redacted = "ghp_redactedByName42"
            let script = [
                "echo raw: $PAYLOAD_SECURE $GITHUB_TOKEN $HOST_DEPLOY",
                "printf 'split: payload-sec'; sleep 0.4; printf 'ure-value and ghp_red'; sleep 0.3; echo 'actedByName42'",
                "echo b64: $(printf '%s' \"$PAYLOAD_SECURE\" | base64) $(printf 'x:%s' \"$HOST_DEPLOY\" | base64)",
                "echo url: https://u:$(printf '%s' \"$HOST_DEPLOY\" | sed 's#/#%2F#g; s/ /%20/g; s/+/%2B/g')@h/ ok",
                "echo form: $(printf '%s' \"$HOST_DEPLOY\" | sed 's#/#%2f#g; s/ /+/g; s/+1$/%2b1/')",
                "echo literal ghp_redactedByName42 in a command",
                "echo plain: $PLAIN_VALUE",
            ]
            let commands = script.map { "\"\(host.jsonEscape($0))\"" }.joined(separator: ",")
            let id = "secrets-1"
            try await host.push(#"""
                {"class":"Build","args":[{"id":"\#(id)","config":{"env":[{"name":"PAYLOAD_SECURE","value":"\#(secure)","secure":true},
                 "GITHUB_TOKEN=\#(redacted)","PLAIN_VALUE=visible-value"],"script":[\#(commands)]}}]}
                """#)
            let result = try await work(host)
            #expect(result.status == 0, "\(result.err)")
            #expect(try await host.record(id)["state"] == "passed")
            let log = try await host.log(id)
            let text = log.text
            for secret in [secure, redacted, "host/deploy secret+1", "cGF5bG9hZC1zZWN1cmUtdmFsdWU", "host%2Fdeploy%20secret%2B1",
                           "host%2fdeploy+secret%2b1"] {
                #expect(!text.contains(secret), "\(secret) in:\n\(text)")
            }
            #expect(text.contains("$ export PAYLOAD_SECURE=[secure]"))
            #expect(text.contains("$ export GITHUB_TOKEN=[secure]"))
            #expect(text.contains("$ export HOST_DEPLOY=[secure]"))
            #expect(text.contains("raw: [secure] [secure] [secure]\n"))
            #expect(text.contains("split: [secure] and [secure]\n"))
            #expect(text.contains("$ echo literal [secure] in a command\nliteral [secure] in a command\n"))
            #expect(text.contains("plain: visible-value"))
            #expect(text.contains("url: https://u:[secure]@h/ ok"))
            #expect(text.contains("form: [secure]\n"))

            // Every entry says when it was written, and the stages that ran are on the record.
            #expect(log.entries.allSatisfy { Int64($0["at"] ?? "") ?? 0 > 1_700_000_000_000 })
            let record = try await host.record(id)
            #expect(Timestamp.parse(record["stage:script:started"] ?? "") != nil, "\(record)")
            let duration = try #require(Double(record["stage:script:duration"] ?? ""))
            #expect(duration >= 0.7 && duration < 60)
            #expect(record["stage:install:started"] == nil)

            let plain = try await host.cli(["logs", id, "--env", "test", "--config-dir", host.configDir])
            #expect(plain.out == text)
            let stamped = try await host.cli(["logs", id, "--timestamps", "--env", "test", "--config-dir", host.configDir])
            #expect(stamped.status == 0, "\(stamped.err)")
            let lines = stamped.out.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
            #expect(lines.count == text.split(separator: "\n", omittingEmptySubsequences: false).count - 1)
            for line in lines {
                let stamp = line.prefix(24)
                #expect(Timestamp.parse(String(stamp)) != nil && line.dropFirst(24).first == " ", "\(line)")
            }
            #expect(lines.contains { $0.hasSuffix(" split: [secure] and [secure]") })
        }
    }

    @Test func aShortSecretIsRefusedAndABadSecretsFileStopsTheWorker() async throws {
        try await TestHost.with { host in
            let id = "short-secret"
            try await host.push(#"{"class":"Build","args":[{"id":"\#(id)","config":{"env":[{"name":"PIN","value":"1234","secure":true}],"script":"echo 1234"}}]}"#)
            let result = try await work(host)
            #expect(result.status == 0, "\(result.err)")
            let record = try await host.record(id)
            #expect(record["state"] == "errored")
            #expect(record["error"]?.hasPrefix("The secret variable PIN is 4 characters long; secrets must be at least 6 characters") == true,
                    "\(record)")
            #expect(try await host.log(id).text.contains("The secret variable PIN is 4 characters long"))

            try writeSecrets(host, "GOOD_ONE=long-enough-value\n", mode: 0o644)
            let open = try await work(host)
            #expect(open.status == 78)
            #expect(open.err.contains("secrets.env: mode 644 lets other users read the secrets; it must be 0600"), "\(open.err)")
            try writeSecrets(host, "GOOD_ONE=long-enough-value\nSHORT=abc\n")
            let short = try await work(host)
            #expect(short.status == 78)
            #expect(short.err.contains("secrets.env:2: SHORT: a secret must be at least 6 characters, got 3"), "\(short.err)")
        }
    }

    @Test func hooksRunAroundTheJobAndWriteIntoItsLog() async throws {
        try await TestHost.with { host in
            let seen = host.directory.path + "/hooks.seen"
            let before = try writeHook(host, "before-job", """
                echo "before $TWORKER_JOB_ID $TWORKER_VM $TWORKER_WORKER $TWORKER_QUEUE $TWORKER_ATTEMPT" >> \(seen)
                echo warming the cache
                echo to stderr >&2
                """)
            let after = try writeHook(host, "after-job", """
                echo "after $TWORKER_JOB_ID $TWORKER_ATTEMPT $TWORKER_JOB_RESULT" >> \(seen)
                echo notifying the autoscaler
                exit 3
                """)
            try host.writeConfig("hooks:\n  before_job: \(before)\n  after_job: \(after)\n  timeout: 5\n")
            let id = try await host.push(id: "hooked-1", script: ["echo the build"])
            let failing = try await host.push(id: "hooked-2", script: ["exit 4"])
            let result = try await work(host)
            #expect(result.status == 0, "\(result.err)")
            let record = try await host.record(id)
            #expect(record["state"] == "passed", "after_job failing changes nothing")
            #expect(try await host.record(failing)["state"] == "failed")
            let text = try await host.log(id).text
            let order = ["travis_fold:start:hook.before_job\n$ \(before)\n", "warming the cache\n", "to stderr\n",
                         "travis_fold:end:hook.before_job\n", "the build\n", "travis_fold:start:hook.after_job\n",
                         "notifying the autoscaler\n", "hooks.after_job failed with exit code 3\n", "travis_fold:end:hook.after_job\n",
                         "Done. Your build exited with 0 (passed).\n"]
            var cursor = text.startIndex
            for part in order {
                let found = try #require(text.range(of: part, range: cursor..<text.endIndex), "'\(part)' in order in:\n\(text)")
                cursor = found.upperBound
            }
            let calls = try String(contentsOfFile: seen, encoding: .utf8)
            #expect(calls == """
                before hooked-1 worker-1 testhost:worker-1 builds 1
                after hooked-1 1 passed
                before hooked-2 worker-1 testhost:worker-1 builds 1
                after hooked-2 1 failed

                """)
        }
    }

    @Test func aFailingBeforeJobHookRequeuesTheJobUntilItsAttemptsAreUsed() async throws {
        try await TestHost.with { host in
            let seen = host.directory.path + "/hooks.seen"
            let before = try writeHook(host, "before-job", "echo \"before $TWORKER_ATTEMPT\" >> \(seen); echo cache unreachable; exit 2")
            let after = try writeHook(host, "after-job", "echo \"after $TWORKER_ATTEMPT $TWORKER_JOB_RESULT\" >> \(seen)")
            let slow = try writeHook(host, "slow-job", "sleep 30")
            try host.writeConfig("hooks:\n  before_job: \(before)\n  after_job: \(after)\nlimits:\n  max_attempts: 2\nvms:\n  max_consecutive_failures: 10\n")
            let id = try await host.push(id: "hook-fails", script: ["echo never runs"])
            let result = try await work(host)
            #expect(result.status == 0, "\(result.err)")
            let record = try await host.record(id)
            #expect(record["state"] == "errored", "\(record)")
            #expect(record["error"]?.contains("hooks.before_job failed with exit code 2") == true, "\(record)")
            let text = try await host.log(id).text
            #expect(!text.contains("$ echo never runs"))
            #expect(text.contains("cache unreachable\nhooks.before_job failed with exit code 2\ntravis_fold:end:hook.before_job\n"))
            #expect(text.contains("The job was requeued (attempt 2 of 2)."))
            #expect(try String(contentsOfFile: seen, encoding: .utf8) == "before 1\nafter 1 requeued\nbefore 2\nafter 2 errored\n")

            // A hook that outlives hooks.timeout is killed and counts as failed.
            try host.writeConfig("hooks:\n  before_job: \(slow)\n  timeout: 1\nlimits:\n  max_attempts: 1\n")
            let timed = try await host.push(id: "hook-slow", script: ["echo never runs"])
            let started = ContinuousClock.now
            #expect(try await work(host).status == 0)
            #expect(ContinuousClock.now - started < .seconds(20))
            let timedRecord = try await host.record(timed)
            #expect(timedRecord["state"] == "errored")
            #expect(timedRecord["error"]?.contains("hooks.before_job did not finish in 1 s and was killed") == true, "\(timedRecord)")
        }
    }
}
