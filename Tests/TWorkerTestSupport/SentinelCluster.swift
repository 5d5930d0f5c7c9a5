import Foundation
import RedisClient

#if canImport(Glibc)
import Glibc
#endif

/// A throwaway Redis Sentinel setup on free loopback ports: one master, one replica
/// (`--replicaof`) and three `redis-sentinel`s (quorum 2, `down-after-milliseconds 1000`,
/// `failover-timeout 5000`), each sentinel with its own writable config file in a temp
/// directory. Everything is stopped by PID. Prefer `withSentinelCluster`.
public final class SentinelCluster: Sendable {
    public static let masterName = "tworker-test"

    public let master: RedisServer
    public let replica: RedisServer
    public let sentinelPorts: [Int]
    private let sentinels: [SpawnedProcess]
    private let directory: TempDirectory

    /// `127.0.0.1:<port>` of each sentinel, as `redis.sentinels` takes them.
    public var sentinelAddresses: [String] { sentinelPorts.map { "127.0.0.1:\($0)" } }

    /// The master as the sentinels name it, for a test's own connections.
    public var endpoint: RedisEndpoint {
        .sentinel(sentinelPorts.map { RedisEndpoint.HostPort(host: "127.0.0.1", port: $0) }, masterName: Self.masterName)
    }

    private init(master: RedisServer, replica: RedisServer, sentinelPorts: [Int], sentinels: [SpawnedProcess], directory: TempDirectory) {
        self.master = master
        self.replica = replica
        self.sentinelPorts = sentinelPorts
        self.sentinels = sentinels
        self.directory = directory
    }

    public static func start() async throws -> SentinelCluster {
        let executable = try findSentinel()
        // No 5 s wait before the replica's first (diskless) sync: WAIT has no replica until then.
        let master = try await RedisServer.start(arguments: ["--repl-diskless-sync-delay", "0"])
        let replica: RedisServer
        do {
            replica = try await RedisServer.start(arguments: ["--replicaof", "127.0.0.1", String(master.port)])
        } catch {
            await master.destroy()
            throw error
        }
        let directory = try TempDirectory(prefix: "tworker-sentinel")
        var ports: [Int] = []
        var processes: [SpawnedProcess] = []
        do {
            for index in 0..<3 {
                let port = try freeLoopbackPort()
                let file = directory.path + "/sentinel-\(index).conf"
                let text = """
                port \(port)
                bind 127.0.0.1
                daemonize no
                dir \(directory.path)
                sentinel monitor \(masterName) 127.0.0.1 \(master.port) 2
                sentinel down-after-milliseconds \(masterName) 1000
                sentinel failover-timeout \(masterName) 5000
                sentinel parallel-syncs \(masterName) 1

                """
                try text.write(toFile: file, atomically: true, encoding: .utf8)
                let process = try SpawnedProcess.spawn(executable, [file], environment: [:], log: directory.path + "/sentinel-\(index).log")
                ports.append(port)
                processes.append(process)
            }
            let cluster = SentinelCluster(master: master, replica: replica, sentinelPorts: ports, sentinels: processes, directory: directory)
            try await cluster.waitUntilReady()
            return cluster
        } catch {
            for process in processes { await process.kill9() }
            await replica.destroy()
            await master.destroy()
            directory.remove()
            throw error
        }
    }

    /// Until every sentinel knows the replica and the two other sentinels (they meet through
    /// the master's hello channel, every 2 s): only then can they agree on a failover.
    private func waitUntilReady() async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        let replicaConnection = RedisConnection(endpoint: replica.endpoint, connectTimeout: .milliseconds(500), commandTimeout: .seconds(2))
        defer { replicaConnection.close() }
        // The replica in sync first: until then no write can be confirmed by WAIT.
        while (try? await replicaConnection.send(["INFO", "replication"]))?.string?.contains("master_link_status:up") != true {
            guard ContinuousClock.now < deadline else {
                throw TestSupportError("the replica did not sync with the master within 20 s:\n\(replica.logTail())")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        for port in sentinelPorts {
            let connection = RedisConnection(endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: port)),
                                             connectTimeout: .milliseconds(500), commandTimeout: .seconds(2))
            defer { connection.close() }
            while true {
                let replicas = try? await connection.send(["SENTINEL", "replicas", Self.masterName])
                let others = try? await connection.send(["SENTINEL", "sentinels", Self.masterName])
                if (replicas?.array?.count ?? 0) >= 1, (others?.array?.count ?? 0) >= 2 { break }
                guard ContinuousClock.now < deadline else {
                    throw TestSupportError("sentinel on port \(port) did not see the replica and the other sentinels within 20 s:\n\(logTail())")
                }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// SIGKILL to the master: no goodbye to the replica or the sentinels.
    public func killMaster() {
        if master.pid > 0 { kill(master.pid, SIGKILL) }
    }

    /// Waits until a sentinel names a master other than the original one; returns its port.
    public func waitForFailover(timeout: Duration = .seconds(30)) async throws -> Int {
        let connection = RedisConnection(endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: sentinelPorts[0])),
                                         connectTimeout: .milliseconds(500), commandTimeout: .seconds(2))
        defer { connection.close() }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let reply = try? await connection.send(["SENTINEL", "get-master-addr-by-name", Self.masterName]),
               let port = reply.array?.last?.int, Int(port) != master.port {
                return Int(port)
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw TestSupportError("no failover within \(timeout):\n\(logTail())")
    }

    /// Sentinels, replica and master stopped, their directories removed.
    public func destroy() async {
        for process in sentinels { await process.kill9() }
        await replica.destroy()
        await master.destroy()
        directory.remove()
    }

    public func logTail(lines: Int = 15) -> String {
        (0..<3).map { index in
            let text = (try? String(contentsOfFile: directory.path + "/sentinel-\(index).log", encoding: .utf8)) ?? ""
            return "sentinel \(index):\n" + text.split(separator: "\n").suffix(lines).joined(separator: "\n")
        }.joined(separator: "\n")
    }

    private static func findSentinel() throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let candidates = ["/usr/bin/redis-sentinel"] + path.split(separator: ":").map { "\($0)/redis-sentinel" }
        guard let found = candidates.first(where: { access($0, X_OK) == 0 }) else {
            throw TestSupportError("redis-sentinel not found in /usr/bin or on PATH (apt-get install redis-sentinel; scripts/install-deps)")
        }
        return found
    }
}

/// Starts a `SentinelCluster`, runs `body` with it and always destroys it.
public func withSentinelCluster<T>(_ body: (SentinelCluster) async throws -> T) async throws -> T {
    let cluster = try await SentinelCluster.start()
    do {
        let result = try await body(cluster)
        await cluster.destroy()
        return result
    } catch {
        await cluster.destroy()
        throw error
    }
}
