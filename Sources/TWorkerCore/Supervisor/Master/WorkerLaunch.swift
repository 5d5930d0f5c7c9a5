import Foundation
import Logging
import Subprocess
#if canImport(System)
import System
#else
import SystemPackage
#endif

/// One `tworker work --vm worker-N` child as the master starts it: the only code that launches a process.
struct WorkerLaunch: Sendable {
    var executable: String
    var number: Int
    /// `--env`, `--config-dir`, `--verbose` as the master got them.
    var arguments: [String]
    var account: WorkerAccount?
    /// The pool is paused: the child starts paused.
    var paused: Bool
    var pinnedEnvironment: [String: String]
    /// Its `workload` entry (`a,b`), passed as `--queue`; nil: the config's `queue`.
    var queues: String? = nil

    var vm: String { "worker-\(number)" }

    /// The child's arguments after the executable.
    var commandLine: [String] { ["work"] + arguments + ["--vm", vm] + (queues.map { ["--queue", $0] } ?? []) }

    /// Runs the child to its end, calling `started` with its pid; returns how it ended, as the log says it.
    func run(logger: Logger, started: @escaping @Sendable (pid_t) -> Void) async -> String {
        let arguments = commandLine
        var options = PlatformOptions()
        // Its own session: a Ctrl-C or a supervisor's signal to the master's group reaches the
        // master only, which forwards what it means.
        options.createSession = true
        if let account {
            options.userID = account.uid
            options.groupID = account.gid
            options.supplementaryGroups = account.groups
        }
        // TWORKER_START_PAUSED: a replacement started while the pool is paused takes no job
        // before its USR2 could arrive. TWORKER_MASTER_PID: the worker exits when orphaned.
        var variables: [Environment.Key: String?] = ["VM": nil, "TWORKER_START_PAUSED": paused ? "1" : nil,
                                                     "TWORKER_MASTER_PID": String(getpid())]
        for (name, value) in pinnedEnvironment { variables[Environment.Key(stringLiteral: name)] = value }
        if let account {
            // As login would set them: a build tool reading HOME must not find root's.
            variables["HOME"] = account.home
            variables["USER"] = account.user
            variables["LOGNAME"] = account.user
        }
        let environment = Environment.inherit.updating(variables)
        let status: TerminationStatus
        do {
            let result = try await Subprocess.run(
                .path(FilePath(executable)), arguments: Arguments(arguments), environment: environment,
                platformOptions: options, input: .none,
                output: .fileDescriptor(.standardOutput, closeAfterSpawningProcess: false),
                error: .fileDescriptor(.standardError, closeAfterSpawningProcess: false)
            ) { execution in
                started(execution.processIdentifier.value)
            }
            status = result.terminationStatus
        } catch {
            logger.error("could not start \(vm): \(error)")
            return "could not start: \(error)"
        }
        return switch status {
        case .exited(let code): "exited with status \(code)"
        case .signaled(let signal): "was killed by \(Master.signalName(signal))"
        }
    }
}
