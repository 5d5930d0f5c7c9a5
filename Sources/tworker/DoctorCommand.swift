import ArgumentParser
import Foundation
import Logging
import TWorkerCore

struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check that this host can run tworker: one line per check, with a fix for each problem.",
        discussion: """
        Checks the config, Redis (reachable, its role; embedded: usable by the build user), the \
        programs the provider runs (and their versions), the SSH key, the base box or image, every \
        worker VM and its snapshot, the worker VMs' SSH ports, free space under state_dir (FAIL \
        below 1 GiB, WARN below 5 GiB), the build user and state_dir, and whether a master runs. \
        Exit codes: 0 nothing blocks running (ok and WARN lines only); 1 at least one FAIL.
        """
    )

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Print JSON: {\"ok\": Bool, \"checks\": [{\"name\", \"status\", \"detail\", \"fix\"}]}.")
    var json = false

    func run() async throws {
        let report = await Self.report(global)
        print(json ? report.json() : report.render())
        if !report.passed { throw ExitCode(report.exitCode) }
    }

    /// Never throws: a config that does not load is the config check's FAIL, not an exit 78.
    static func report(_ global: GlobalOptions) async -> DoctorReport {
        let loaded: LoadedConfig
        do {
            loaded = try ConfigLoader(configDir: global.configDir, env: global.env, verbose: global.verbose ? true : nil).load()
        } catch {
            return Doctor.brokenConfig(error)
        }
        var logger = global.logger(loaded.config, label: "tworker.doctor")
        // The checks report what a failed call said; the runner's own error lines would say it twice.
        if !loaded.config.verbose { logger.logLevel = .critical }
        return await Doctor(config: loaded.config, files: loaded.files, probes: SystemDoctorProbes(runner: ProgramRunner(logger: logger)),
                            logger: logger).run()
    }
}
