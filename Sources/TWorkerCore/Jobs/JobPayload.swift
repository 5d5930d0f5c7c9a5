/// One build stage, in the order the build script runs them.
public enum BuildStage: String, Sendable, CaseIterable {
    case beforeInstall = "before_install"
    case install
    case beforeScript = "before_script"
    case script
    case afterSuccess = "after_success"
    case afterFailure = "after_failure"
    case afterScript = "after_script"
}

/// A validated build job (`args[0]` of a Resque queue entry).
public struct JobPayload: Sendable, Equatable {
    /// What to clone and check out before the build.
    public struct Checkout: Sendable, Equatable {
        /// `owner/name`; also the directory the clone goes into.
        public var slug: String
        public var sourceURL: String
        public var commit: String
        public var branch: String

        public init(slug: String, sourceURL: String, commit: String, branch: String) {
            self.slug = slug
            self.sourceURL = sourceURL
            self.commit = commit
            self.branch = branch
        }
    }

    /// One entry of `config.env`: `NAME=value`, or `{"name", "value", "secure": true}`.
    public struct EnvVar: Sendable, Equatable {
        public var name: String
        public var value: String
        /// A secret: its value is masked in the log (`JobSecrets`).
        public var secure: Bool

        public init(name: String, value: String, secure: Bool = false) {
            self.name = name
            self.value = value
            self.secure = secure
        }
    }

    public var id: String
    public var checkout: Checkout?
    public var env: [EnvVar]
    /// Commands per stage; only stages with at least one command are present.
    public var stages: [BuildStage: [String]]
    /// Seconds; nil means the worker's default.
    public var hardLimit: Int?
    /// Seconds without log output before the build is killed; nil means the worker's default.
    public var logSilence: Int?

    public init(
        id: String,
        checkout: Checkout? = nil,
        env: [EnvVar] = [],
        stages: [BuildStage: [String]] = [:],
        hardLimit: Int? = nil,
        logSilence: Int? = nil
    ) {
        self.id = id
        self.checkout = checkout
        self.env = env
        self.stages = stages.filter { !$0.value.isEmpty }
        self.hardLimit = hardLimit
        self.logSilence = logSilence
    }

    /// Commands of one stage (empty when the stage has none).
    public func commands(_ stage: BuildStage) -> [String] { stages[stage] ?? [] }
}

/// A decoded queue entry.
public struct QueuedJob: Sendable {
    /// Exactly the bytes taken off the queue (needed for LREM).
    public var raw: [UInt8]
    /// The top-level object (`class`, `args`, `attempts`, `queued_at`, and any client keys).
    public var envelope: [String: JSONValue]
    public var payload: JobPayload
    /// Envelope `attempts` (earlier attempts), or 0.
    public var attempts: Int
    /// Envelope `queued_at`, as the client wrote it.
    public var queuedAt: String?

    public init(raw: [UInt8], envelope: [String: JSONValue], payload: JobPayload, attempts: Int, queuedAt: String?) {
        self.raw = raw
        self.envelope = envelope
        self.payload = payload
        self.attempts = attempts
        self.queuedAt = queuedAt
    }

    /// The same entry re-serialized with attempts set (other envelope keys preserved) — used to requeue.
    public func withAttempts(_ n: Int) -> [UInt8] {
        var copy = envelope
        copy["attempts"] = .int(Int64(max(0, n)))
        return JSONValue.object(copy).serialized()
    }

    /// Envelope `failed_on`: the workers (`host:vm`) whose machine failed this job.
    public var failedOn: [String] {
        guard case .array(let workers)? = envelope["failed_on"] else { return [] }
        return workers.compactMap { if case .string(let worker) = $0 { worker } else { nil } }
    }

    /// The entry to requeue after `worker`'s machine failed it: attempts set, `worker` noted in
    /// `failed_on` so that another worker takes it if one can.
    public func withInfrastructureFailure(attempts n: Int, worker: String) -> [UInt8] {
        var copy = envelope
        copy["attempts"] = .int(Int64(max(0, n)))
        let workers = failedOn.contains(worker) ? failedOn : failedOn + [worker]
        copy["failed_on"] = .array(workers.map(JSONValue.string))
        return JSONValue.object(copy).serialized()
    }
}

/// Why a queue entry can't be run; `problems` lists every problem found, each naming its path.
public struct PayloadError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is, mapped to Resque's `exception` field.
    public enum Kind: String, Sendable {
        /// The entry is not JSON at all.
        case malformedJSON = "MalformedJSON"
        /// JSON, but not a valid tworker job.
        case invalidPayload = "InvalidPayload"
    }

    public var problems: [String]
    /// The job id, when the id itself was present and valid.
    public var jobID: String?
    public var kind: Kind
    /// The parsed entry, when it was JSON (for the failure record).
    public var envelope: JSONValue?

    public init(problems: [String], jobID: String? = nil, kind: Kind = .invalidPayload, envelope: JSONValue? = nil) {
        self.problems = problems
        self.jobID = jobID
        self.kind = kind
        self.envelope = envelope
    }

    /// Resque `exception` name: "MalformedJSON" or "InvalidPayload".
    public var exception: String { kind.rawValue }

    public var description: String {
        let head = kind == .malformedJSON ? "malformed queue entry" : "invalid job payload"
        let idPart = jobID.map { " (job \($0))" } ?? ""
        return "\(head)\(idPart): " + problems.joined(separator: "; ")
    }
}
