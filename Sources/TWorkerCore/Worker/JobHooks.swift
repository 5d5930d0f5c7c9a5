import Foundation

/// The host-side hooks around each job: `hooks.before_job` and `hooks.after_job`, executables
/// run with what they need to know in `TWORKER_*` variables, each within `hooks.timeout`.
/// What they print goes into the job's log between fold markers (`hook.before_job`), masked
/// like the build's own output. A failing `before_job` is an infrastructure error (the job is
/// requeued, per the attempt rules); `after_job` never changes the job's result.
public struct JobHooks: Sendable {
    /// One of the two hooks.
    public enum Hook: String, Sendable {
        case beforeJob = "before_job"
        case afterJob = "after_job"

        /// Its config key.
        public var key: String { "hooks.\(rawValue)" }
        /// The fold its output sits in.
        public var fold: String { "hook.\(rawValue)" }
    }

    /// What a hook is told about the job.
    public struct Context: Sendable, Equatable {
        public var jobID: String
        public var vm: String
        /// `host:vm`.
        public var worker: String
        public var queue: String
        /// 1 for the first attempt.
        public var attempt: Int
        /// `after_job` only: passed, failed, errored, cancelled or requeued.
        public var result: String?

        public init(jobID: String, vm: String, worker: String, queue: String, attempt: Int, result: String? = nil) {
            self.jobID = jobID
            self.vm = vm
            self.worker = worker
            self.queue = queue
            self.attempt = attempt
            self.result = result
        }

        /// The hook's `TWORKER_*` variables.
        public var variables: [String: String] {
            var variables = ["TWORKER_JOB_ID": jobID, "TWORKER_VM": vm, "TWORKER_WORKER": worker, "TWORKER_QUEUE": queue,
                             "TWORKER_ATTEMPT": String(attempt)]
            if let result { variables["TWORKER_JOB_RESULT"] = result }
            return variables
        }
    }

    public var beforeJob: String?
    public var afterJob: String?
    public var timeout: Duration
    var runner: any ProgramRunning

    public init(beforeJob: String?, afterJob: String?, timeout: Duration, runner: any ProgramRunning = ProgramRunner()) {
        self.beforeJob = beforeJob
        self.afterJob = afterJob
        self.timeout = timeout
        self.runner = runner
    }

    public init(config: WorkerConfig.Hooks) {
        self.init(beforeJob: config.beforeJob, afterJob: config.afterJob, timeout: .seconds(config.timeout))
    }

    public func path(of hook: Hook) -> String? {
        switch hook {
        case .beforeJob: beforeJob
        case .afterJob: afterJob
        }
    }

    /// The hook's run: no arguments, tworker's environment plus the job's `TWORKER_*` variables.
    public func command(_ hook: Hook, context: Context) -> ProgramCommand? {
        guard let path = path(of: hook) else { return nil }
        return ProgramCommand(.hook(path, key: hook.key), tool: hook.key, arguments: [],
                              environment: .inherit(updating: context.variables.mapValues { Optional($0) }), timeout: timeout)
    }

    /// Runs `hook` (if configured), writing its output into `log`; returns why it failed, or nil.
    @discardableResult
    public func run(_ hook: Hook, context: Context, log: LogStreamer) async -> String? {
        guard let command = command(hook, context: context) else { return nil }
        await log.append("\(BuildMarkers.foldStart)\(hook.fold)\n$ \(command.program.name)\n")
        var failure: String?
        do {
            let output = try await runner.run(command)
            await log.append(Self.joined(output.stdout, output.stderr))
        } catch let error as ProgramFailure {
            await log.append(Self.joined(error.stdout, error.stderr))
            failure = error.timedOut ? "\(hook.key) did not finish in \(timeout.components.seconds) s and was killed"
                : "\(hook.key) failed with exit code \(error.exitCode.map(String.init) ?? "?")"
        } catch {
            failure = "\(hook.key) could not run: \(error)"
        }
        if let failure { await log.append("\(failure)\n") }
        await log.append("\(BuildMarkers.foldEnd)\(hook.fold)\n")
        return failure
    }

    /// Standard output, then standard error, each ending in a newline.
    private static func joined(_ parts: String...) -> String {
        parts.filter { !$0.isEmpty }.map { $0.hasSuffix("\n") ? $0 : $0 + "\n" }.joined()
    }
}
