import Foundation
import Logging
import RedisClient
import Testing
@testable import TWorkerCore

/// `redis.sentinels`, `redis.master_name`, `redis.wait_*`: parsing, the `file:line` problems,
/// and the endpoint every command then uses.
@Suite struct SentinelConfigTests {
    @Test func sentinelsAndMasterNameMakeASentinelEndpointWithoutRedisURL() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "redis:\n  sentinels: [\"127.0.0.1:26379\", \"[::1]:26380\", \"sentinel.internal:26381\"]\n  master_name: builds\n")
        let config = try dir.loader().load().config
        #expect(config.redis.sentinels == ["127.0.0.1:26379", "[::1]:26380", "sentinel.internal:26381"])
        #expect(config.redis.masterName == "builds")
        #expect(!config.redis.usesEmbedded)
        // With sentinels there is a replica to confirm the writes that must survive a failover.
        #expect(config.redis.waitReplicas == 1)
        #expect(config.redis.waitTimeout == 1000)
        let endpoint = try #require(try RedisSetup.externalEndpoint(config))
        #expect(endpoint.address == .sentinel(sentinels: [.init(host: "127.0.0.1", port: 26379), .init(host: "::1", port: 26380),
                                                         .init(host: "sentinel.internal", port: 26381)], masterName: "builds"))
        #expect(endpoint.password == nil)
        #expect(endpoint.database == 0)
    }

    @Test func aRedisURLBesideSentinelsGivesOnlyCredentialsAndDatabase() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "redis:\n  url: redis://:s3cret@ignored:1/3\n  sentinels: [\"127.0.0.1:26379\"]\n  master_name: m\n  wait_replicas: 2\n  wait_timeout: 250\n")
        let config = try dir.loader().load().config
        let endpoint = try #require(try RedisSetup.externalEndpoint(config))
        #expect(endpoint.address == .sentinel(sentinels: [.init(host: "127.0.0.1", port: 26379)], masterName: "m"))
        #expect(endpoint.password == "s3cret")
        #expect(endpoint.database == 3)
        #expect(ReplicaWait(config: config) == ReplicaWait(replicas: 2, timeout: 250))
        #expect(ReplicaWait(config: config)?.command == ["WAIT", "2", "250"])
    }

    @Test func withoutSentinelsNothingWaitsAndTheURLIsUsedAsBefore() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "redis:\n  url: redis://127.0.0.1:6390\n")
        let config = try dir.loader().load().config
        #expect(config.redis.waitReplicas == 0)
        #expect(ReplicaWait(config: config) == nil)
        #expect(try RedisSetup.externalEndpoint(config)?.address == .tcp(host: "127.0.0.1", port: 6390))
        try dir.write("worker.yml", "queue: builds\n")
        #expect(try dir.loader().load().config.redis.usesEmbedded)
    }

    @Test func theEnvironmentSetsThemAsAMasterPinsThemForItsWorkers() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "queue: builds\n")
        let config = try dir.loader(environment: ["TWORKER_REDIS_SENTINELS": "127.0.0.1:1, 127.0.0.1:2", "TWORKER_REDIS_MASTER_NAME": "m"]).load().config
        #expect(config.redis.sentinels == ["127.0.0.1:1", "127.0.0.1:2"])
        #expect(config.redis.masterName == "m")
    }

    @Test func problemsNameTheFileLineAndKey() throws {
        let dir = try TempConfigDir()
        let file = dir.file("worker.yml")
        try dir.write("worker.yml", "queue: builds\nredis:\n  sentinels: [\"127.0.0.1:26379\"]\n")
        #expect(configProblems(dir.loader()) == [
            "\(file):3: redis.master_name: must be set with redis.sentinels (the name in the sentinels' `sentinel monitor <name> ...`)",
        ])
        try dir.write("worker.yml", "redis:\n  master_name: m\n")
        #expect(configProblems(dir.loader()) == ["\(file):2: redis.master_name: needs redis.sentinels (the host:port of each sentinel)"])
        try dir.write("worker.yml", "redis:\n  master_name: m\n  sentinels:\n    - 127.0.0.1:26379\n    - sentinel.internal\n    - \"h:0\"\n    - \"::1:5\"\n")
        #expect(configProblems(dir.loader()) == [
            "\(file):3: redis.sentinels: item 2: 'sentinel.internal' is not host:port ([ipv6]:port for an IPv6 address)",
            "\(file):3: redis.sentinels: item 3: 'h:0' has port '0', which is not in 1-65535",
            "\(file):3: redis.sentinels: item 4: '::1:5' is not host:port ([ipv6]:port for an IPv6 address)",
        ])
        try dir.write("worker.yml", "redis:\n  url: unix:///run/redis.sock\n  master_name: m\n  sentinels: [\"127.0.0.1:1\"]\n")
        #expect(configProblems(dir.loader()).first?.hasPrefix("\(file):2: redis.url: a unix:// URL cannot go with redis.sentinels") == true)
        try dir.write("worker.yml", "redis:\n  wait_timeout: 0\n")
        #expect(configProblems(dir.loader()) == ["\(file):2: redis.wait_timeout: must be between 1 and 60000, got 0"])
        try dir.write("worker.yml", "redis:\n  sentinels: 127.0.0.1:1\n")
        #expect(configProblems(dir.loader()).first?.hasPrefix("\(file):2: redis.sentinels: expected a list of strings") == true)
    }

    @Test func rediss_isRefusedWithAPointerToTheTunnelSection() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "redis:\n  url: rediss://redis.internal:6380\n")
        let problems = configProblems(dir.loader())
        #expect(problems.count == 1)
        #expect(problems.first?.hasPrefix(dir.file("worker.yml") + ":2: redis.url: 'rediss://redis.internal:6380' uses TLS (rediss://), which hiredis 0.14 cannot speak") == true, "\(problems)")
        #expect(problems.first?.contains("Redis across hosts: spiped or stunnel") == true)
    }

    @Test func aShortfallShortensTheWaitUntilAReplicaConfirmsAgain() {
        let wait = ReplicaWait(replicas: 1, timeout: 1000)
        let copy = wait  // the worker's queues hand copies around: they share what they learnt
        let logger = Logger(label: "test")
        #expect(wait.command == ["WAIT", "1", "1000"])
        #expect(wait.check(.integer(1), what: "x", logger: logger))
        #expect(!wait.check(.integer(0), what: "x", logger: logger))
        #expect(copy.isDegraded)
        #expect(copy.command == ["WAIT", "1", "10"])
        #expect(!copy.check(.error("ERR WAIT cannot be used with replica instances"), what: "x", logger: logger))
        #expect(!wait.check(nil, what: "x", logger: logger))
        #expect(wait.command == ["WAIT", "1", "10"])
        #expect(copy.check(.integer(2), what: "x", logger: logger))
        #expect(!wait.isDegraded)
        #expect(wait.command == ["WAIT", "1", "1000"])
        // Never longer than the configured timeout.
        let short = ReplicaWait(replicas: 2, timeout: 5)
        short.check(.integer(1), what: "x", logger: logger)
        #expect(short.command == ["WAIT", "2", "5"])
    }

    @Test func aChangeOfSentinelsNeedsARestartOfTheMaster() throws {
        var old = WorkerConfig.defaults(env: "test")
        old.redis.sentinels = ["127.0.0.1:1"]
        old.redis.masterName = "m"
        var new = old
        new.redis.sentinels = ["127.0.0.1:2"]
        new.redis.masterName = "n"
        #expect(Master.restartOnlyChange(from: old, to: new) == "redis.sentinels, redis.master_name")
    }
}
