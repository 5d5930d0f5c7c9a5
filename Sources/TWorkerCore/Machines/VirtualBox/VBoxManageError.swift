/// A failed VBoxManage call: a `ProgramFailure` whose VirtualBox details the runner parsed.
public typealias VBoxManageError = ProgramFailure

extension ProgramFailure {
    /// The machine is locked by a session, typically for a moment right after a poweroff.
    public var isLocked: Bool {
        hex == "0x80bb0007" || message.contains("is already locked by a session")
    }
    public var isNotFound: Bool { hex == "0x80bb0001" || message.contains("Could not find a registered machine") }
    public var isNotRunning: Bool { message.contains("is not currently running") }
    public var isRunningState: Bool { hex == "0x80bb0002" && message.contains("running machine") }

    /// The failure of `command` as VBoxManage reported it (`exitCode` nil: it never finished).
    public static func parse(command: VBoxManageCommand, exitCode: Int32?, stdout: String, stderr: String) -> ProgramFailure {
        ProgramFailure(tool: "VBoxManage", arguments: command.arguments, status: exitCode.map { .exited($0) },
                       stdout: stdout, stderr: stderr, wording: .vboxManage)
    }
}
