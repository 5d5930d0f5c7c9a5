import RedisClient
import Testing

/// Finding the master through Sentinel, with fakes for the sentinels and the servers they name.
@Suite struct SentinelDiscoveryTests {
    typealias HostPort = RedisEndpoint.HostPort

    /// A fake world: what each sentinel says, and each server's ROLE; records every call.
    final class World: @unchecked Sendable {
        var says: [HostPort: Result<HostPort?, RedisError>] = [:]
        var roles: [HostPort: String] = [:]
        var unreachable: Set<HostPort> = []
        var calls: [String] = []
        var closed: [HostPort] = []

        func discover(_ sentinels: [HostPort]) throws -> SentinelDiscovery.Found<HostPort> {
            try SentinelDiscovery.discover(
                sentinels: sentinels, masterName: "builds",
                ask: { sentinel in
                    self.calls.append("ask \(sentinel)")
                    return try (self.says[sentinel] ?? .failure(.connectionFailed("refused"))).get()
                },
                open: { server in
                    self.calls.append("open \(server)")
                    if self.unreachable.contains(server) { throw RedisError.connectionFailed("\(server): Connection refused") }
                    return server
                },
                role: { server in
                    self.calls.append("role \(server)")
                    return self.roles[server] ?? ""
                },
                close: { server in self.closed.append(server) })
        }
    }

    let s1 = HostPort(host: "127.0.0.1", port: 26379)
    let s2 = HostPort(host: "127.0.0.1", port: 26380)
    let s3 = HostPort(host: "127.0.0.1", port: 26381)
    let old = HostPort(host: "127.0.0.1", port: 6379)
    let new = HostPort(host: "127.0.0.1", port: 6380)

    @Test func theFirstSentinelThatNamesAMasterWins() throws {
        let world = World()
        world.says = [s1: .success(new), s2: .success(new)]
        world.roles = [new: "master"]
        let found = try world.discover([s1, s2, s3])
        #expect(found.master == new)
        #expect(found.sentinelIndex == 0)
        #expect(world.calls == ["ask \(s1)", "open \(new)", "role \(new)"])
        #expect(world.closed.isEmpty)
    }

    @Test func aStaleSentinelNamingAReplicaIsPassedOver() throws {
        let world = World()
        // s1 has not seen the failover: it names the old master, which came back as a replica.
        world.says = [s1: .success(old), s2: .success(new), s3: .success(new)]
        world.roles = [old: "slave", new: "master"]
        let found = try world.discover([s1, s2, s3])
        #expect(found.master == new)
        #expect(found.sentinelIndex == 1)
        #expect(world.calls == ["ask \(s1)", "open \(old)", "role \(old)", "ask \(s2)", "open \(new)", "role \(new)"])
        #expect(world.closed == [old])
    }

    @Test func deadSentinelsUnknownNamesAndDeadMastersAreSkipped() throws {
        let world = World()
        world.says = [s1: .failure(.connectionFailed("127.0.0.1:26379: Connection refused")), s2: .success(nil), s3: .success(new)]
        world.roles = [new: "master"]
        let found = try world.discover([s1, s2, s3])
        #expect(found.sentinelIndex == 2)
        #expect(world.calls == ["ask \(s1)", "ask \(s2)", "ask \(s3)", "open \(new)", "role \(new)"])
    }

    @Test func noMasterAnywhereIsARetryableErrorNamingEverySentinel() throws {
        let world = World()
        // Mid-failover: everyone still names the dead master.
        world.says = [s1: .success(old), s2: .success(old), s3: .success(nil)]
        world.unreachable = [old]
        do {
            _ = try world.discover([s1, s2, s3])
            Issue.record("discovery found a master where there is none")
        } catch let error as RedisError {
            #expect(error.isRetryable)
            #expect(error == .connectionFailed(
                "no sentinel led to master 'builds' (127.0.0.1:26379: names 127.0.0.1:6379: redis connection failed: 127.0.0.1:6379: Connection refused; "
                + "127.0.0.1:26380: names 127.0.0.1:6379: redis connection failed: 127.0.0.1:6379: Connection refused; "
                + "127.0.0.1:26381: does not know master 'builds')"))
        }
        #expect(world.closed.isEmpty)
    }

    @Test func repliesAreReadStrictly() throws {
        #expect(try SentinelDiscovery.masterAddress(from: .array([.bulk(Array("10.0.0.5".utf8)), .bulk(Array("6380".utf8))]))
            == HostPort(host: "10.0.0.5", port: 6380))
        #expect(try SentinelDiscovery.masterAddress(from: .null) == nil)
        #expect(throws: RedisError.self) { try SentinelDiscovery.masterAddress(from: .array([.bulk(Array("h".utf8))])) }
        #expect(throws: RedisError.self) { try SentinelDiscovery.masterAddress(from: .array([.bulk(Array("h".utf8)), .bulk(Array("0".utf8))])) }
        #expect(throws: RedisError.self) { try SentinelDiscovery.masterAddress(from: .error("ERR unknown command")) }
        #expect(try SentinelDiscovery.role(from: .array([.bulk(Array("master".utf8)), .integer(0), .array([])])) == "master")
        #expect(try SentinelDiscovery.role(from: .array([.bulk(Array("slave".utf8))])) == "slave")
        #expect(try SentinelDiscovery.role(from: .integer(1)) == "")
        #expect(SentinelDiscovery.switchedMaster(in: "builds 127.0.0.1 6379 127.0.0.1 6380", masterName: "builds") == new)
        #expect(SentinelDiscovery.switchedMaster(in: "other 127.0.0.1 6379 127.0.0.1 6380", masterName: "builds") == nil)
        #expect(SentinelDiscovery.switchedMaster(in: "builds 127.0.0.1 6379", masterName: "builds") == nil)
        #expect(SentinelDiscovery.switchedMaster(in: "builds a 1 b x", masterName: "builds") == nil)
    }

    @Test func aDemotionIsSeenInAReplyOrInsideAnExec() {
        #expect(SentinelDiscovery.mentionsReadOnly([.status("OK"), .error("READONLY You can't write against a read only replica.")]))
        #expect(SentinelDiscovery.mentionsReadOnly([.error("UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)")]))
        #expect(SentinelDiscovery.mentionsReadOnly([.status("OK"), .status("QUEUED"), .array([.integer(1), .error("READONLY x")])]))
        #expect(!SentinelDiscovery.mentionsReadOnly([.error("WRONGTYPE Operation against a key holding the wrong kind of value"), .integer(1)]))
        #expect(!SentinelDiscovery.mentionsReadOnly([.bulk(Array("READONLY".utf8))]))
    }

    @Test func hostPortParsing() throws {
        #expect(try HostPort(parsing: "127.0.0.1:26379") == s1)
        #expect(try HostPort(parsing: "[::1]:5") == HostPort(host: "::1", port: 5))
        #expect(HostPort(host: "::1", port: 5).description == "[::1]:5")
        for bad in ["", "host", ":1", "h:", "h:x", "h:65536", "h:1:2", "[::1]", "[::1]5", "a b:1"] {
            #expect(throws: RedisURLError.self, "\(bad)") { try HostPort(parsing: bad) }
        }
    }

    @Test func theEndpointDescribesItselfWithoutThePassword() {
        let endpoint = RedisEndpoint.sentinel([s1, s2], masterName: "builds",
                                              credentialsFrom: RedisEndpoint(address: .tcp(host: "x", port: 1), password: "pw", database: 2))
        #expect(endpoint.description == "sentinel://:***@127.0.0.1:26379,127.0.0.1:26380/builds/2")
        #expect(endpoint.password == "pw")
    }
}
