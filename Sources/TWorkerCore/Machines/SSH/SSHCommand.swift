import Foundation

/// How tworker reaches a VM over SSH: key auth only, no prompts, a known_hosts file of its own.
public struct SSHTarget: Sendable, Equatable {
    public var user: String
    public var host: String
    public var port: Int
    public var key: String?
    public var knownHosts: String

    public init(user: String, host: String, port: Int, key: String?, knownHosts: String) {
        self.user = user
        self.host = host
        self.port = port
        self.key = key
        self.knownHosts = knownHosts
    }

    /// The ssh argv running `remoteCommand` on the VM.
    ///
    /// Keep-alives every 5 s, 3 missed: a VM that died is noticed within ~15 s even when the
    /// TCP connection is not closed for us. Host keys: accepted on first contact, then pinned
    /// in tworker's own file (reset when the VM is re-created).
    public func arguments(connectTimeout: Int = 5, remoteCommand: [String]) -> [String] {
        var arguments = [
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
}
