import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

@Suite(.tags(.endToEnd))
struct WorkerBuildTests {
    @Test func passedFailedAndErroredJobsAreReportedWithTheirLogsInOrder() async throws {
        try await TestHost.with { host in
            let passed = try await host.push(script: ["echo one", "echo two >&2", "echo three"])
            let failed = try await host.push(script: ["echo before", "bash -c 'exit 3'", "echo after-the-failure"])
            let exited = try await host.push(script: ["echo ending-the-shell", "exit 5", "echo unreachable"])
            let errored = "errored-1"
            try await host.push(#"{"class":"X","args":[{"id":"\#(errored)","config":{"install":"echo installing; false","script":"echo never"}}]}"#)
            try await host.runBurst()

            let passedRecord = try await host.record(passed)
            #expect(passedRecord["state"] == "passed")
            #expect(passedRecord["exit_code"] == "0")
            #expect(passedRecord["attempts"] == "1")
            #expect(passedRecord["worker"] == "testhost:worker-1")
            #expect(passedRecord["vm"] == "worker-1")
            #expect(passedRecord["host"] == "testhost")
            for field in ["received_at", "started_at", "finished_at"] {
                #expect(Timestamp.parse(passedRecord[field] ?? "") != nil, "\(field) is a timestamp")
            }
            let passedLog = try await host.log(passed)
            #expect(passedLog.isFinal)
            #expect(passedLog.numbers == Array(1...passedLog.entries.count))
            let text = passedLog.text
            let order = ["$ echo one", "one", "$ echo two >&2", "two", "$ echo three", "three", "Done. Your build exited with 0 (passed)."]
            var cursor = text.startIndex
            for line in order {
                let found = try #require(text.range(of: line, range: cursor..<text.endIndex), "'\(line)' in order in:\n\(text)")
                cursor = found.upperBound
            }
            #expect(text.hasSuffix("Done. Your build exited with 0 (passed).\n"))

            let failedRecord = try await host.record(failed)
            #expect(failedRecord["state"] == "failed")
            #expect(failedRecord["exit_code"] == "3")
            let failedLog = try await host.log(failed).text
            #expect(failedLog.contains("after-the-failure"), "every script command runs")
            #expect(failedLog.hasSuffix("Done. Your build exited with 3 (failed).\n"))

            #expect(try await host.record(exited)["state"] == "failed", "exit in script ends the build as failed")
            #expect(try await host.record(exited)["exit_code"] == "5")

            let erroredRecord = try await host.record(errored)
            #expect(erroredRecord["state"] == "errored")
            #expect(erroredRecord["exit_code"] == "1")
            let erroredLog = try await host.log(errored).text
            #expect(erroredLog.contains("installing"))
            #expect(!erroredLog.contains("$ echo never"))
            #expect(erroredLog.hasSuffix("Done. Your build exited with 1 (errored).\n"))

            #expect(try await host.events(for: passed) == ["job:received", "job:started", "job:finished"])
            #expect(try await host.int(["GET", "resque:stat:processed"]) == 4)
            #expect(try await host.int(["LLEN", host.keys.processing(vm: "worker-1")]) == 0)
            #expect(try await host.int(["TTL", host.keys.job(passed)]) > 600_000)
            #expect(try await host.int(["TTL", host.keys.log(passed)]) > 600_000)
        }
    }

    @Test func aJobWithARepositoryChecksOutTheCommit() async throws {
        try await TestHost.with { host in
            let repo = host.directory.path + "/origin"
            try FileManager.default.createDirectory(atPath: repo, withIntermediateDirectories: true)
            try "first\n".write(toFile: repo + "/file.txt", atomically: true, encoding: .utf8)
            func git(_ arguments: String...) throws -> String {
                let out = host.directory.path + "/git.out"
                let process = try SpawnedProcess.spawn("/usr/bin/git", ["-C", repo, "-c", "user.email=t@t", "-c", "user.name=t"] + arguments,
                                                       environment: ["PATH": "/usr/bin:/bin", "HOME": host.directory.path], log: out)
                var status: Int32 = 0
                waitpid(process.pid, &status, 0)
                defer { try? FileManager.default.removeItem(atPath: out) }
                return (try? String(contentsOfFile: out, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            }
            _ = try git("init", "-q", "-b", "main")
            _ = try git("add", "file.txt")
            _ = try git("commit", "-qm", "first")
            let first = try git("rev-parse", "HEAD")
            try "second\n".write(toFile: repo + "/file.txt", atomically: true, encoding: .utf8)
            _ = try git("commit", "-qam", "second")

            try await host.push(#"{"class":"B","args":[{"id":"co-1","repository":{"slug":"acme/app.js","source_url":"\#(repo)"},"commit":"\#(first)","branch":"main","config":{"script":["cat file.txt","pwd"]}}]}"#)
            try await host.runBurst()
            let record = try await host.record("co-1")
            let log = try await host.log("co-1").text
            #expect(record["state"] == "passed", "\(log)")
            #expect(log.contains("$ git clone --depth 50 --branch main \(repo) acme/app.js"))
            #expect(log.contains("\nfirst\n"), "the old commit is checked out")
            #expect(log.contains("/local/worker-1/acme/app.js\n"))
        }
    }

    @Test func theWorkspaceIsWipedBetweenJobs() async throws {
        try await TestHost.with { host in
            let first = try await host.push(script: ["touch leftover", "ls"])
            let second = try await host.push(script: ["test ! -e leftover"])
            try await host.runBurst()
            #expect(try await host.record(first)["state"] == "passed")
            #expect(try await host.record(second)["state"] == "passed")
        }
    }

    @Test func aLineIsVisibleInRedisWhileTheBuildStillRuns() async throws {
        try await TestHost.with { host in
            let id = try await host.push(script: ["echo early-line", "sleep 8", "echo late-line"])
            let worker = Task { try await host.runBurst() }
            let started = try await eventually(timeout: .seconds(15)) { try await host.record(id)["state"] == "started" }
            #expect(started)
            // Flushed 200 ms after it was printed; a loaded machine gets some slack.
            let seen = try await eventually(timeout: .seconds(2)) { try await host.log(id).text.contains("early-line") }
            #expect(seen)
            #expect(try await !host.log(id).text.contains("late-line"), "the build is still running")
            let heartbeat = try await host.redis.send(["HGET", host.keys.worker(vm: "worker-1"), "state"]).string
            #expect(heartbeat == "busy")
            #expect(try await host.redis.send(["HGET", host.keys.worker(vm: "worker-1"), "job"]).string == id)
            #expect(try await host.int(["SISMEMBER", "tworker:workers", "testhost:worker-1"]) == 1)
            #expect(try await host.int(["PTTL", host.keys.worker(vm: "worker-1")]) > 0)
            try await worker.value
            #expect(try await host.log(id).text.contains("late-line"))
            #expect(try await host.int(["EXISTS", host.keys.worker(vm: "worker-1")]) == 0, "a stopped worker removes its heartbeat")
        }
    }

    @Test func aRerunOfTheSameIdStartsAFreshLog() async throws {
        try await TestHost.with { host in
            try await host.push(id: "rerun", script: ["echo first-run"])
            try await host.runBurst()
            try await host.push(id: "rerun", script: ["echo second-run"])
            try await host.runBurst()
            let log = try await host.log("rerun")
            #expect(!log.text.contains("first-run"))
            #expect(log.text.contains("second-run"))
            #expect(log.numbers.first == 1)
        }
    }
}
