import ArgumentParser
import Foundation
import TWorkerCore

struct Stop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop the master (gracefully: running jobs finish), or one worker until `tworker restart`.",
        discussion: "Without a worker: QUIT to the master, or TERM with --now (builds stopped, jobs requeued at the head)."
    )

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Stop now: stop the builds and requeue their jobs (TERM) instead of letting them finish.")
    var now = false

    @Flag(help: "Wait until the master (or the worker) has exited.")
    var wait = false

    @Argument(help: "Only this worker (worker-N); it is not restarted until `tworker restart worker-N`.")
    var worker: String?

    func run() async throws {
        let (response, paths) = try ControlCall.send(global, ControlRequest(command: .stop, worker: worker, now: now ? true : nil))
        print(response.message ?? "ok")
        guard wait else { return }
        if let worker {
            while true {
                let status = try ControlCall.send(global, ControlRequest(command: .status)).0.status
                let state = status?.workers.first { $0.vm == worker }?.state
                if state == nil || state == "stopped" { break }
                try await Task.sleep(for: .milliseconds(200))
            }
        } else {
            while MasterLock.runningPID(paths: paths) != nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        print("stopped")
    }
}
