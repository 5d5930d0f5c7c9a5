import Foundation
import Testing
@testable import TWorkerCore

/// Queue lists as Resque takes them, `workload`, and the config errors they give (file:line).
@Suite struct QueueListTests {
    // MARK: - Parsing

    @Test(arguments: [
        ("builds", ["builds"]),
        ("urgent,builds", ["urgent", "builds"]),
        (" urgent , builds ", ["urgent", "builds"]),
        ("*", ["*"]),
        ("urgent,*", ["urgent", "*"]),
        ("a,b,a", ["a", "b"]),
    ])
    func parsesResqueSpelling(_ text: String, _ names: [String]) throws {
        let list = try QueueList(parsing: text)
        #expect(list.names == names)
        #expect(list.description == names.joined(separator: ","))
    }

    @Test(arguments: [
        ("", "must not be empty"),
        ("a,,b", "queue 2 is empty (a list is written a,b)"),
        ("a,", "queue 2 is empty (a list is written a,b)"),
        ("a b", "\"a b\": a queue name cannot contain whitespace"),
    ])
    func rejects(_ text: String, _ message: String) {
        #expect(throws: QueueList.Problem(description: message)) { try QueueList(parsing: text) }
    }

    @Test func servesAndFallback() throws {
        let list = try QueueList(parsing: "urgent,builds")
        #expect(list.serves("builds") && !list.serves("other"))
        #expect(list.fallback == "urgent")
        let every = try QueueList(parsing: "*")
        #expect(every.serves("anything"))
        #expect(every.fallback == nil)
        #expect(try QueueList(parsing: "*,low").fallback == "low")
    }

    @Test func resqueWorkerIdIsHostPidQueues() throws {
        let registry = ResqueWorkerRegistry(keys: RedisKeys(namespace: "resque", host: "ci-7"), vm: "worker-2", pid: 4242,
                                            queues: try QueueList(parsing: "urgent,builds"))
        #expect(registry.id == "ci-7:4242:urgent,builds")
        #expect(registry.member == "ci-7:worker-2")
        #expect(registry.keys.resqueWorker(registry.id) == "resque:worker:ci-7:4242:urgent,builds")
        #expect(registry.keys.resqueWorkerStarted(registry.id) == "resque:worker:ci-7:4242:urgent,builds:started")
        #expect(registry.keys.processedCount(worker: registry.id) == "resque:stat:processed:ci-7:4242:urgent,builds")
        #expect(registry.keys.failedCount(worker: registry.id) == "resque:stat:failed:ci-7:4242:urgent,builds")
        #expect(ResqueWorkerRegistry.rubyTime(Date(timeIntervalSince1970: 1_714_564_800)) == "2024-05-01 12:00:00 +0000")
        #expect(ResqueWorkerRegistry.iso8601(Date(timeIntervalSince1970: 1_714_564_800.25)) == "2024-05-01T12:00:00Z")
    }

    // MARK: - Configuration

    @Test func queueTakesANameAListOrAStar() throws {
        for (yaml, expected) in [("queue: builds\n", "builds"), ("queue: urgent,builds\n", "urgent,builds"),
                                 ("queue: [urgent, builds]\n", "urgent,builds"), ("queue:\n  - urgent\n  - builds\n", "urgent,builds"),
                                 ("queue: '*'\n", "*")] {
            let dir = try TempConfigDir()
            try dir.write("worker.yml", yaml)
            let config = try dir.loader().load().config
            #expect(config.queue == expected, "\(yaml)")
            #expect(config.queueList.description == expected)
        }
    }

    @Test func queuesBeatsQueueInTheEnvironmentAsInResque() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "queue: from-file\n")
        let loaded = try dir.loader(environment: ["QUEUE": "one", "QUEUES": "a, b"]).load()
        #expect(loaded.config.queue == "a,b")
        #expect(loaded.origins["queue"] == .environment("QUEUES"))
        #expect(try dir.loader(environment: ["QUEUE": "x,y"]).load().config.queueList.names == ["x", "y"])
        #expect(configProblems(dir.loader(environment: ["QUEUES": "a,,b"])) == ["environment: QUEUES: queue 2 is empty (a list is written a,b)"])
    }

    @Test func badQueueListsInAFileNameTheLine() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "provider: local\nqueue: [urgent, '']\n")
        #expect(configProblems(dir.loader()) == ["\(dir.file("worker.yml")):2: queue: queue 2 is empty (a list is written a,b)"])
        try dir.write("worker.yml", "queue: [urgent, [a]]\n")
        #expect(configProblems(dir.loader()) == ["\(dir.file("worker.yml")):1: queue: item 2: expected a queue name, got a list"])
    }

    @Test func workloadSetsTheWorkerCountAndEachWorkersQueues() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "queue: builds\nworkload: [\"import\", \"import,export\"]\n")
        let loaded = try dir.loader().load()
        #expect(loaded.config.vms.count == 2)
        #expect(loaded.origins["vms.count"] == .default)
        #expect(loaded.config.queueList(forWorker: 1).names == ["import"])
        #expect(loaded.config.queueList(forWorker: 2).names == ["import", "export"])
        // A worker added beyond the workload (TTIN) serves `queue`.
        #expect(loaded.config.queueList(forWorker: 3).names == ["builds"])
        let empty = try TempConfigDir()
        #expect(try empty.loader().load().config.vms.count == 1)
    }

    @Test func workloadAndVmsCountThatDisagreeIsAnErrorWithFileAndLine() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "workload:\n  - import\n  - import,export\nvms:\n  count: 3\n")
        let file = dir.file("worker.yml")
        #expect(configProblems(dir.loader()) == [
            "\(file):5: vms.count: 3 workers, but workload (\(file):1) has 2 entries, one per worker; leave vms.count out (it defaults to workload's length) or make them agree",
        ])
        try dir.write("worker.yml", "workload:\n  - import\n  - import,export\nvms:\n  count: 2\n")
        #expect(configProblems(dir.loader()) == [])
    }

    @Test func aBadWorkloadEntryNamesTheKeyLineAndTheItem() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "provider: local\nworkload: [\"import\", \"import,,export\"]\n")
        #expect(configProblems(dir.loader()) == [
            "\(dir.file("worker.yml")):2: workload: item 2 (\"import,,export\"): queue 2 is empty (a list is written a,b)",
        ])
    }

    @Test func workloadEntryReachesWorkerNAsItsQueueArgument() {
        var launch = WorkerLaunch(executable: "/bin/true", number: 2, arguments: ["--env", "ci"], account: nil, paused: false,
                                  pinnedEnvironment: [:], queues: "import,export")
        #expect(launch.commandLine == ["work", "--env", "ci", "--vm", "worker-2", "--queue", "import,export"])
        launch.queues = nil
        #expect(launch.commandLine == ["work", "--env", "ci", "--vm", "worker-2"])
    }
}
