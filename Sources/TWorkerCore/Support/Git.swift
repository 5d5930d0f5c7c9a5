import Foundation
import Subprocess
#if canImport(System)
import System
#else
import SystemPackage
#endif

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

public struct GitError: Error, CustomStringConvertible {
    public var description: String
}

public enum Git {
    /// Runs git with `command`'s arguments and returns its stdout; stderr goes into the error.
    public static func run(_ command: GitCommand) async throws -> String {
        let result = try await Subprocess.run(
            .path(FilePath(try ProgramLocator().locate(.git))), arguments: Arguments(command.arguments),
            environment: .inherit.updating(["GIT_TERMINAL_PROMPT": "0"]),
            output: .string(limit: 1 << 20), error: .string(limit: 1 << 16))
        guard case .exited(0) = result.terminationStatus else {
            let stderr = result.standardError.trimmingCharacters(in: .whitespacesAndNewlines)
            throw GitError(description: "git \(command.arguments.joined(separator: " ")) failed: \(stderr)")
        }
        return result.standardOutput
    }
}
