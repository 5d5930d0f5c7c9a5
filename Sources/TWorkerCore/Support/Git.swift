import Foundation

/// git invocations as argv values, never shell strings.
public enum GitCommand: Sendable, Equatable {
    /// `git ls-remote --symref -- <url> HEAD`: the default branch and its head commit.
    case remoteHead(url: String)

    public var arguments: [String] {
        switch self {
        case .remoteHead(let url): ["ls-remote", "--symref", "--", url, "HEAD"]
        }
    }
}

/// What `git ls-remote --symref URL HEAD` says about a repository.
public struct RemoteHead: Sendable, Equatable {
    public var branch: String?
    public var commit: String

    public init(branch: String?, commit: String) {
        self.branch = branch
        self.commit = commit
    }

    /// Parses `ref: refs/heads/main\tHEAD` and `<sha>\tHEAD` lines.
    public init?(lsRemoteOutput: String) {
        var branch: String?
        var commit: String?
        for line in lsRemoteOutput.split(separator: "\n") {
            let fields = line.split(separator: "\t")
            guard fields.count == 2, fields[1] == "HEAD" else { continue }
            if fields[0].hasPrefix("ref: refs/heads/") {
                branch = String(fields[0].dropFirst("ref: refs/heads/".count))
            } else {
                commit = String(fields[0])
            }
        }
        guard let commit else { return nil }
        self.branch = branch
        self.commit = commit
    }
}

public enum Git {
    /// Runs git with `command`'s arguments and returns its stdout; a failure is a
    /// `ProgramFailure` carrying git's stderr.
    public static func run(_ command: GitCommand, runner: any ProgramRunning = ProgramRunner()) async throws -> String {
        try await runner.run(.git(command)).stdout
    }
}
