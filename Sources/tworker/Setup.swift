import ArgumentParser
import Foundation
import Logging
import TWorkerCore

struct Setup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "setup",
        abstract: "Set this host up for tworker: build user, SSH key, binary, config, service; then run doctor.",
        discussion: """
        Each step changes only what is not in place yet, so running it again changes nothing: \
        config/worker.yml copied from worker.example.yml when missing; the config's group and user \
        (groupadd, useradd with a home and bash as found on PATH) when missing; the private key at ssh.key \
        generated (ssh-keygen, ed25519) when missing, owned by the user, mode 0600; this binary \
        copied to <prefix>/bin/tworker; the systemd unit (or with --runit the runit service) that \
        runs `tworker start` as root (its workers run as the user). Ends with `tworker doctor`. \
        Run as root; groupadd, useradd, ssh-keygen and bash are looked up on PATH before the first step \
        (each missing one is a line, then exit 1). Exit codes: 0 set up and doctor found nothing blocking; 1 a step failed or \
        doctor reported a FAIL; 78 invalid configuration.
        """
    )

    @OptionGroup var global: GlobalOptions

    @Option(help: "Install the binary as <prefix>/bin/tworker.")
    var prefix = "/usr/local"

    @Flag(help: "Install a runit service instead of the systemd unit.")
    var runit = false

    @Option(name: .customLong("unit-dir"),
            help: "Where the service goes (default /etc/systemd/system; with --runit /etc/sv, as DIR/tworker).")
    var unitDir: String?

    @Flag(name: .customLong("no-service"), help: "Install no service.")
    var noService = false

    @Flag(help: "Overwrite service files that differ from what would be written.")
    var force = false

    func validate() throws {
        if noService, runit || unitDir != nil { throw ValidationError("--no-service installs no service; drop --runit and --unit-dir.") }
    }

    func run() async throws {
        let cwd = FileManager.default.currentDirectoryPath
        let setup = HostSetup(runner: ProgramRunner(logger: quietLogger()))
        let configDir = ServiceFiles.configDirectory(flag: global.configDir, environment: ProcessInfo.processInfo.environment,
                                                     currentDirectory: cwd)
        // Before the first step, every missing program at once: a host half set up helps nobody.
        let missing = setup.missingPrograms()
        if !missing.isEmpty {
            missing.forEach { printError($0.description) }
            throw ExitCode.failure
        }
        do {
            // worker.yml first: what the steps below do depends on the config.
            show(try setup.configFile(configDir: configDir))
            let loaded = try global.load()
            let config = loaded.config
            let settings = SupervisorSettings(config: config)
            for step in try await setup.account(user: settings.user, group: settings.group) { show(step) }
            show(try await setup.sshKey(config.ssh.key, user: settings.user))
            let binary = ServiceFiles.absolute(prefix, relativeTo: cwd) + "/bin/tworker"
            show(try setup.binary(from: ServiceFiles.currentExecutable(currentDirectory: cwd), to: binary))
            if noService {
                show(HostSetup.Step("service", changed: false, "--no-service: none installed"))
            } else {
                let manager: ServiceFiles.Manager = runit ? .runit : .systemd
                let directory = ServiceFiles.absolute(unitDir ?? (runit ? "/etc/sv" : "/etc/systemd/system"), relativeTo: cwd)
                let files = ServiceFiles(config: config, binary: binary, configDir: configDir, workingDirectory: cwd)
                let step = try setup.service(files, manager: manager, directory: directory, force: force)
                show(step)
                if step.changed {
                    print(runit ? "        next: ln -s \(directory)/\(ServiceFiles.serviceName) /etc/service/"
                                : "        next: systemctl daemon-reload && systemctl enable --now \(ServiceFiles.serviceName)")
                }
            }
        } catch let failure as HostSetup.Failure {
            print("FAIL    \(failure.step.padding(toLength: 9, withPad: " ", startingAt: 0))\(failure.description)")
            if geteuid() != 0 { print("        tworker setup changes accounts and system directories: run it as root") }
            throw ExitCode.failure
        }
        print("")
        print("tworker doctor:")
        let report = await DoctorCommand.report(global)
        print(report.render())
        if !report.passed { throw ExitCode(report.exitCode) }
    }

    /// `changed user     created travis` / `ok      binary   /usr/local/bin/tworker is up to date`.
    private func show(_ step: HostSetup.Step) {
        print((step.changed ? "changed" : "ok").padding(toLength: 8, withPad: " ", startingAt: 0)
              + step.name.padding(toLength: 9, withPad: " ", startingAt: 0) + step.detail)
    }

    /// The steps report what a failed program said; the runner's own error lines would say it twice.
    private func quietLogger() -> Logger {
        var logger = Logger(label: "tworker.setup") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = global.verbose ? .debug : .critical
        return logger
    }
}
