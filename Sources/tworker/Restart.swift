import ArgumentParser
import TWorkerCore

struct Restart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restart every worker, or one, gracefully: each after its current job (starts a stopped one)."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "Only this worker (worker-N).")
    var worker: String?

    func run() async throws {
        print(try ControlCall.send(global, ControlRequest(command: .restart, worker: worker)).0.message ?? "ok")
    }
}
