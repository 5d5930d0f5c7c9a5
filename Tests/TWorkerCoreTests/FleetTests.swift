import Foundation
import Testing
@testable import TWorkerCore

struct FleetTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    func record(_ host: String, stopping: Bool = false) -> HostRecord {
        HostRecord(host: host, version: "1.2.3", pid: 4242, machine: "box-1", startedAt: Timestamp.format(now - 600),
                   heartbeatAt: Timestamp.format(now - 2), workers: 3, stopping: stopping)
    }

    // MARK: - Host record and beat

    @Test func aHostRecordRoundTripsThroughItsHashAndAnEmptyHashIsNoRecord() {
        let original = record("h1", stopping: true)
        #expect(HostRecord(host: "h1", fields: original.fields) == original)
        #expect(HostRecord(host: "h1", fields: [:]) == nil, "an expired record reads as an empty hash")
        #expect(HostRecord(host: "h1", fields: ["version": "1", "pid": "x"]) == nil)
    }

    @Test func oneBeatWritesTheRecordWithItsTTLRegistersThePrunesAndReadsTheDrain() {
        let commands = HostBeat.commands(record("h1"), ttl: 30, now: now)
        #expect(commands.count == 5)
        #expect(Array(commands[0].prefix(2)) == ["HSET", "tworker:host:h1"])
        let fields = Dictionary(uniqueKeysWithValues: stride(from: 2, to: commands[0].count - 1, by: 2).map { (commands[0][$0], commands[0][$0 + 1]) })
        #expect(fields["version"] == "1.2.3" && fields["pid"] == "4242" && fields["workers"] == "3" && fields["stopping"] == "0")
        #expect(commands[1] == ["EXPIRE", "tworker:host:h1", "30"])
        #expect(commands[2] == ["ZADD", "tworker:hosts", "1800000000", "h1"])
        #expect(commands[3] == ["ZREMRANGEBYSCORE", "tworker:hosts", "-inf", "(\(1_800_000_000 - FleetView.forgetAfter)"])
        #expect(commands[4] == ["GET", "tworker:drain:h1"])
        #expect(HostBeat.ttl(heartbeatInterval: 1) == 5)
        #expect(HostBeat.ttl(heartbeatInterval: 10) == 30)
    }

    @Test func drainKeysAreTheHostsOwnAndReadBack() {
        #expect(RedisKeys(namespace: "resque", host: "h1").drain == "tworker:drain:h1")
        #expect(RedisKeys.drain(host: "h2").hasPrefix(RedisKeys.drainPrefix))
        #expect(RedisKeys.hostRecord("h1") == "tworker:host:h1")
    }

    // MARK: - Assembling a host

    @Test func aHostWithARecordIsUpAndCarriesItsMastersFacts() {
        let workers = [FleetHost.Worker(vm: "worker-1", state: "busy", job: "j1", pid: 11),
                       FleetHost.Worker(vm: "worker-2", state: "idle", pid: 12),
                       FleetHost.Worker(vm: "worker-3", state: "gone")]
        let host = FleetView.assemble(host: "h1", record: record("h1"), registeredAt: now - 2, drainedBy: nil, workers: workers, now: now)
        #expect(host.state == "up")
        #expect(host.version == "1.2.3" && host.pid == 4242 && host.machine == "box-1")
        #expect(host.heartbeatAge == 2)
        #expect(host.workersByState == ["busy": 1, "idle": 1], "a gone worker is not counted")
        #expect(host.runningJobs == ["j1"])
        #expect(!host.draining && !host.isDrained)
        #expect(FleetView.assemble(host: "h1", record: record("h1", stopping: true), registeredAt: nil, drainedBy: nil,
                                   workers: [], now: now).state == "stopping")
    }

    @Test func aHostWhoseRecordExpiredIsGoneWithItsLastBeatFromTheRegistry() {
        let host = FleetView.assemble(host: "dead", record: nil, registeredAt: now - 125, drainedBy: nil,
                                      workers: [FleetHost.Worker(vm: "worker-1", state: "gone")], now: now)
        #expect(host.state == "gone")
        #expect(host.version == nil && host.pid == nil)
        #expect(host.lastHeartbeat == Timestamp.format(now - 125))
        #expect(host.heartbeatAge == 125)
    }

    @Test func workersBeatingWithoutAMasterRecordAreShownAsSuch() {
        let beat = Timestamp.format(now - 1)
        let host = FleetView.assemble(host: "solo", record: nil, registeredAt: nil, drainedBy: nil,
                                      workers: [FleetHost.Worker(vm: "worker-1", state: "idle", heartbeatAt: beat)], now: now)
        #expect(host.state == "no master")
        #expect(host.lastHeartbeat == beat)
    }

    @Test func aHostIsDrainedThroughOnlyWhenNoJobRunsAndEveryLiveWorkerIsHeld() {
        func host(_ workers: [FleetHost.Worker], drained: Bool = true) -> FleetHost {
            FleetView.assemble(host: "h", record: record("h"), registeredAt: nil, drainedBy: drained ? "x" : nil, workers: workers, now: now)
        }
        #expect(!host([.init(vm: "worker-1", state: "busy", job: "j")]).isDrained, "a job still runs")
        #expect(!host([.init(vm: "worker-1", state: "idle")]).isDrained, "the worker has not seen the drain yet")
        #expect(host([.init(vm: "worker-1", state: "draining"), .init(vm: "worker-2", state: "paused"),
                      .init(vm: "worker-3", state: "gone")]).isDrained)
        #expect(!host([.init(vm: "worker-1", state: "draining")], drained: false).isDrained, "not drained at all")
        #expect(host([]).isDrained, "no workers: nothing runs")
    }

    // MARK: - Output

    @Test func theTableHasOneRowPerHostAndTheSummaryListsBusiestStatesFirst() {
        let up = FleetView.assemble(host: "alpha", record: record("alpha"), registeredAt: nil, drainedBy: nil,
                                    workers: [.init(vm: "worker-1", state: "busy", job: "j1"), .init(vm: "worker-2", state: "idle"),
                                              .init(vm: "worker-3", state: "idle")], now: now)
        let gone = FleetView.assemble(host: "beta", record: nil, registeredAt: now - 65, drainedBy: "ops", workers: [], now: now)
        let text = FleetView.render([up, gone])
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.count == 3)
        #expect(lines[0].hasPrefix("HOST "))
        #expect(lines[0].hasSuffix("DRAINING"))
        let alpha = lines[1].split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        #expect(Array(alpha.prefix(4)) == ["alpha", "up", "1.2.3", "4242"])
        #expect(lines[1].contains("2 idle, 1 busy") && lines[1].contains("j1") && lines[1].contains("2s ago") && lines[1].hasSuffix("no"))
        #expect(lines[2].hasPrefix("beta ") && lines[2].contains(" gone ") && lines[2].contains("1m05s ago"))
        #expect(lines[2].hasSuffix("yes (drained)"), "a gone host runs nothing")
        #expect(FleetView.render([]) == "no hosts on this Redis")
        #expect(FleetView.workerSummary([:]) == "-")
        #expect(FleetView.workerSummary(["paused": 1, "idle": 1, "busy": 3]) == "3 busy, 1 idle, 1 paused")
    }

    @Test func theJSONHasEveryKeyWithNullsForTheUnknownAndDecodesBack() throws {
        let gone = FleetView.assemble(host: "beta", record: nil, registeredAt: now - 65, drainedBy: "ops", workers: [], now: now)
        let up = FleetView.assemble(host: "alpha", record: record("alpha"), registeredAt: nil, drainedBy: nil,
                                    workers: [.init(vm: "worker-1", state: "busy", job: "j1", pid: 7, heartbeatAt: "t")], now: now)
        let text = try FleetView.json([up, gone])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let hosts = try #require(object["hosts"] as? [[String: Any]])
        #expect(hosts.count == 2)
        #expect(Set(hosts[1].keys) == ["host", "state", "version", "pid", "machine", "started_at", "last_heartbeat", "heartbeat_age",
                                       "draining", "drained_by", "workers", "workers_by_state", "running_jobs"])
        #expect(hosts[1]["version"] is NSNull)
        #expect(hosts[1]["draining"] as? Bool == true)
        #expect(hosts[0]["workers_by_state"] as? [String: Int] == ["busy": 1])
        #expect(hosts[0]["running_jobs"] as? [String] == ["j1"])
        struct Body: Decodable { var hosts: [FleetHost] }
        #expect(try JSONDecoder().decode(Body.self, from: Data(text.utf8)).hosts == [up, gone])
    }

    // MARK: - Health and status

    @Test func aDrainedHostIsUnhealthyWithItsOwnReasonAndStatusSaysDrained() throws {
        let health = HealthCheck(redisError: nil, draining: false, drained: true, workers: [.init(vm: "worker-1", alive: true)])
        #expect(health.statusCode == 503)
        #expect(health.reasons == ["host drained (tworker undrain)"])
        var report = StatusReport(source: .redis, host: "h1", drainedBy: "tworker drain on ops (pid 1) at t")
        #expect(report.render().contains("DRAINED: running jobs finish, no new ones start (`tworker undrain h1` ends it"))
        let json = String(decoding: try JSONEncoder().encode(report), as: UTF8.self)
        #expect(json.contains("\"draining\":true") && json.contains("\"drained_by\""))
        #expect(try JSONDecoder().decode(StatusReport.self, from: Data(json.utf8)) == report)
        report.drainedBy = nil
        #expect(!report.render().contains("DRAINED"))
        #expect(String(decoding: try JSONEncoder().encode(report), as: UTF8.self).contains("\"draining\":false"))
    }

    // MARK: - cloud-init input

    /// The refusal's message; nil when `body` was accepted.
    func refused(_ body: () throws -> Void) -> String? {
        do {
            try body()
            return nil
        } catch {
            return (error as? CloudInitError)?.message ?? "\(error)"
        }
    }

    @Test func releaseSourcesArePathsOrHTTPURLsAndAnythingElseIsRefusedClearly() throws {
        #expect(try ReleaseSource("/srv/tworker-latest.tar.gz") == .path("/srv/tworker-latest.tar.gz"))
        #expect(try ReleaseSource("https://releases.example/tworker-latest.tar.gz") == .url("https://releases.example/tworker-latest.tar.gz"))
        let bad: [(String, String)] = [
            ("dist/tworker.tar.gz", "neither an absolute path nor an http(s) URL"),
            ("ftp://releases.example/t.tar.gz", "only http:// and https://"),
            ("https:///t.tar.gz", "has no host"),
            ("https://releases.example/", "names no file"),
            ("/srv/releases/", "not a directory"),
            ("https://releases.example/a b.tar.gz", "a b.tar.gz"),
        ]
        for (text, message) in bad {
            let refusal = try #require(refused { _ = try ReleaseSource(text) }, "\(text) was accepted")
            #expect(refusal.hasPrefix("--release: ") && refusal.contains(message), "\(refusal)")
        }
    }

    @Test func cloudInitRefusesVMCountsOutOfRangeAndRedisItCannotShare() throws {
        let release = ReleaseSource.url("https://r.example/t.tar.gz")
        let cases: [(String, Int, String)] = [
            ("redis://10.0.0.5:6379/0", 0, "--vms must be between 1 and 64, got 0"),
            ("redis://10.0.0.5:6379/0", 65, "--vms must be between 1 and 64, got 65"),
            ("embedded", 2, "not 'embedded'"),
            ("unix:///run/redis.sock", 2, "not a unix socket"),
            ("http://10.0.0.5", 2, "--redis-url: "),
        ]
        for (url, vms, message) in cases {
            let refusal = try #require(refused { _ = try CloudInit(redisURL: url, vms: vms, release: release) }, "accepted \(url) with \(vms) VMs")
            #expect(refusal.contains(message), "\(refusal)")
        }
    }

    @Test func aHostCanFindItsRedisThroughSentinels() throws {
        let release = ReleaseSource.url("https://r.example/t.tar.gz")
        let bare = try CloudInit(redisURL: "embedded", vms: 2, release: release, sentinels: ["10.0.0.11:26379", "10.0.0.12:26379"], masterName: "tworker")
        #expect(bare.workerYAML.contains("redis:\n  sentinels: [\"10.0.0.11:26379\", \"10.0.0.12:26379\"]\n  master_name: \"tworker\"\nvms:\n"), "\(bare.workerYAML)")
        #expect(!bare.workerYAML.contains("url:"))
        let withPassword = try CloudInit(redisURL: "redis://:pw@ignored:6379/3", vms: 2, release: release, sentinels: ["10.0.0.11:26379"], masterName: "tworker")
        #expect(withPassword.workerYAML.contains("  url: \"redis://:pw@ignored:6379/3\"\n  sentinels: [\"10.0.0.11:26379\"]\n"))
        let cases: [([String], String?, String)] = [
            (["10.0.0.11"], "tworker", "--sentinel: "),
            (["10.0.0.11:26379"], nil, "--sentinel needs --master-name"),
            ([], "tworker", "--master-name needs at least one --sentinel"),
            (["10.0.0.11:26379"], "two words", "is not a Sentinel master name"),
        ]
        for (sentinels, name, message) in cases {
            let refusal = try #require(refused { _ = try CloudInit(redisURL: "embedded", vms: 2, release: release, sentinels: sentinels, masterName: name) },
                                       "accepted \(sentinels) \(name ?? "-")")
            #expect(refusal.contains(message), "\(refusal)")
        }
    }

    @Test func theUserDataCarriesTheConfigTheUpdateUnitAndTheFirstBootCommands() throws {
        let setup = try CloudInit(redisURL: "redis://:p'w@10.0.0.5:6379/2", vms: 3, release: .url("https://r.example/it's.tar.gz"))
        let text = setup.userData
        #expect(text.hasPrefix("#cloud-config\n"))
        #expect(setup.workerYAML.contains("  url: \"redis://:p'w@10.0.0.5:6379/2\"\n"))
        #expect(setup.workerYAML.contains("vms:\n  count: 3\n"))
        // Single quotes in the release survive the shell's quoting.
        #expect(setup.updateDefaultsText.contains("TWORKER_RELEASE='https://r.example/it'\\''s.tar.gz'"))
        #expect(CloudInit.updateUnit.contains("Before=tworker.service"))
        #expect(CloudInit.serviceDropIn.contains("After=tworker-update.service"))
        let commands = setup.firstBootCommands
        let start = try #require(commands.firstIndex(of: ["systemctl", "start", "tworker-update.service"]))
        let importAt = try #require(commands.firstIndex { $0.contains("import") })
        let serviceAt = try #require(commands.firstIndex { $0.contains("service") && $0.contains("--systemd") })
        #expect(start < importAt && importAt < serviceAt, "install, then import the VMs, then the service")
        #expect(commands.last == ["systemctl", "enable", "--now", "tworker.service"])
        #expect(text.contains("  - path: /usr/local/sbin/tworker-update\n"))
        #expect(text.contains("    permissions: '0755'\n"))
        // The config may hold the Redis password: the tworker account's only, written once that account exists.
        #expect(text.contains("  - path: /etc/tworker/worker.yml\n    owner: root:tworker\n    permissions: '0640'\n    defer: true\n"))
        // Every file's last line is in its block (a text without a final newline once lost it).
        #expect(text.contains("      say \"installed tworker $version from $release\"\n"))
        #expect(text.contains("      WantedBy=multi-user.target\n"))
    }
}
