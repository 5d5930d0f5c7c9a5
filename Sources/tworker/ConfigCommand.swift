import ArgumentParser
import TWorkerCore

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Print the effective configuration, each value with where it came from.",
        discussion: "Exit code 78 when the configuration is invalid (every problem is printed as file:line: key: problem)."
    )

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let loaded = try global.load()
        print(loaded.render(json: json))
    }
}
