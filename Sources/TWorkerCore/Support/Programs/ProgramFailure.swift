import Foundation
import Subprocess

/// A program tworker ran that failed or did not finish: which tool, its argv, how it ended and
/// what it said, with VirtualBox's `Details: code ...` parsed once, here.
public struct ProgramFailure: Error, Sendable, CustomStringConvertible {
    public var tool: String
    public var arguments: [String]
    /// How it ended; nil when it was killed for running out of time.
    public var status: TerminationStatus?
    public var timedOut: Bool = false
    public var stdout: String
    public var stderr: String
    /// The first `VBoxManage: error:` message, else the last line it printed.
    public var message: String
    /// `VBOX_E_INVALID_OBJECT_STATE` and its hex `0x80bb0007`, when VirtualBox said.
    public var code: String?
    public var hex: String?
    public var wording: ProgramCommand.Wording

    public init(tool: String, arguments: [String], status: TerminationStatus?, stdout: String, stderr: String,
                wording: ProgramCommand.Wording) {
        self.tool = tool
        self.arguments = arguments
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.wording = wording
        let details = Self.parseDetails(stderr)
        self.code = details.code
        self.hex = details.hex
        self.message = details.message ?? (stderr + "\n" + stdout).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .last(where: { !$0.isEmpty && !$0.hasPrefix("0%") }) ?? "no output"
    }

    /// A run killed after `timeout`.
    public static func timedOut(_ command: ProgramCommand, after timeout: Duration) -> ProgramFailure {
        var failure = ProgramFailure(tool: command.tool, arguments: command.arguments, status: nil, stdout: "", stderr: "", wording: command.wording)
        failure.timedOut = true
        failure.message = "timed out after \(timeout.components.seconds) s"
        return failure
    }

    /// The exit code, 128 + signal for a killed program (as a shell reports it); nil on timeout.
    public var exitCode: Int32? {
        switch status {
        case .exited(let code): code
        case .signaled(let signal): 128 + signal
        case nil: nil
        }
    }

    /// The command line as logs show it.
    public var commandLine: String { ([tool] + arguments).joined(separator: " ") }

    public var description: String {
        if timedOut { return "\(commandLine) did not finish in time and was killed" }
        switch wording {
        case .vboxManage:
            var text = "\(commandLine) failed"
            if let exitCode { text += " (exit \(exitCode))" }
            text += ": \(message)"
            if let code, let hex { text += " [\(code) \(hex)]" }
            return text
        case .standardError:
            return "\(commandLine) failed: \(stderr.trimmingCharacters(in: .whitespacesAndNewlines))"
        case .outputTail:
            let output = (stderr + "\n" + stdout).trimmingCharacters(in: .whitespacesAndNewlines)
            return "\(commandLine) failed (\(status.map { "\($0)" } ?? "killed")):\n\(output.suffix(4000))"
        }
    }

    /// Reads VirtualBox's error block:
    /// `VBoxManage: error: <message>` / `VBoxManage: error: Details: code NAME (0x...), ...`.
    static func parseDetails(_ stderr: String) -> (message: String?, code: String?, hex: String?) {
        var message: String?
        var code: String?
        var hex: String?
        for line in stderr.split(separator: "\n") {
            guard let range = line.range(of: "VBoxManage: error: ") else { continue }
            let text = line[range.upperBound...]
            if text.hasPrefix("Details: code ") {
                let rest = text.dropFirst("Details: code ".count)
                code = rest.split(separator: " ").first.map(String.init)
                if let open = rest.firstIndex(of: "("), let close = rest[open...].firstIndex(of: ")") {
                    hex = String(rest[rest.index(after: open)..<close]).lowercased()
                }
            } else if !text.hasPrefix("Context:"), message == nil {
                message = String(text)
            }
        }
        return (message, code, hex)
    }
}
