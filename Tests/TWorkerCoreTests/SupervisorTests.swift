import Foundation
import Testing
@testable import TWorkerCore

@Suite struct SupervisorBackoffTests {
    @Test func firstUnexpectedExitRestartsAtOnceThenDoublesFromOneSecondToSixty() {
        var backoff = RestartBackoff()
        let quick = Duration.seconds(2)
        let delays = (0..<10).map { _ in backoff.delay(afterUptime: quick) }
        #expect(delays == [.zero, .seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(16), .seconds(32),
                           .seconds(60), .seconds(60), .seconds(60)])
        #expect(backoff.streak == 10)
    }

    @Test func aMinuteOfHealthForgetsTheStreak() {
        var backoff = RestartBackoff()
        _ = backoff.delay(afterUptime: .seconds(1))
        _ = backoff.delay(afterUptime: .seconds(1))
        #expect(backoff.delay(afterUptime: .seconds(1)) == .seconds(2))
        #expect(backoff.delay(afterUptime: .seconds(60)) == .zero, "ran a minute: healthy again")
        #expect(backoff.delay(afterUptime: .seconds(59)) == .seconds(1))
    }

    @Test func resetStartsOver() {
        var backoff = RestartBackoff()
        for _ in 0..<5 { _ = backoff.delay(afterUptime: .zero) }
        backoff.reset()
        #expect(backoff.delay(afterUptime: .zero) == .zero)
        #expect(backoff.delay(afterUptime: .zero) == .seconds(1))
    }

    @Test func neverExceedsTheMaximumEvenAfterVeryManyExits() {
        var backoff = RestartBackoff()
        var last = Duration.zero
        for _ in 0..<200 { last = backoff.delay(afterUptime: .zero) }
        #expect(last == .seconds(60))
    }
}

@Suite struct SupervisorWatchdogTests {
    @Test func memoryTwoReadingsAboveTheLimitInARowRestart() {
        var watchdog = MemoryWatchdog(limitMiB: 100)
        do { let result = watchdog.check(worker: "worker-1", rssKiB: 101 * 1024); #expect(!result) }
        do { let result = watchdog.check(worker: "worker-1", rssKiB: 120 * 1024); #expect(result) }
    }

    @Test func memoryASpikeBetweenNormalReadingsDoesNot() {
        var watchdog = MemoryWatchdog(limitMiB: 100)
        do { let result = watchdog.check(worker: "worker-1", rssKiB: 150 * 1024); #expect(!result) }
        do { let result = watchdog.check(worker: "worker-1", rssKiB: 50 * 1024); #expect(!result) }
        do { let result = watchdog.check(worker: "worker-1", rssKiB: 150 * 1024); #expect(!result) }
        do { let result = watchdog.check(worker: "worker-1", rssKiB: 100 * 1024); #expect(!result, "at the limit is not above it") }
    }

    @Test func memoryWorkersAreCountedSeparatelyAndForgotten() {
        var watchdog = MemoryWatchdog(limitMiB: 10)
        do { let result = watchdog.check(worker: "worker-1", rssKiB: 20 * 1024); #expect(!result) }
        do { let result = watchdog.check(worker: "worker-2", rssKiB: 20 * 1024); #expect(!result) }
        watchdog.forget(worker: "worker-1")
        do { let result = watchdog.check(worker: "worker-1", rssKiB: 20 * 1024); #expect(!result) }
        do { let result = watchdog.check(worker: "worker-2", rssKiB: 20 * 1024); #expect(result) }
    }

    @Test func memoryNoLimitOrNoReadingNeverRestarts() {
        var unlimited = MemoryWatchdog(limitMiB: nil)
        for _ in 0..<5 { let result = unlimited.check(worker: "worker-1", rssKiB: Int.max / 2); #expect(!result) }
        var limited = MemoryWatchdog(limitMiB: 1)
        do { let result = limited.check(worker: "worker-1", rssKiB: 4096); #expect(!result) }
        do { let result = limited.check(worker: "worker-1", rssKiB: nil); #expect(!result, "a gone process resets the count") }
        do { let result = limited.check(worker: "worker-1", rssKiB: 4096); #expect(!result) }
    }

    @Test func stuckKillsOnlyPastHardLimitPlusGrace() {
        let watchdog = StuckWatchdog(hardLimit: .seconds(60), grace: .seconds(30))
        let start = Date(timeIntervalSince1970: 1_000_000)
        #expect(watchdog.check(startedAt: nil, now: start.addingTimeInterval(10_000)) == .fine, "no job started")
        #expect(watchdog.check(startedAt: start, now: start.addingTimeInterval(61)) == .fine, "past the limit, within the grace")
        #expect(watchdog.check(startedAt: start, now: start.addingTimeInterval(90)) == .fine)
        #expect(watchdog.check(startedAt: start, now: start.addingTimeInterval(90.5)) == .kill(elapsed: .milliseconds(90_500)))
        #expect(watchdog.check(startedAt: start, now: start.addingTimeInterval(-5)) == .fine, "clock skew: a start in the future")
    }
}

@Suite struct SupervisorControlProtocolTests {
    @Test func requestIsOneCompactJSONLine() throws {
        let line = ControlCodec.encode(ControlRequest(command: .stop, worker: "worker-2", now: true))
        #expect(String(decoding: line, as: UTF8.self) == #"{"command":"stop","now":true,"worker":"worker-2"}"# + "\n")
        #expect(line.filter { $0 == 0x0A }.count == 1)
        #expect(try ControlCodec.decode(ControlRequest.self, from: line) == ControlRequest(command: .stop, worker: "worker-2", now: true))
    }

    @Test func optionalFieldsMayBeLeftOut() throws {
        let request = try ControlCodec.decode(ControlRequest.self, from: Array(#"{"command":"status"}"#.utf8))
        #expect(request == ControlRequest(command: .status))
        #expect(String(decoding: ControlCodec.encode(request), as: UTF8.self) == #"{"command":"status"}"# + "\n")
    }

    @Test(arguments: ["", "\n", "not json", #"{"command":"explode"}"#, #"{"worker":"worker-1"}"#, "{\"command\":\"stop\"}\n{\"command\":\"stop\"}"])
    func malformedRequestsAreRefused(_ text: String) {
        #expect(throws: ControlCodec.DecodeError.self) { try ControlCodec.decode(ControlRequest.self, from: Array(text.utf8)) }
    }

    @Test func responseWithStatusRoundTripsAndStaysOnOneLine() throws {
        var worker = StatusReport.Worker(host: "h", vm: "worker-1", state: "busy")
        worker.pid = 42
        worker.job = "job\nwith a newline"
        worker.jobElapsed = 12.5
        worker.rssKiB = 9000
        let status = StatusReport(source: .master, host: "h",
                                  master: .init(pid: 7, startedAt: "2026-01-01T00:00:00.000Z", uptime: 3, env: "test", configDir: "/etc/tworker"),
                                  paused: true, workers: [worker], queues: [.init(name: "builds", depth: 3)], failed: 1)
        let response = ControlResponse(ok: true, status: status)
        let line = ControlCodec.encode(response)
        #expect(line.filter { $0 == 0x0A }.count == 1, "a newline inside a value is escaped")
        #expect(try ControlCodec.decode(ControlResponse.self, from: line) == response)
        let text = String(decoding: line, as: UTF8.self)
        #expect(text.contains(#""rss_kib":9000"#))
        #expect(text.contains(#""job_elapsed":12.5"#))
        #expect(text.contains(#""started_at":"2026-01-01T00:00:00.000Z""#))
    }

    @Test func refusalCarriesTheError() throws {
        let line = ControlCodec.encode(ControlResponse.failure("no worker worker-9"))
        #expect(String(decoding: line, as: UTF8.self) == #"{"error":"no worker worker-9","ok":false}"# + "\n")
    }
}

@Suite struct SupervisorMiscTests {
    @Test func rssIsReadFromATabSeparatedStatusLine() {
        #expect(ProcessProbe.rssKiB(status: "Name:\tx\nVmHWM:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n") == 12345)
        #expect(ProcessProbe.rssKiB(status: "Name:\tx\n") == nil)
        #expect((ProcessProbe.rssKiB(getpid()) ?? 0) > 0)
    }

    @Test func statusTextNamesTheMasterOrSaysThereIsNone() {
        var worker = StatusReport.Worker(host: "h", vm: "worker-1", state: "busy")
        worker.pid = 42
        worker.job = "j1"
        worker.jobElapsed = 75
        worker.rssKiB = 2048
        let withMaster = StatusReport(source: .master, host: "h", master: .init(pid: 7, startedAt: "", uptime: 3700, env: "test", configDir: nil),
                                      workers: [worker], queues: [.init(name: "builds", depth: 2)], failed: 4).render()
        #expect(withMaster.hasPrefix("master 7 on h, up 1h01m (env test)"))
        #expect(withMaster.contains("worker-1  busy   42   j1   1m15s"))
        #expect(withMaster.contains("2.0 MiB"))
        #expect(withMaster.contains("queues: builds 2"))
        #expect(withMaster.hasSuffix("failed: 4"))
        let fromRedis = StatusReport(source: .redis, host: "h", workers: [worker]).render()
        #expect(fromRedis.hasPrefix("no master running on this host; from Redis:\n"))
        #expect(fromRedis.contains("h:worker-1"))
    }

    @Test func settingsComeFromTheConfigAndTheEnvironmentOverridesThem() {
        let config = WorkerConfig.defaults(env: "test")
        let settings = SupervisorSettings(config: config, environment: [
            "TWORKER_USER": "builder", "TWORKER_GROUP": "ci", "TWORKER_ALLOW_ROOT": "true",
            "TWORKER_WORKER_MEMORY": "512", "TWORKER_STUCK_GRACE": "0.5", "TWORKER_WATCHDOG_INTERVAL": "0.25",
        ])
        #expect(settings == SupervisorSettings(user: "builder", group: "ci", allowRoot: true, workerMemory: 512,
                                               stuckGrace: .milliseconds(500), watchdogInterval: .milliseconds(250)))
        let plain = SupervisorSettings(config: config, environment: [:])
        #expect(plain.user == nil && !plain.allowRoot && plain.workerMemory == 256)
        #expect(plain.stuckGrace == .seconds(30))
        var configured = config
        configured.user = "travis"
        configured.group = "travis"
        configured.allowRoot = true
        configured.limits.workerMemory = 64
        let fromConfig = SupervisorSettings(config: configured, environment: [:])
        #expect(fromConfig.user == "travis" && fromConfig.group == "travis" && fromConfig.allowRoot && fromConfig.workerMemory == 64)
    }

    @Test func rootWithoutAUserIsRefusedUnlessAllowed() throws {
        #expect(throws: WorkerAccount.Problem.self) { try WorkerAccount.resolve(SupervisorSettings(), euid: 0) }
        #expect(try WorkerAccount.resolve(SupervisorSettings(allowRoot: true), euid: 0) == nil)
        #expect(try WorkerAccount.resolve(SupervisorSettings(), euid: 1000) == nil, "not root: workers run as the master does")
        #expect(throws: WorkerAccount.Problem.self) { try WorkerAccount.resolve(SupervisorSettings(user: "no-such-user-xyz"), euid: 0) }
        #expect(throws: WorkerAccount.Problem.self) { try WorkerAccount.resolve(SupervisorSettings(group: "daemon"), euid: 0) }
        let nobody = try #require(try WorkerAccount.resolve(SupervisorSettings(user: "nobody"), euid: 0))
        #expect(nobody.uid == getpwnam("nobody")!.pointee.pw_uid)
        #expect(nobody.groups.contains(nobody.gid))
    }

    @Test func workerNamesParse() {
        #expect(Master.workerNumber("worker-3") == 3)
        #expect(Master.workerNumber("worker-0") == nil)
        #expect(Master.workerNumber("worker-x") == nil)
        #expect(Master.workerNumber("3") == nil)
    }
}

@Suite struct WorkerLaunchTests {
    let account = WorkerAccount(user: "builder", uid: 1500, gid: 1600, groups: [1600, 27], home: "/home/builder")

    @Test func aRootMasterStartsAnotherAccountsWorkerThroughSetprivWithItsIdsAndGroups() {
        let launch = WorkerLaunch(executable: "/usr/local/bin/tworker", number: 3, arguments: ["--env", "production"],
                                  account: account, paused: false, pinnedEnvironment: [:])
        let spawn = launch.spawnCommand(setpriv: "/usr/bin/setpriv", runningAsRoot: true)
        #expect(spawn.executable == "/usr/bin/setpriv")
        #expect(spawn.arguments == ["--reuid=1500", "--regid=1600", "--groups=1600,27", "--",
                                    "/usr/local/bin/tworker", "work", "--env", "production", "--vm", "worker-3"])
        var noGroups = launch
        noGroups.account?.groups = []
        #expect(noGroups.spawnCommand(setpriv: "/usr/bin/setpriv", runningAsRoot: true).arguments.prefix(3)
                == ["--reuid=1500", "--regid=1600", "--clear-groups"])
    }

    @Test func withoutAnAccountOrRootTheWorkerIsStartedDirectly() {
        var launch = WorkerLaunch(executable: "/usr/local/bin/tworker", number: 1, arguments: [], account: account,
                                  paused: false, pinnedEnvironment: [:])
        #expect(launch.spawnCommand(setpriv: "/usr/bin/setpriv", runningAsRoot: false).executable == "/usr/local/bin/tworker")
        launch.account = nil
        let spawn = launch.spawnCommand(setpriv: "/usr/bin/setpriv", runningAsRoot: true)
        #expect(spawn.executable == "/usr/local/bin/tworker")
        #expect(spawn.arguments == ["work", "--vm", "worker-1"])
    }
}
