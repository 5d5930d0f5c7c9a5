import Foundation

/// One run of an external program as a value: what to run, with which argv, environment,
/// directory and timeout. Tests assert it without spawning; `ProgramRunner` runs any of them.
public struct ProgramCommand: Sendable, Equatable, CustomStringConvertible {
    /// How a failure reads to an operator: each tool keeps the wording tworker always gave it.
    public enum Wording: Sendable, Equatable {
        /// `VBoxManage ... failed (exit 1): <first error line> [CODE 0x...]`; an error block on
        /// stderr is a failure even with exit 0 (Vagrant's rule).
        case vboxManage
        /// `git ... failed: <stderr>`.
        case standardError
        /// `vagrant ... failed (exited(1)):` and the tail of stderr and stdout.
        case outputTail
    }

    public var program: Program
    /// The name the operator knows the tool by (`VBoxManage` even when configured by a path).
    public var tool: String
    public var arguments: [String]
    public var environment: ProgramEnvironment
    public var workingDirectory: String?
    /// nil: no limit. On expiry the program is killed and the run fails as timed out.
    public var timeout: Duration?
    /// False for a program whose output nobody reads (a daemonizing redis-server).
    public var capturesOutput: Bool
    /// Capture limits: more output than this fails the run rather than growing without bound.
    public var outputLimit: Int
    public var errorLimit: Int
    public var wording: Wording

    public init(_ program: Program, tool: String? = nil, arguments: [String], environment: ProgramEnvironment = .inherit(updating: [:]),
                workingDirectory: String? = nil, timeout: Duration? = nil, capturesOutput: Bool = true,
                outputLimit: Int = 1 << 20, errorLimit: Int = 1 << 16, wording: Wording = .standardError) {
        self.program = program
        self.tool = tool ?? program.name
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.timeout = timeout
        self.capturesOutput = capturesOutput
        self.outputLimit = outputLimit
        self.errorLimit = errorLimit
        self.wording = wording
    }

    /// `git ls-remote --symref -- URL HEAD`, as logs and errors show it.
    public var description: String { ([tool] + arguments).joined(separator: " ") }
}

/// The environment a program runs with.
public enum ProgramEnvironment: Sendable, Equatable {
    /// tworker's own environment with these variables set (or, for nil, removed).
    case inherit(updating: [String: String?])
    /// Exactly these variables and no others (a build's environment).
    case exactly([String: String])

    /// The variables the program sees when tworker's environment is `base`.
    public func resolved(from base: [String: String] = ProcessInfo.processInfo.environment) -> [String: String] {
        switch self {
        case .exactly(let variables):
            return variables
        case .inherit(let updates):
            var variables = base
            for (name, value) in updates { variables[name] = value }
            return variables
        }
    }
}
