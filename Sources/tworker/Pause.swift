import ArgumentParser
import TWorkerCore

struct Pause: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Pause every worker, or one (USR2): running jobs go on, no new job is taken until `tworker resume`."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "Only this worker (worker-N).")
    var worker: String?

    func run() async throws {
        print(try ControlCall.send(global, ControlRequest(command: .pause, worker: worker)).0.message ?? "ok")
    }
}
