/// A failed exchange with qemu's QMP socket.
public enum QMPError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The socket could not be reached (not there yet, refused, path too long...).
    case connect(path: String, reason: String)
    /// qemu answered `{"error":{"class":..,"desc":..}}`.
    case command(String, errorClass: String, desc: String)
    /// `human-monitor-command` succeeded at the QMP level but the HMP command failed: HMP reports
    /// errors (savevm, loadvm...) as a returned text such as `Error: ...`.
    case humanMonitor(commandLine: String, message: String)
    /// No reply within the timeout.
    case timeout(command: String, after: Duration)
    /// qemu closed the socket (it exited, or another client took over).
    case connectionClosed(command: String)
    /// Something that is not QMP arrived (bad JSON, an unexpected message).
    case protocolViolation(command: String, detail: String)

    /// The command the error is about (`qmp_capabilities` for the greeting phase).
    public var command: String {
        switch self {
        case .connect: "connect"
        case .command(let command, _, _), .timeout(let command, _), .connectionClosed(let command),
             .protocolViolation(let command, _):
            command
        case .humanMonitor(let line, _): "human-monitor-command \(line)"
        }
    }

    /// qemu's error class (`GenericError`, `CommandNotFound`...), when qemu gave one.
    public var errorClass: String? {
        if case .command(_, let errorClass, _) = self { errorClass } else { nil }
    }

    /// qemu's own message, when qemu gave one.
    public var qemuMessage: String? {
        switch self {
        case .command(_, _, let desc): desc
        case .humanMonitor(_, let message): message
        default: nil
        }
    }

    public var description: String {
        switch self {
        case .connect(let path, let reason): "QMP: cannot connect to \(path): \(reason)"
        case .command(let command, let errorClass, let desc): "QMP \(command) failed: \(desc) [\(errorClass)]"
        case .humanMonitor(let line, let message): "QMP human-monitor-command '\(line)' failed: \(message)"
        case .timeout(let command, let after): "QMP \(command): no reply within \(after)"
        case .connectionClosed(let command): "QMP \(command): qemu closed the connection"
        case .protocolViolation(let command, let detail): "QMP \(command): unexpected message: \(detail)"
        }
    }
}
