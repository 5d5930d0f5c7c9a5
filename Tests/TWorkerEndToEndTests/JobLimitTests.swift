import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

@Suite(.tags(.endToEnd))
struct JobLimitTests {
    @Test func theHardLimitEndsTheJobAsErroredAndKillsEverythingItStarted() async throws {
        try await TestHost.with { host in
            let pidFile = host.directory.path + "/background.pid"
            let id = try await host.push(script: ["sleep 300 & echo $! > \(pidFile)", "sleep 300"],
                                         extra: #","timeouts":{"hard_limit":2}"#)
            try await host.runBurst()
            let record = try await host.record(id)
            #expect(record["state"] == "errored")
            let log = try await host.log(id)
            #expect(log.text.contains("exceeded the maximum time limit for jobs (2 s)"))
            #expect(log.text.hasSuffix("(errored).\n"))
            #expect(log.isFinal)
            let background = try #require(pid_t(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
            // Killed, though maybe not yet reaped by whoever inherited it: a zombie counts as gone.
            let gone = await eventually(timeout: .seconds(5)) { processIsGone(background) }
            #expect(gone, "the build's background process was killed with its group")
        }
    }

    @Test func logSilenceEndsTheJob() async throws {
        try await TestHost.with(config: "timeouts:\n  log_silence: 1\n") { host in
            let id = try await host.push(script: ["echo talking", "sleep 30"])
            try await host.runBurst()
            #expect(try await host.record(id)["state"] == "errored")
            #expect(try await host.log(id).text.contains("No output has been received in the last 1 seconds"))
        }
    }

    @Test func aStageTimeoutEndsTheJob() async throws {
        try await TestHost.with(config: "timeouts:\n  install: 1\n") { host in
            try await host.push(#"{"class":"X","args":[{"id":"slow-install","config":{"install":"sleep 30","script":"echo never"}}]}"#)
            try await host.runBurst()
            #expect(try await host.record("slow-install")["state"] == "errored")
            let log = try await host.log("slow-install").text
            #expect(log.contains("The install stage exceeded its time limit of 1 s"))
            #expect(!log.contains("$ echo never"))
        }
    }

    @Test func theLogIsCutAtItsLimitAndTheBuildStopped() async throws {
        try await TestHost.with(config: "limits:\n  log_length: 4096\n") { host in
            let id = try await host.push(script: ["for i in $(seq 1 100000); do echo line-$i-padding-padding-padding; done", "echo not-reached > /dev/null; sleep 30"])
            try await host.runBurst()
            #expect(try await host.record(id)["state"] == "errored")
            let log = try await host.log(id).text
            #expect(log.contains("The log length has exceeded the limit of 4096 bytes"))
            #expect(log.utf8.count < 4096 + 1024, "only the closing lines follow the cut")
        }
    }

    @Test func aJobCannotRaiseTheHostsLimits() async throws {
        try await TestHost.with(config: "timeouts:\n  hard_limit: 2\n") { host in
            let id = try await host.push(script: ["sleep 30"], extra: #","timeouts":{"hard_limit":3600}"#)
            let started = ContinuousClock.now
            try await host.runBurst()
            #expect(ContinuousClock.now - started < .seconds(20))
            #expect(try await host.log(id).text.contains("(2 s)"))
        }
    }

    /// The job-level limits (log length, hard limit, log silence) error the job in after_script
    /// too; after_script's own timeout stops it but keeps the script's result.
    @Test func limitsInAfterScript() async throws {
        try await TestHost.with(config: "limits:\n  log_length: 4096\ntimeouts:\n  after_script: 3\n") { host in
            func push(_ id: String, after: String, timeouts: String = "") async throws {
                let extra = timeouts.isEmpty ? "" : #","timeouts":{\#(timeouts)}"#
                try await host.push(#"{"class":"Build","args":[{"id":"\#(id)","config":{"script":"echo ok","after_script":"\#(after)"}\#(extra)}]}"#)
            }
            try await push("own-timeout", after: "sleep 30")
            try await push("silence", after: "sleep 30", timeouts: #""log_silence":1"#)
            try await push("hard-limit", after: "while true; do echo tick; sleep 0.2; done", timeouts: #""hard_limit":2"#)
            try await push("log-length", after: "head -c 5000000 /dev/zero | tr '\\\\0' x")
            try await host.runBurst()
            let expected = [
                ("own-timeout", "passed", "The after_script stage exceeded its time limit of 3 s"),
                ("silence", "errored", "No output has been received in the last 1 seconds"),
                ("hard-limit", "errored", "The job exceeded the maximum time limit for jobs (2 s)"),
                ("log-length", "errored", "The log length has exceeded the limit of 4096 bytes"),
            ]
            for (id, state, message) in expected {
                let record = try await host.record(id)
                let log = try await host.log(id).text
                #expect(record["state"] == state, "\(id): \(record)\n\(log)")
                #expect(record["error"]?.hasPrefix(message) == true, "\(id): \(record)")
                #expect(log.contains("The script stage exited with 0."), "\(id) reached after_script: \(log)")
                #expect(log.contains(message), "\(id): \(log)")
            }
        }
    }

    /// Observed before: 5 MB printed at once and the build exiting before the kill landed
    /// ended `passed` with a cut log. Whoever wins the race, a cut log is an errored job.
    @Test func aBuildThatExitsRightAfterFloodingTheLogIsStillErrored() async throws {
        try await TestHost.with(config: "limits:\n  log_length: 100000\n") { host in
            for round in 1...3 {
                let id = try await host.push(id: "flood-\(round)", script: ["head -c 5000000 /dev/zero | tr '\\0' x", "exit 0"])
                try await host.runBurst()
                let record = try await host.record(id)
                #expect(record["state"] == "errored", "round \(round): \(record)")
                #expect(record["error"]?.contains("exceeded the limit of 100000 bytes") == true, "\(record)")
            }
        }
    }
}
