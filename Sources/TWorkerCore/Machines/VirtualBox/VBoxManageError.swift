/// A failed VBoxManage call, parsed once from its stderr.
public struct VBoxManageError: Error, Sendable, CustomStringConvertible {
    public var command: VBoxManageCommand
    public var exitCode: Int32?
    /// The first `VBoxManage: error:` message (or the last stderr line).
    public var message: String
    /// `VBOX_E_INVALID_OBJECT_STATE` and its hex `0x80bb0007`, when VirtualBox said.
    public var code: String?
    public var hex: String?
    public var stderr: String
    public var timedOut: Bool = false

    /// The machine is locked by a session, typically for a moment right after a poweroff.
    public var isLocked: Bool {
        hex == "0x80bb0007" || message.contains("is already locked by a session")
    }
    public var isNotFound: Bool { hex == "0x80bb0001" || message.contains("Could not find a registered machine") }
    public var isNotRunning: Bool { message.contains("is not currently running") }
    public var isRunningState: Bool { hex == "0x80bb0002" && message.contains("running machine") }

    public var description: String {
        if timedOut { return "\(command) did not finish in time and was killed" }
        var text = "\(command) failed"
        if let exitCode { text += " (exit \(exitCode))" }
        text += ": \(message)"
        if let code, let hex { text += " [\(code) \(hex)]" }
        return text
    }

    /// Reads VirtualBox's error block:
    /// `VBoxManage: error: <message>` / `VBoxManage: error: Details: code NAME (0x...), ...`.
    public static func parse(command: VBoxManageCommand, exitCode: Int32?, stdout: String, stderr: String) -> VBoxManageError {
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
        let fallback = (stderr + "\n" + stdout).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .last(where: { !$0.isEmpty && !$0.hasPrefix("0%") }) ?? "no output"
        return VBoxManageError(command: command, exitCode: exitCode, message: message ?? fallback, code: code, hex: hex, stderr: stderr)
    }
}

import Foundation
