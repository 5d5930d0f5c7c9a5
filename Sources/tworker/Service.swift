import ArgumentParser
import Foundation
import TWorkerCore

struct Service: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "service",
        abstract: "Set tworker up under a service manager.",
        subcommands: [ServiceInstall.self]
    )
}

struct ServiceInstall: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install",
        abstract: "Write a systemd unit or a runit service that runs `tworker start` for this binary and config.",
        discussion: """
        The service runs `<this binary> start --env <env> --config-dir <absolute config dir>` in the \
        current directory (so a relative state_dir resolves as it does now). systemd: \
        /etc/systemd/system/tworker.service; `systemctl stop` is graceful (QUIT: running builds \
        finish), bounded by timeouts.hard_limit + 60 s. runit: /etc/sv/tworker/run and \
        /etc/sv/tworker/log/run (svlogd into /var/log/tworker). An existing different file is \
        left alone unless --force. Exit codes: 64 usage error, 78 invalid configuration, 1 cannot write.
        """
    )

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Write a systemd unit (tworker.service).")
    var systemd = false

    @Flag(help: "Write a runit service directory (tworker/run and tworker/log/run).")
    var runit = false

    @Option(help: "Run the service as this user (default: root).")
    var user: String?

    @Option(help: "Run the service with this group (default: the user's primary group).")
    var group: String?

    @Flag(name: .customLong("print"), help: "Print the file(s) to stdout instead of writing them.")
    var printOnly = false

    @Option(name: .customLong("output-dir"),
            help: "Write into this directory instead of /etc/systemd/system (systemd) or /etc/sv (runit: DIR/tworker).")
    var outputDir: String?

    @Flag(help: "Overwrite existing files that differ.")
    var force = false

    func validate() throws {
        switch (systemd, runit) {
        case (false, false):
            throw ValidationError("Choose the service manager: --systemd or --runit.")
        case (true, true):
            throw ValidationError("--systemd and --runit cannot be combined; choose one.")
        default:
            break
        }
        if let user, let problem = ServiceFiles.accountNameProblem(user, what: "user") {
            throw ValidationError("--user: \(problem)")
        }
        if let group {
            guard user != nil else { throw ValidationError("--group needs --user.") }
            if let problem = ServiceFiles.accountNameProblem(group, what: "group") {
                throw ValidationError("--group: \(problem)")
            }
        }
        if printOnly, outputDir != nil { throw ValidationError("--print writes nothing; drop --output-dir.") }
        if printOnly, force { throw ValidationError("--print writes nothing; drop --force.") }
    }

    var manager: ServiceFiles.Manager { systemd ? .systemd : .runit }

    func run() async throws {
        let loaded = try global.load()
        let cwd = FileManager.default.currentDirectoryPath
        let files = ServiceFiles(
            config: loaded.config,
            binary: ServiceFiles.currentExecutable(currentDirectory: cwd),
            configDir: ServiceFiles.configDirectory(flag: global.configDir, environment: ProcessInfo.processInfo.environment,
                                                    currentDirectory: cwd),
            workingDirectory: cwd,
            user: user, group: group)
        do {
            try files.validate(for: manager)
        } catch {
            printError(error.message)
            throw ExitCode(64)
        }

        if printOnly {
            print(manager == .systemd ? files.systemdUnit : files.runitPrinted, terminator: "")
            return
        }

        if let user, getpwnam(user) == nil {
            printError("warning: user '\(user)' does not exist on this machine; create it before starting the service")
        }
        if let group, getgrnam(group) == nil {
            printError("warning: group '\(group)' does not exist on this machine; create it before starting the service")
        }

        switch manager {
        case .systemd:
            let dir = ServiceFiles.absolute(outputDir ?? "/etc/systemd/system", relativeTo: cwd)
            let path = dir + "/" + ServiceFiles.systemdUnitName
            let written = try install([(path, files.systemdUnit, 0o644)], directories: [dir])
            print(written ? "Wrote \(path)" : "\(path) is already up to date")
            print("Next: systemctl daemon-reload && systemctl enable --now \(ServiceFiles.serviceName)")
        case .runit:
            let parent = ServiceFiles.absolute(outputDir ?? "/etc/sv", relativeTo: cwd)
            let dir = parent + "/" + ServiceFiles.serviceName
            let written = try install([(dir + "/run", files.runitRun, 0o755), (dir + "/log/run", files.runitLogRun, 0o755)],
                                      directories: [dir, dir + "/log"])
            print(written ? "Wrote \(dir)/run and \(dir)/log/run" : "\(dir) is already up to date")
            print("Next: ln -s \(ServiceFiles.shellQuote(dir)) /etc/service/   (Void Linux: /var/service/)")
        }
    }

    /// Writes every file, or none when one of them exists with other content and there is no
    /// --force. False when all were already identical (their mode is still fixed).
    private func install(_ files: [(path: String, text: String, mode: Int)], directories: [String]) throws -> Bool {
        do {
            return try FileInstall.install(files.map { FileInstall.File(path: $0.path, text: $0.text, mode: $0.mode) },
                                           directories: directories, force: force)
        } catch {
            printError(error.description.hasPrefix("cannot write ") ? "cannot write the service files: " + error.description.dropFirst("cannot write ".count) + ", or use --print" : error.description)
            throw ExitCode.failure
        }
    }
}
