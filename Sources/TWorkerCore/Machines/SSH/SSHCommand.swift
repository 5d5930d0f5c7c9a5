import Foundation

/// How tworker reaches a VM over SSH: key auth only, no prompts, a known_hosts file of its own.
public struct SSHTarget: Sendable, Equatable {
    public var user: String
    public var host: String
    public var port: Int
    public var key: String?
    public var knownHosts: String
    /// A control socket: sessions go over the connection its master holds open when one runs
    /// there, and connect on their own otherwise.
    public var controlPath: String?

    public init(user: String, host: String, port: Int, key: String?, knownHosts: String, controlPath: String? = nil) {
        self.user = user
        self.host = host
        self.port = port
        self.key = key
        self.knownHosts = knownHosts
        self.controlPath = controlPath
    }

    /// The ssh argv running `remoteCommand` on the VM.
    ///
    /// Keep-alives every 5 s, 3 missed: a VM that died is noticed within ~15 s even when the
    /// TCP connection is not closed for us. Host keys: accepted on first contact, then pinned
    /// in tworker's own file (reset when the VM is re-created).
    public func arguments(connectTimeout: Int = 5, remoteCommand: [String]) -> [String] {
        // ssh keeps the first value of an option: these come before the keep-alives.
        var arguments = controlPath.map { ["-o", "ControlPath=\($0)", "-o", "ControlMaster=no"] } ?? []
        arguments += [
            "-p", String(port),
            "-o", "BatchMode=yes",
            "-o", "PasswordAuthentication=no",
            "-o", "KbdInteractiveAuthentication=no",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", "UserKnownHostsFile=\(knownHosts)",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=\(connectTimeout)",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "-o", "LogLevel=ERROR",
            "-T",
        ]
        if let key { arguments += ["-i", key, "-o", "IdentitiesOnly=yes"] }
        arguments += ["-l", user, host, "--"] + remoteCommand
        return arguments
    }

    /// The ssh argv that opens a master connection on `controlPath`, runs `true` through it
    /// and returns, leaving the master in the background (ControlPersist; its stdio on
    /// /dev/null). No keep-alives: the guest it talks to is paused between jobs, and the
    /// master must outlive the pause; it ends with `-O exit` or when qemu closes the socket.
    public func controlMasterArguments(controlPath: String, connectTimeout: Int = 5) -> [String] {
        var master = self
        master.controlPath = nil
        return ["-o", "ControlPath=\(controlPath)", "-o", "ControlMaster=yes", "-o", "ControlPersist=yes",
                "-o", "ServerAliveInterval=0"] + master.arguments(connectTimeout: connectTimeout, remoteCommand: ["true"])
    }

    /// The ssh argv asking the master on `controlPath` to exit.
    public func controlExitArguments(controlPath: String) -> [String] {
        ["-o", "ControlPath=\(controlPath)", "-O", "exit", "-p", String(port), "-l", user, host]
    }
}
