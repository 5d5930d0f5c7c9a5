import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

@Suite(.tags(.endToEnd))
struct CommandLineTests {
    @Test func enqueueWorkJobAndLogsFromTheCommandLine() async throws {
        try await TestHost.with { host in
            let common = ["--env", "test", "--config-dir", host.configDir]
            let enqueued = try await host.cli(["enqueue"] + common + ["--script", "echo cli-build", "--script", "echo second"])
            #expect(enqueued.status == 0, "\(enqueued.err)")
            let id = enqueued.out.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(!id.isEmpty && !id.contains(" ") && !id.contains("\n"), "prints only the id: '\(enqueued.out)'")
            #expect(try await host.record(id)["state"] == "queued")
            #expect(try await host.record(id)["queued_at"].flatMap(Timestamp.parse) != nil)

            let work = try await host.cli(["work"] + common + ["--burst", "--vm", "worker-2"])
            #expect(work.status == 0, "\(work.err)")

            let job = try await host.cli(["job", id] + common + ["--json"])
            #expect(job.status == 0)
            guard case .object(let record)? = try? JSONValue.parse(Array(job.out.utf8)) else {
                Issue.record("job --json is not an object: \(job.out)")
                return
            }
            #expect(record["state"] == .string("passed"))
            #expect(record["vm"] == .string("worker-2"))
            #expect(record["queued_at"] != nil)

            let text = try await host.cli(["job", id] + common)
            #expect(text.out.contains("state: passed"))

            let logs = try await host.cli(["logs", id] + common)
            #expect(logs.status == 0)
            #expect(logs.out.contains("$ echo cli-build\ncli-build\n$ echo second\nsecond\n"))
            #expect(logs.out.hasSuffix("Done. Your build exited with 0 (passed).\n"))

            let followed = try await host.cli(["logs", id, "--follow"] + common)
            #expect(followed.out == logs.out, "--follow ends at the final entry")

            let missing = try await host.cli(["job", "no-such-job"] + common)
            #expect(missing.status == 1)
            #expect(missing.err.contains("no job 'no-such-job'"))
        }
    }

    @Test func enqueueFromAFileAndFromStdin() async throws {
        try await TestHost.with { host in
            let common = ["--env", "test", "--config-dir", host.configDir]
            let file = host.directory.path + "/payload.json"
            try #"{"config":{"script":"echo from-file"}}"#.write(toFile: file, atomically: true, encoding: .utf8)
            let fromFile = try await host.cli(["enqueue", "--file", file] + common)
            #expect(fromFile.status == 0, "\(fromFile.err)")
            let fromStdin = try await host.cli(["enqueue", "--file", "-", "--queue", "other"] + common, stdin: #"{"id":"stdin-1","config":{"script":"true"}}"#)
            #expect(fromStdin.out == "stdin-1\n")
            #expect(try await host.int(["LLEN", "resque:queue:other"]) == 1)
            #expect(try await host.int(["SISMEMBER", "resque:queues", "other"]) == 1)

            let invalid = try await host.cli(["enqueue", "--file", "-"] + common, stdin: #"{"id":"x","config":{"env":["1BAD=x"]}}"#)
            #expect(invalid.status == 65)
            #expect(invalid.err.contains("env"))
        }
    }

    @Test func enqueueARepositoryPathUsesItsHead() async throws {
        try await TestHost.with { host in
            let repo = host.directory.path + "/myrepo"
            try FileManager.default.createDirectory(atPath: repo, withIntermediateDirectories: true)
            try "hello from the repo\n".write(toFile: repo + "/README", atomically: true, encoding: .utf8)
            let setup = try SpawnedProcess.spawn("/bin/bash", ["-c", "cd \(repo) && git init -q -b trunk && git add README && git -c user.email=t@t -c user.name=t commit -qm init"],
                                                 environment: ["PATH": "/usr/bin:/bin", "HOME": host.directory.path], log: host.directory.path + "/git.log")
            #expect(await setup.waitForExit(timeout: .seconds(20)) == 0)
            let common = ["--env", "test", "--config-dir", host.configDir]
            let enqueued = try await host.cli(["enqueue", "--repo", repo, "--script", "cat README"] + common)
            #expect(enqueued.status == 0, "\(enqueued.err)")
            let id = enqueued.out.trimmingCharacters(in: .whitespacesAndNewlines)
            try await host.runBurst()
            let log = try await host.log(id).text
            #expect(try await host.record(id)["state"] == "passed", "\(log)")
            #expect(log.contains("--branch trunk"))
            #expect(log.contains("hello from the repo"))
        }
    }

    @Test func anInvalidConfigStopsEveryCommandWithFileAndLine() async throws {
        try await TestHost.with(config: "vms:\n  count: zero\nbogus: 1\n") { host in
            let result = try await host.cli(["work", "--env", "test", "--config-dir", host.configDir, "--burst"])
            #expect(result.status == 78)
            #expect(result.err.contains("worker.test.yml:"))
            #expect(result.err.contains("vms.count"))
            #expect(result.err.contains("bogus"))
            #expect(!result.err.contains("Fatal error"))
        }
    }

    @Test func embeddedRedisIsStartedReusedAndStopped() async throws {
        let directory = try TempDirectory(prefix: "tworker-embedded")
        defer { directory.remove() }
        let configDir = directory.path + "/config"
        try FileManager.default.createDirectory(atPath: configDir, withIntermediateDirectories: true)
        try "provider: local\nstate_dir: \(directory.path)/var\nredis:\n  url: embedded\n".write(toFile: configDir + "/worker.development.yml", atomically: true, encoding: .utf8)
        let environment = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": directory.path]
        func cli(_ arguments: [String], path: String? = nil) async throws -> (Int32?, String) {
            var env = environment
            if let path { env["PATH"] = path }
            let log = directory.path + "/cli-\(UUID().uuidString).log"
            let process = try SpawnedProcess.spawn(try tworkerExecutable(), arguments + ["--config-dir", configDir], environment: env, log: log)
            return (await process.waitForExit(timeout: .seconds(60)), process.output)
        }
        let pidFile = directory.path + "/var/redis/redis.pid"
        let worker = try SpawnedProcess.spawn(try tworkerExecutable(), ["work", "--config-dir", configDir], environment: environment,
                                              log: directory.path + "/worker.log")
        let serverUp = await eventually(timeout: .seconds(15)) { FileManager.default.fileExists(atPath: pidFile) }
        #expect(serverUp, "\(worker.output)")
        let serverPID = try String(contentsOfFile: pidFile, encoding: .utf8)

        // enqueue finds the running server, uses it and leaves it running.
        let (enqueueStatus, enqueueOutput) = try await cli(["enqueue", "--script", "echo embedded-ok"])
        #expect(enqueueStatus == 0, "\(enqueueOutput)")
        let id = try #require(enqueueOutput.split(separator: "\n").last.map(String.init))
        #expect(try String(contentsOfFile: pidFile, encoding: .utf8) == serverPID, "reused, not restarted")
        let (logsStatus, logsOutput) = try await cli(["logs", id, "--follow"])
        #expect(logsStatus == 0)
        #expect(logsOutput.contains("embedded-ok"))
        #expect(FileManager.default.fileExists(atPath: directory.path + "/var/redis/appendonlydir"), "appendonly data under state_dir/redis")

        // The worker started it, so the worker's exit stops it.
        worker.signal(SIGTERM)
        #expect(await worker.waitForExit(timeout: .seconds(15)) == 0, "\(worker.output)")
        let pid = try #require(pid_t(serverPID.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(processIsGone(pid), "the embedded redis-server was stopped")

        let (missingStatus, missingOutput) = try await cli(["enqueue", "--script", "true"], path: "/nonexistent")
        #expect(missingStatus == 1)
        #expect(missingOutput.contains("tworker: redis-server not found on PATH (/nonexistent); install redis-server or set redis.url to an existing server"))
        #expect(missingOutput.split(separator: "\n").count == 1, "one clear line: \(missingOutput)")
    }
}
