import Foundation
import RedisClient
import Testing
import TWorkerCore
import TWorkerTestSupport

/// `redis.url: embedded` as a new user meets it: several commands started at the same moment
/// in several terminals share one redis-server, none stops it under another, and none leaves
/// one behind that cannot be reached.
@Suite(.tags(.endToEnd), .serialized)
struct EmbeddedRedisTests {
    /// A fresh `state_dir` with the documented defaults but for its place.
    struct Host {
        let directory: TempDirectory
        var configDir: String { directory.path + "/config" }
        var redisDirectory: String { directory.path + "/var/redis" }
        var socket: String { redisDirectory + "/redis.sock" }

        /// `extra`: YAML added to the config.
        init(extra: String = "") throws {
            directory = try TempDirectory(prefix: "tworker-embedded")
            try FileManager.default.createDirectory(atPath: configDir, withIntermediateDirectories: true)
            try "provider: local\nstate_dir: \(directory.path)/var\n\(extra)".write(toFile: configDir + "/worker.yml", atomically: true, encoding: .utf8)
        }

        func spawn(_ arguments: [String], name: String, environment extra: [String: String] = [:]) throws -> SpawnedProcess {
            try SpawnedProcess.spawn(try tworkerExecutable(), arguments + ["--config-dir", configDir],
                                     environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": directory.path]
                                        .merging(extra) { $1 },
                                     log: directory.path + "/\(name)-\(UUID().uuidString.prefix(6)).log")
        }

        /// Runs a command to its end: exit status (nil: still running after 30 s, then killed) and output.
        func run(_ arguments: [String], name: String) async throws -> (status: Int32?, output: String) {
            let process = try spawn(arguments, name: name)
            let status = await process.waitForExit(timeout: .seconds(30))
            if status == nil { await process.kill9() }
            return (status, process.output)
        }

        /// Every live redis-server serving this host's socket (its process title names the
        /// socket). A server daemonizing is two processes for a moment, parent and child: the
        /// child of a listed one is the same server.
        func servers() -> [pid_t] {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            let found = entries.compactMap { entry -> (pid: pid_t, parent: pid_t)? in
                guard let pid = pid_t(entry),
                      let comm = try? String(contentsOfFile: "/proc/\(entry)/comm", encoding: .utf8),
                      comm.hasPrefix("redis-server"),
                      let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                      let fields = stat.split(separator: ")").last?.split(separator: " "), fields.count > 2,
                      fields[0] != "Z", let parent = pid_t(fields[1]),
                      let cmdline = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(entry)/cmdline")),
                      String(decoding: cmdline, as: UTF8.self).contains(socket) else { return nil }
                return (pid, parent)
            }
            let pids = Set(found.map(\.pid))
            return found.filter { !pids.contains($0.parent) }.map(\.pid)
        }
    }

    @Test(arguments: 1...4)
    func commandsStartedAtOnceShareOneServerAndLeaveNoneBehind(round: Int) async throws {
        let host = try Host()
        defer { host.directory.remove() }
        let id = "together-\(round)"
        let job = #"{"id":"\#(id)","config":{"script":["for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.25; done"]}}"#
        try job.write(toFile: host.directory.path + "/job.json", atomically: true, encoding: .utf8)

        // Two followers, the worker and the enqueue, all at the same moment.
        let followers = try (1...2).map { try host.spawn(["logs", id, "--follow"], name: "follow-\($0)") }
        let worker = try host.spawn(["work"], name: "work")
        let enqueue = try host.spawn(["enqueue", "--file", host.directory.path + "/job.json"], name: "enqueue")

        var most = 0
        let followed = await eventually(timeout: .seconds(40)) {
            most = max(most, host.servers().count)
            return followers.allSatisfy { $0.output.contains("passed") }
        }
        #expect(followed, "followers: \(followers.map(\.output)) worker: \(worker.output)")
        #expect(await enqueue.waitForExit(timeout: .seconds(10)) == 0, "\(enqueue.output)")
        for follower in followers {
            #expect(await follower.waitForExit(timeout: .seconds(10)) == 0, "\(follower.output)")
            #expect(follower.output.contains("line-1") && follower.output.contains("line-6"), "\(follower.output)")
        }
        #expect(most == 1, "at most one redis-server on \(host.socket), saw \(most)")
        // The worker still uses the server the others started or joined: it is still there.
        #expect(host.servers().count == 1, "the worker's server was stopped under it")

        worker.signal(SIGQUIT)
        #expect(await worker.waitForExit(timeout: .seconds(20)) == 0, "\(worker.output)")
        // The last user stopped it: nothing is left that nobody can reach.
        #expect(await eventually(timeout: .seconds(5)) { host.servers().isEmpty }, "a redis-server was left on \(host.socket)")

        // And what they wrote was kept (the append-only file): a later command reads it back.
        let later = try host.spawn(["job", id], name: "job")
        #expect(await later.waitForExit(timeout: .seconds(20)) == 0, "\(later.output)")
        #expect(later.output.contains("passed"), "\(later.output)")
        #expect(await eventually(timeout: .seconds(5)) { host.servers().isEmpty })
    }

    @Test func aServerLeftBehindIsJoinedThenStoppedByItsLastUser() async throws {
        let host = try Host()
        defer { host.directory.remove() }
        // A worker killed with SIGKILL cannot stop the server it started: it stays, reachable.
        let killed = try host.spawn(["work"], name: "killed")
        #expect(await eventually(timeout: .seconds(15)) { host.servers().count == 1 }, "\(killed.output)")
        #expect(await eventually(timeout: .seconds(15)) { killed.output.contains("worker ready") }, "\(killed.output)")
        await killed.kill9()
        let left = try #require(host.servers().first)
        #expect(FileManager.default.fileExists(atPath: host.socket), "left behind, but reachable")

        // The next command joins it (no second server) and, the last to leave, stops it.
        let enqueue = try host.spawn(["enqueue", "--script", "true"], name: "enqueue")
        #expect(await enqueue.waitForExit(timeout: .seconds(20)) == 0, "\(enqueue.output)")
        #expect(!enqueue.output.contains("started embedded redis-server"), "joined the running one: \(enqueue.output)")
        #expect(await eventually(timeout: .seconds(5)) { processIsGone(left) })
        #expect(host.servers().isEmpty)
    }

    @Test func aServerWhoseSocketIsGoneIsStoppedBeforeAnotherStarts() async throws {
        let host = try Host()
        defer { host.directory.remove() }
        let killed = try host.spawn(["work"], name: "killed")
        #expect(await eventually(timeout: .seconds(15)) { killed.output.contains("worker ready") }, "\(killed.output)")
        await killed.kill9()
        let stray = try #require(host.servers().first)
        // What the issue saw: a server holding the append-only file whose socket file is gone.
        try FileManager.default.removeItem(atPath: host.socket)

        let worker = try host.spawn(["work"], name: "work")
        #expect(await eventually(timeout: .seconds(25)) { worker.output.contains("worker ready") }, "\(worker.output)")
        #expect(processIsGone(stray), "the unreachable server was stopped")
        #expect(host.servers().count == 1 && host.servers().first != stray)
        worker.signal(SIGTERM)
        #expect(await worker.waitForExit(timeout: .seconds(20)) == 0, "\(worker.output)")
        #expect(await eventually(timeout: .seconds(5)) { host.servers().isEmpty })
    }

    /// A master's workers use the server it started (their REDIS_URL is its socket) and outlive
    /// a SIGKILLed master until their running jobs end. They hold the users lock too: a command
    /// that joins and leaves meanwhile is not the last user and leaves the server up; the last
    /// worker to leave stops it.
    @Test func workersOfAKilledMasterKeepTheServerUntilTheLastOfThemLeaves() async throws {
        let host = try Host(extra: "http:\n  listen: \"\"\nheartbeat:\n  interval: 1\n")
        defer { host.directory.remove() }
        let master = try host.spawn(["start"], name: "master", environment: ["TWORKER_ALLOW_ROOT": "1"])
        defer { if !processIsGone(master.pid) { ProcessProbe.killTree(master.pid) } }
        let ready = await eventually(timeout: .seconds(30)) { master.output.contains("worker ready") }
        try #require(ready, "\(master.output)")
        let socket = MasterPaths(stateDir: host.directory.path + "/var").socket
        let status = try ControlClient.send(ControlRequest(command: .status), path: socket, timeoutSeconds: 5).status
        let worker = try #require(status?.workers.first?.pid, "\(String(describing: status))")
        defer { if !processIsGone(worker) { ProcessProbe.killTree(worker) } }
        #expect(flockHolders(of: host.redisDirectory + "/users.lock").contains(worker), "the worker holds the users lock")

        let enqueued = try await host.run(["enqueue", "--script", "sleep 6", "--script", "echo after-the-master"], name: "enqueue")
        try #require(enqueued.status == 0, "\(enqueued.output)")
        let id = try #require(enqueued.output.split(separator: "\n").last.map(String.init))
        let redis = RedisConnection(endpoint: try RedisEndpoint(url: "unix://" + host.socket))
        defer { redis.close() }
        let running = await eventually(timeout: .seconds(20)) {
            (try? await redis.send(["HGET", "tworker:job:\(id)", "state"]))?.string == "started"
        }
        try #require(running, "\(master.output)")
        let server = try #require(host.servers().first)

        // The master alone: its workers run in sessions of their own.
        await master.kill9()
        #expect(!processIsGone(worker), "the worker outlives its master until its job ends")
        // Each joins the server and leaves it; neither is its last user while the worker runs.
        let looked = try await host.run(["status"], name: "status")
        #expect(looked.status != nil, "\(looked.output)")
        let logs = try await host.run(["logs", id], name: "logs")
        #expect(logs.status == 0, "\(logs.output)")
        #expect(host.servers() == [server], "the server was stopped under the worker")

        // The worker ends its job on that server, then (its master gone) exits: the last user,
        // it stops the server.
        #expect(await eventually(timeout: .seconds(40)) { processIsGone(worker) }, "the worker did not finish its job and exit")
        #expect(await eventually(timeout: .seconds(10)) { host.servers().isEmpty }, "the last user left the server running")
        let job = try await host.run(["job", id], name: "job")
        #expect(job.status == 0 && job.output.contains("passed"), "\(job.output)")
        let log = try await host.run(["logs", id], name: "logs-after")
        #expect(log.output.contains("after-the-master"), "\(log.output)")
        #expect(await eventually(timeout: .seconds(5)) { host.servers().isEmpty })
    }

    @Test func aFollowerEndedWithCtrlCLeavesTheServerAsANormalEndWould() async throws {
        let host = try Host()
        defer { host.directory.remove() }
        let follower = try host.spawn(["logs", "nosuchjob", "--follow"], name: "follow")
        #expect(await eventually(timeout: .seconds(15)) { host.servers().count == 1 }, "\(follower.output)")
        follower.signal(SIGINT)
        #expect(await follower.waitForExit(timeout: .seconds(15)) == 128 + SIGINT, "\(follower.output)")
        #expect(await eventually(timeout: .seconds(5)) { host.servers().isEmpty }, "its last user was interrupted, the server stopped")
    }
}

/// The pids holding an flock on `path` (from /proc/locks, by the file's inode).
func flockHolders(of path: String) -> Set<pid_t> {
    var info = stat()
    guard stat(path, &info) == 0, let locks = try? String(contentsOfFile: "/proc/locks", encoding: .utf8) else { return [] }
    let inode = ":\(info.st_ino)"
    var holders: Set<pid_t> = []
    for line in locks.split(separator: "\n") {
        // `1: FLOCK  ADVISORY  READ 1234 08:01:5678 0 EOF`; blocked waiters (`->`) hold nothing.
        let fields = line.split(separator: " ")
        guard fields.count >= 6, fields[1] == "FLOCK", !line.contains("->"), fields[5].hasSuffix(inode),
              let pid = pid_t(fields[4]) else { continue }
        holders.insert(pid)
    }
    return holders
}
