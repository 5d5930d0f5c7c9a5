import ArgumentParser
import Foundation
import RedisClient
import TWorkerCore

struct Enqueue: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Push a build job onto the queue (Resque's wire format) and print its id.",
        discussion: """
        Either --file with a JSON payload ('-' reads stdin), or --repo with --script commands.
        A payload without an id gets a new unique one. Without --commit, the repository's HEAD.
        """
    )

    @OptionGroup var global: GlobalOptions

    @Option(help: "The queue to push onto (default: the first queue of $QUEUES, $QUEUE or the config's queue).")
    var queue: String?

    @Option(help: "A JSON payload file; '-' reads standard input.")
    var file: String?

    @Option(help: "Repository URL or local path to check out.")
    var repo: String?

    @Option(help: "Commit to check out (default: the repository's HEAD).")
    var commit: String?

    @Option(help: "Branch to clone (default: the repository's default branch).")
    var branch: String?

    @Option(help: "owner/name (default: taken from the repository's path).")
    var slug: String?

    @Option(help: "A script command; repeat for several.")
    var script: [String] = []

    func validate() throws {
        if (file == nil) == (repo == nil && script.isEmpty) {
            throw ValidationError("give either --file PATH, or --repo/--script (not both)")
        }
        if file != nil, repo != nil || !script.isEmpty || commit != nil || branch != nil || slug != nil {
            throw ValidationError("--file cannot be combined with --repo, --commit, --branch, --slug or --script")
        }
        if repo == nil, commit != nil || branch != nil || slug != nil {
            throw ValidationError("--commit, --branch and --slug need --repo")
        }
    }

    func run() async throws {
        let config = try global.load().config
        let logger = global.logger(config)
        try await reportingFailures {
            var payload = try await buildPayload()
            if payload["id"] == nil { payload["id"] = .string(UUID().uuidString.lowercased()) }
            let queuedAt = Timestamp.now()
            let envelope = JSONValue.object(["class": .string("TWorker::Build"), "args": .array([.object(payload)]),
                                             "queued_at": .string(queuedAt)])
            let raw = envelope.serialized()
            let job: QueuedJob
            switch JobDecoder.decode(raw) {
            case .success(let decoded): job = decoded
            case .failure(let error):
                printError("the job is invalid:\n" + error.problems.joined(separator: "\n"))
                throw ExitCode(65)
            }
            guard let queueName = queue ?? config.queueList.fallback else {
                throw ValidationError("the configured queue is '*': say which queue with --queue")
            }
            let keys = RedisKeys(namespace: config.redis.namespace, host: config.host)
            let setup = try await RedisSetup.resolve(config, logger: logger)
            defer { setup.shutdown() }
            let redis = setup.connect()
            defer { redis.close() }
            var store = JobStore(redis: redis, keys: keys, retention: config.reporting.retention, worker: "", logger: logger)
            store.replicaWait = setup.replicaWait
            let id = job.payload.id
            try await store.queued(raw, id: id, queue: queueName, at: queuedAt)
            print(id)
        }
    }

    private func buildPayload() async throws -> [String: JSONValue] {
        if let file {
            let data: Data
            if file == "-" {
                data = FileHandle.standardInput.readDataToEndOfFile()
            } else {
                guard let read = FileManager.default.contents(atPath: file) else {
                    throw ValidationError("--file \(file): cannot read it")
                }
                data = read
            }
            guard case .object(let payload)? = try? JSONValue.parse(Array(data)) else {
                throw ValidationError("--file \(file): not a JSON object")
            }
            return payload
        }
        var payload: [String: JSONValue] = [:]
        if !script.isEmpty { payload["config"] = .object(["script": .array(script.map(JSONValue.string))]) }
        guard let repo else { return payload }
        let sourceURL = RepositorySource.absolute(repo)
        var branch = self.branch
        var commit = self.commit
        if branch == nil || commit == nil {
            guard let head = RemoteHead(lsRemoteOutput: try await Git.run(.remoteHead(url: sourceURL))) else {
                throw ValidationError("--repo \(repo): git found no HEAD there")
            }
            if commit == nil { commit = head.commit }
            if branch == nil { branch = head.branch }
        }
        guard let branch else { throw ValidationError("--repo \(repo): HEAD is not on a branch; give --branch") }
        payload["repository"] = .object(["slug": .string(slug ?? RepositorySource.slug(from: sourceURL)), "source_url": .string(sourceURL)])
        payload["commit"] = .string(commit ?? "")
        payload["branch"] = .string(branch)
        return payload
    }
}
