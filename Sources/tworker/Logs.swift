import ArgumentParser
import Foundation
import RedisClient
import TWorkerCore

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a job's log; --follow streams it until the job's final entry.",
        discussion: "Exit code 1 when the job has no log."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The job id.")
    var id: String

    @Flag(name: [.short, .long], help: "Keep printing new output until the log is final.")
    var follow = false

    func run() async throws {
        try await global.withRedis { session in
            let (logger, redis, keys) = (session.logger, session.redis, session.keys)
            let key = keys.log(id)
            var lastID = "0-0"
            var sawAnything = false
            while true {
                let reply: RedisReply
                if follow {
                    reply = try await withRedisRetry(logger: logger, what: "read \(key)") {
                        try await redis.sendBlocking(["XREAD", "COUNT", "1000", "BLOCK", "1000", "STREAMS", key, lastID], blockTimeout: .seconds(1))
                    }
                } else {
                    reply = try await redis.send(["XRANGE", key, "(" + lastID, "+", "COUNT", "1000"])
                }
                // XREAD nests the entries under the stream's name; XRANGE returns them directly.
                let entries = follow ? (reply.array?.first?.array?.last?.array ?? []) : (reply.array ?? [])
                if entries.isEmpty {
                    if follow { continue }
                    break
                }
                sawAnything = true
                for entry in entries {
                    guard let parts = entry.array, parts.count == 2, let entryID = parts[0].string else { continue }
                    lastID = entryID
                    let fields = parts[1].array ?? []
                    var index = 0
                    var final = false
                    while index + 1 < fields.count {
                        if fields[index].string == "data", case .bulk(let bytes) = fields[index + 1] {
                            FileHandle.standardOutput.write(Data(bytes))
                        }
                        if fields[index].string == "final" { final = true }
                        index += 2
                    }
                    if final { return }
                }
            }
            if !sawAnything {
                printError("no log for job '\(id)'")
                throw ExitCode.failure
            }
        }
    }
}
