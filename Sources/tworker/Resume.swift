import ArgumentParser
import TWorkerCore

struct Resume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Resume every worker, or one (CONT), after `tworker pause`."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "Only this worker (worker-N).")
    var worker: String?

    func run() async throws {
        print(try ControlCall.send(global, ControlRequest(command: .resume, worker: worker)).0.message ?? "ok")
    }
}
