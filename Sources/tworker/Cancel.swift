import ArgumentParser
import Foundation
import TWorkerCore

struct Cancel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Cancel a job: a queued one is taken off its queue, a running one's build is killed within 2 s.",
        discussion: "The job ends `cancelled` with the reason and is never requeued. Exit code 1 when there is no such job or it already ended."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The job id.")
    var id: String

    @Option(help: "Why; recorded as the job's error and in its log.")
    var reason: String = "cancelled by an operator"

    func run() async throws {
        try await global.withRedis { session in
            let (config, logger, redis, keys) = (session.config, session.logger, session.redis, session.keys)
            let store = JobStore(redis: redis, keys: keys, retention: config.reporting.retention, worker: "", logger: logger)
            switch try await store.cancel(id: id, reason: reason) {
            case .removedFromQueue(let queue):
                print("cancelled job \(id): removed from queue \(queue)")
            case .alreadyFinished(let state):
                printError("job '\(id)' already ended: \(state.rawValue)")
                throw ExitCode.failure
            case .unknown:
                printError("no job '\(id)' (never queued, or older than reporting.retention)")
                throw ExitCode.failure
            case .signalledWorker:
                // Wait briefly to report the outcome; the worker polls the mark at least every second.
                let deadline = ContinuousClock.now + .seconds(5)
                while ContinuousClock.now < deadline {
                    if try await store.read(id: id)["state"] == JobState.cancelled.rawValue {
                        print("cancelled job \(id): its build was stopped")
                        return
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
                print("cancel requested for job \(id); its worker will stop it")
            }
        }
    }
}
