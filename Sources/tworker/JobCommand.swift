import ArgumentParser
import Foundation
import TWorkerCore

struct JobCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job",
        abstract: "Show a job's record: state, attempts, worker, timestamps, exit code, error.",
        discussion: "Exit code 1 when there is no such job."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The job id.")
    var id: String

    @Flag(help: "Print the record as JSON.")
    var json = false

    static let fieldOrder = ["state", "attempts", "worker", "vm", "host", "queued_at", "received_at", "started_at",
                             "finished_at", "exit_code", "error"]

    func run() async throws {
        try await global.withRedis { session in
            let (config, logger, redis, keys) = (session.config, session.logger, session.redis, session.keys)
            let store = JobStore(redis: redis, keys: keys, retention: config.reporting.retention, worker: "", logger: logger)
            let record = try await store.read(id: id)
            guard !record.isEmpty else {
                printError("no job '\(id)' (never queued, or older than reporting.retention)")
                throw ExitCode.failure
            }
            if json {
                var object = record.mapValues(JSONValue.string)
                object["id"] = .string(id)
                print(String(decoding: JSONValue.object(object).serialized(), as: UTF8.self))
            } else {
                print("id: \(id)")
                let known = Self.fieldOrder.filter { record[$0] != nil }
                for field in known + record.keys.filter({ !Self.fieldOrder.contains($0) }).sorted() {
                    print("\(field): \(record[field] ?? "")")
                }
            }
        }
    }
}
