import Foundation
import RedisClient
import Testing
import TWorkerCore
import TWorkerTestSupport

/// The documented production shape: the master started as root, `user`/`group` set, the
/// embedded Redis and a fresh `state_dir`. A real unprivileged account is made for the test
/// (CI runs as root) and removed after it.
@Suite(.tags(.endToEnd), .serialized, .enabled(if: geteuid() == 0, "needs root to make an account and start a root master"))
struct WorkersAsUserTests {
    /// A system account with a group of its own, gone again when `body` returns.
    static func withAccount(_ body: (String) async throws -> Void) async throws {
        let name = "twbuild" + String(UUID().uuidString.lowercased().prefix(6))
        let made = try await run("/usr/sbin/useradd", ["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
        try #require(made.status == 0, "useradd: \(made.output)")
        do {
            try await body(name)
        } catch {
            _ = try? await run("/usr/sbin/userdel", [name])
            throw error
        }
        _ = try await run("/usr/sbin/userdel", [name])
    }

    static func run(_ executable: String, _ arguments: [String]) async throws -> (status: Int32?, output: String) {
        let log = "/tmp/tworker-account-\(UUID().uuidString).log"
        defer { unlink(log) }
        let process = try SpawnedProcess.spawn(executable, arguments, environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], log: log)
        return (await process.waitForExit(timeout: .seconds(30)), process.output)
    }

    /// A host as the README sets one up for `user`: a root-owned directory other accounts may
    /// pass through (like /var/lib), the documented defaults (local provider, embedded Redis,
    /// the HTTP listener on 127.0.0.1:9252) but for where state_dir is.
    struct RootMasterHost {
        let directory: TempDirectory
        let user: String
        var configDir: String { directory.path + "/config" }
        var stateDir: String { directory.path + "/var" }
        var socket: String { stateDir + "/redis/redis.sock" }
        var environment: [String: String] { ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": directory.path] }

        init(user: String) throws {
            self.user = user
            directory = try TempDirectory(prefix: "tworker-asuser")
            chmod(directory.path, 0o711)
            try FileManager.default.createDirectory(atPath: directory.path + "/config", withIntermediateDirectories: true)
            try "provider: local\nstate_dir: \(directory.path)/var\nuser: \(user)\ngroup: \(user)\nheartbeat:\n  interval: 1\n"
                .write(toFile: directory.path + "/config/worker.yml", atomically: true, encoding: .utf8)
        }

        func cli(_ arguments: [String]) async throws -> (status: Int32?, output: String) {
            let process = try SpawnedProcess.spawn(try tworkerExecutable(), arguments + ["--config-dir", configDir], environment: environment,
                                                   log: directory.path + "/cli-\(UUID().uuidString.prefix(6)).log")
            return (await process.waitForExit(timeout: .seconds(60)), process.output)
        }

        /// `tworker start` as root, once its worker is ready.
        func startMaster() async throws -> SpawnedProcess {
            let master = try SpawnedProcess.spawn(try tworkerExecutable(), ["start", "--config-dir", configDir], environment: environment,
                                                  log: directory.path + "/master.log")
            let ready = await eventually(timeout: .seconds(30)) { master.output.contains("worker ready") }
            if !ready { ProcessProbe.killTree(master.pid) }
            try #require(ready, "the worker never got ready as \(user):\n\(master.output)")
            return master
        }
    }

    @Test func aRootMasterRunsItsWorkersAndTheirBuildsAsTheConfiguredUser() async throws {
        try await Self.withAccount { user in
            let host = try RootMasterHost(user: user)
            defer { host.directory.remove() }
            let (stateDir, cli) = (host.stateDir, host.cli)
            let master = try await host.startMaster()
            defer { if !processIsGone(master.pid) { ProcessProbe.killTree(master.pid) } }

            let enqueued = try await cli(["enqueue", "--script", "id -un", "--script", "id -gn",
                                          "--script", "touch made-by-build && stat -c 'owner=%U' made-by-build"])
            try #require(enqueued.status == 0, "\(enqueued.output)")
            let id = try #require(enqueued.output.split(separator: "\n").last.map(String.init))
            let followed = try await cli(["logs", id, "--follow"])
            #expect(followed.status == 0, "\(followed.output)\n\(master.output)")
            let lines = followed.output.split(separator: "\n").map(String.init)
            #expect(lines.filter { $0 == user }.count == 2, "the build ran as \(user):\(user):\n\(followed.output)")
            #expect(lines.contains("owner=\(user)"), "\(followed.output)")
            #expect(followed.output.contains("(passed)"), "\(followed.output)\n\(master.output)")

            // A group the workers share, modes that keep every other account out.
            let account = try #require(getpwnam(user)?.pointee)
            var info = stat()
            for path in [stateDir, stateDir + "/redis"] {
                try #require(stat(path, &info) == 0)
                #expect(info.st_gid == account.pw_gid && info.st_mode & 0o007 == 0 && info.st_mode & 0o050 == 0o050,
                        "\(path): gid \(info.st_gid), mode \(String(info.st_mode & 0o777, radix: 8))")
            }
            // The workers, as the account, hold the embedded server's users lock (it outlives no
            // worker, their master killed or not): the lock files are the group's.
            for lock in ["start.lock", "users.lock"] {
                try #require(stat(stateDir + "/redis/" + lock, &info) == 0)
                #expect(info.st_gid == account.pw_gid && info.st_mode & 0o777 == 0o660,
                        "\(lock): gid \(info.st_gid), mode \(String(info.st_mode & 0o777, radix: 8))")
            }
            let status = try ControlClient.send(ControlRequest(command: .status), path: MasterPaths(stateDir: stateDir).socket, timeoutSeconds: 5).status
            let workerPID = try #require(status?.workers.first?.pid)
            #expect(flockHolders(of: stateDir + "/redis/users.lock").contains(workerPID), "the worker running as \(user) holds the users lock")
            let socket = stateDir + "/redis/redis.sock"
            let asWorker = try await Self.run("/usr/bin/setpriv", ["--reuid=\(user)", "--regid=\(user)", "--init-groups",
                                                                    "redis-cli", "-s", socket, "ping"])
            #expect(asWorker.output.contains("PONG"), "the workers' account reaches Redis: \(asWorker.output)")
            let asNobody = try await Self.run("/usr/bin/setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                                                   "redis-cli", "-s", socket, "ping"])
            #expect(!asNobody.output.contains("PONG"), "another account is kept out: \(asNobody.output)")
            let workspace = stateDir + "/local/worker-1"
            try #require(stat(workspace, &info) == 0)
            #expect(info.st_uid == account.pw_uid, "the workspace is the workers'")

            master.signal(SIGTERM)
            #expect(await master.waitForExit(timeout: .seconds(30)) == 0, "\(master.output)")
            // The master was the embedded server's last user.
            #expect(!FileManager.default.fileExists(atPath: socket), "\(master.output)")
        }
    }

    /// Workers as the account outlive their SIGKILLed root master until their jobs end, holding
    /// the embedded server's users lock all along; the last cannot signal root's server, so the
    /// next command to leave stops it.
    @Test func workersAsTheAccountKeepTheEmbeddedRedisOfAKilledRootMaster() async throws {
        try await Self.withAccount { user in
            let host = try RootMasterHost(user: user)
            defer { host.directory.remove() }
            let (stateDir, socket, cli) = (host.stateDir, host.socket, host.cli)
            func serverAnswers() async -> Bool {
                let connection = RedisConnection(endpoint: try! RedisEndpoint(url: "unix://" + socket), connectTimeout: .seconds(1), commandTimeout: .seconds(1))
                defer { connection.close() }
                return (try? await connection.send(["PING"]))?.string == "PONG"
            }

            let master = try await host.startMaster()
            defer { if !processIsGone(master.pid) { ProcessProbe.killTree(master.pid) } }
            let status = try ControlClient.send(ControlRequest(command: .status), path: MasterPaths(stateDir: stateDir).socket, timeoutSeconds: 5).status
            let worker = try #require(status?.workers.first?.pid)
            defer { if !processIsGone(worker) { ProcessProbe.killTree(worker) } }

            let enqueued = try await cli(["enqueue", "--script", "sleep 5", "--script", "echo done-as-$(id -un)"])
            try #require(enqueued.status == 0, "\(enqueued.output)")
            let id = try #require(enqueued.output.split(separator: "\n").last.map(String.init))
            let redis = RedisConnection(endpoint: try RedisEndpoint(url: "unix://" + socket))
            defer { redis.close() }
            let started = await eventually(timeout: .seconds(20)) {
                (try? await redis.send(["HGET", "tworker:job:\(id)", "state"]))?.string == "started"
            }
            try #require(started, "\(master.output)")

            await master.kill9()
            let logs = try await cli(["logs", id])
            #expect(logs.status == 0, "\(logs.output)")
            #expect(await serverAnswers(), "a command leaving stopped the server under the worker")
            #expect(await eventually(timeout: .seconds(40)) { processIsGone(worker) }, "the worker did not finish its job and exit")
            #expect(await serverAnswers(), "left behind by a worker that may not signal it, and reachable")
            let job = try await cli(["job", id])
            #expect(job.output.contains("passed"), "\(job.output)")
            #expect(await eventually(timeout: .seconds(10)) { !FileManager.default.fileExists(atPath: socket) }, "the next command to leave stopped it")
            let log = try await cli(["logs", id])
            #expect(log.output.contains("done-as-\(user)"), "\(log.output)")
        }
    }

    @Test func qemuWorkersGetTheVMFilesAnImportAsRootMade() async throws {
        try await Self.withAccount { user in
            let directory = try TempDirectory(prefix: "tworker-asuser")
            defer { directory.remove() }
            let stateDir = directory.path + "/var"
            let vmDirectory = stateDir + "/qemu/worker-1"
            try FileManager.default.createDirectory(atPath: vmDirectory, withIntermediateDirectories: true)
            try Data().write(to: URL(fileURLWithPath: vmDirectory + "/disk.qcow2"))
            var config = WorkerConfig.defaults(env: "test")
            config.provider = .qemu
            config.stateDir = stateDir
            config.redis.url = "redis://127.0.0.1:6379"
            let account = try #require(try WorkerAccount.resolve(SupervisorSettings(user: user, group: user)))
            try WorkerFileAccess.prepare(config, for: account)
            var info = stat()
            for path in [stateDir + "/qemu", vmDirectory, vmDirectory + "/disk.qcow2"] {
                try #require(stat(path, &info) == 0)
                #expect(info.st_uid == account.uid && info.st_gid == account.gid, "\(path) is the workers'")
            }
            try #require(stat(stateDir, &info) == 0)
            #expect(info.st_gid == account.gid && info.st_mode & 0o007 == 0)
        }
    }
}
