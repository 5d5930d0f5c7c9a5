import Foundation
import RedisClient
import Testing
import TWorkerCore
import TWorkerTestSupport

/// hiredis 0.14 has no TLS, so Redis on another host is reached through a tunnel: here real
/// `spiped` (Debian package) on both ends, `-d` in front of redis-server and `-e` where tworker
/// runs, with a key made by dd. `tworker enqueue` and `tworker work` only ever see the local end.
@Suite(.tags(.endToEnd))
struct RedisTunnelTests {
    @Test func aJobRunsThroughAnSpipedTunnel() async throws {
        let spiped = try #require(["/usr/bin/spiped", "/usr/local/bin/spiped"].first { FileManager.default.isExecutableFile(atPath: $0) },
                                  "spiped not installed (apt-get install spiped; scripts/install-deps)")
        try await TestHost.with { host in
            let key = host.directory.path + "/spiped.key"
            let dd = try SpawnedProcess.spawn("/bin/dd", ["if=/dev/urandom", "of=\(key)", "bs=32", "count=1"], environment: [:],
                                              log: host.directory.path + "/dd.log")
            #expect(await dd.waitForExit(timeout: .seconds(10)) == 0)
            let serverPort = try freeLoopbackPort()
            let clientPort = try freeLoopbackPort()
            // The server end decrypts and forwards to redis-server; the client end encrypts.
            let server = try SpawnedProcess.spawn(spiped, ["-F", "-d", "-s", "[127.0.0.1]:\(serverPort)", "-t", "[127.0.0.1]:\(host.redisServer.port)", "-k", key],
                                                  environment: [:], log: host.directory.path + "/spiped-d.log")
            let client = try SpawnedProcess.spawn(spiped, ["-F", "-e", "-s", "[127.0.0.1]:\(clientPort)", "-t", "[127.0.0.1]:\(serverPort)", "-k", key],
                                                  environment: [:], log: host.directory.path + "/spiped-e.log")
            defer {
                kill(server.pid, SIGKILL)
                kill(client.pid, SIGKILL)
            }
            let tunnel = RedisConnection(endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: clientPort)),
                                         connectTimeout: .seconds(1), commandTimeout: .seconds(2))
            defer { tunnel.close() }
            let up = await eventually(timeout: .seconds(10)) { (try? await tunnel.send(["PING"])) == .status("PONG") }
            try #require(up, "the tunnel never answered PING:\n\(server.output)\n\(client.output)")
            // Bytes that did not come through spiped's encryption are refused at the server end.
            let raw = RedisConnection(endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: serverPort)),
                                      connectTimeout: .seconds(1), commandTimeout: .seconds(2))
            defer { raw.close() }
            #expect((try? await raw.send(["PING"])) == nil, "the server end answered an unencrypted client")

            try host.writeConfig("")
            let common = ["--env", "test", "--config-dir", host.configDir]
            let tunnelled = ["REDIS_URL": "redis://127.0.0.1:\(clientPort)"]
            let marker = host.directory.path + "/tunnel.txt"
            let enqueued = try await host.cli(["enqueue", "--script", "echo through-the-tunnel >> \(marker)"] + common, environment: tunnelled)
            #expect(enqueued.status == 0, "\(enqueued.err)")
            let id = enqueued.out.trimmingCharacters(in: .whitespacesAndNewlines)
            let worked = try await host.cli(["work", "--burst"] + common, environment: tunnelled)
            #expect(worked.status == 0, "\(worked.err)")
            // Read back on redis-server itself: the job went through the tunnel both ways.
            #expect(try await host.record(id)["state"] == "passed")
            #expect((try? String(contentsOfFile: marker, encoding: .utf8)) == "through-the-tunnel\n")
        }
    }
}
