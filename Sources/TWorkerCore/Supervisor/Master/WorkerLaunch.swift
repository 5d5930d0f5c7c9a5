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

    /// The program and arguments to spawn. A root master starting workers as `account` goes
    /// through setpriv: Subprocess's own userID/groupID options change ids in the forked child
    /// through glibc's setxid machinery, which can deadlock there when another thread of the
    /// master (HTTP, Redis) was starting at the fork; setpriv changes them single-threaded.
    func spawnCommand(setpriv: String, runningAsRoot: Bool) -> (executable: String, arguments: [String]) {
        guard let account, runningAsRoot else { return (executable, commandLine) }
        let groups = account.groups.isEmpty ? ["--clear-groups"] : ["--groups=" + account.groups.map(String.init).joined(separator: ",")]
        return (setpriv, ["--reuid=\(account.uid)", "--regid=\(account.gid)"] + groups + ["--", executable] + commandLine)
    }

    /// Runs the child to its end, calling `started` with its pid; returns how it ended, as the log says it.
    func run(logger: Logger, started: @escaping @Sendable (pid_t) -> Void) async -> String {
        let spawn: (executable: String, arguments: [String])
        do {
            let runningAsRoot = geteuid() == 0
            let setpriv = account != nil && runningAsRoot ? try ProgramLocator().locate(.setpriv) : ""
            spawn = spawnCommand(setpriv: setpriv, runningAsRoot: runningAsRoot)
        } catch {
            logger.error("could not start \(vm): \(error)")
            return "could not start: \(error)"
        }
        var options = PlatformOptions()
        // Its own session: a Ctrl-C or a supervisor's signal to the master's group reaches the
        // master only, which forwards what it means.
        options.createSession = true
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
                .path(FilePath(spawn.executable)), arguments: Arguments(spawn.arguments), environment: environment,
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
