import Foundation

/// Every external program tworker runs, one typed builder each: the argv lives here, next to
/// the others, and the argv tests need no program installed.
extension ProgramCommand {
    // MARK: - VBoxManage

    /// One VBoxManage call; a bare `executable` is looked up on PATH at each call, so
    /// VirtualBox installed while tworker runs is found.
    public static func vboxManage(_ command: VBoxManageCommand, executable: String, timeout: Duration) -> ProgramCommand {
        ProgramCommand(.vboxmanage(executable), tool: "VBoxManage", arguments: command.arguments, timeout: timeout,
                       outputLimit: 8 << 20, errorLimit: 1 << 20, wording: .vboxManage)
    }

    // MARK: - qemu

    /// One qemu-img call (creating an overlay, reading an image's snapshots).
    public static func qemuImg(_ command: QEMUImgCommand, executable: String, timeout: Duration) -> ProgramCommand {
        ProgramCommand(.qemuImg(executable), tool: "qemu-img", arguments: command.arguments, timeout: timeout)
    }

    /// Starts a worker VM: with `-daemonize` qemu returns once the VM is set up (or has failed,
    /// saying why on stderr), so `timeout` bounds the start, not the VM's life.
    public static func qemuSystem(_ launch: QEMULaunch, executable: String, timeout: Duration) -> ProgramCommand {
        ProgramCommand(.qemuSystem(executable), tool: "qemu-system", arguments: launch.arguments, timeout: timeout)
    }

    // MARK: - git

    /// A git call that never waits for a password prompt nobody will answer.
    public static func git(_ command: GitCommand) -> ProgramCommand {
        ProgramCommand(.git, arguments: command.arguments, environment: .inherit(updating: ["GIT_TERMINAL_PROMPT": "0"]))
    }

    // MARK: - tar

    /// Unpacks `archive` (compression detected by tar) into the existing `directory`.
    public static func tarExtract(_ archive: String, into directory: String) -> ProgramCommand {
        ProgramCommand(.tar, arguments: ["-xf", archive, "-C", directory])
    }

    // MARK: - vagrant

    /// A vagrant call in the project `directory`, with `variables` added to tworker's environment.
    public static func vagrant(_ arguments: [String], executable: String, directory: String, variables: [String: String]) -> ProgramCommand {
        ProgramCommand(.vagrant(executable), tool: "vagrant", arguments: arguments, environment: .inherit(updating: variables),
                       workingDirectory: directory, outputLimit: 4 << 20, errorLimit: 1 << 20, wording: .outputTail)
    }

    // MARK: - redis-server

    /// The embedded redis-server: unix socket only, append-only file in `directory`, daemonized
    /// so a Ctrl-C aimed at tworker's process group does not take Redis down before tworker
    /// has written its jobs' final states.
    public static func embeddedRedisServer(directory: String, socket: String, pidFile: String) -> ProgramCommand {
        ProgramCommand(.redisServer, arguments: [
            "--port", "0", "--unixsocket", socket, "--unixsocketperm", "700",
            "--dir", directory, "--appendonly", "yes", "--pidfile", pidFile,
            "--daemonize", "yes", "--logfile", directory + "/redis.log", "--save", "",
        ], capturesOutput: false)
    }

    // MARK: - host setup (`tworker setup`)

    /// A group of its own for the build user: `groupadd --system NAME`.
    public static func groupadd(_ name: String) -> ProgramCommand {
        ProgramCommand(.groupadd, arguments: ["--system", name], timeout: .seconds(60))
    }

    /// The build user: `shell` as its login shell (builds run commands as it; the bash found on
    /// PATH) and a home of its own (HOME for its builds); `group` as its primary group, else a
    /// group of its own name.
    public static func useradd(_ name: String, group: String?, shell: String) -> ProgramCommand {
        let grouping = group.map { ["--gid", $0] } ?? ["--user-group"]
        return ProgramCommand(.useradd, arguments: ["--create-home", "--shell", shell] + grouping + [name], timeout: .seconds(60))
    }

    /// An ed25519 key pair without a passphrase at `path` (and `path.pub`).
    public static func sshKeygen(path: String, comment: String) -> ProgramCommand {
        ProgramCommand(.sshKeygen, arguments: ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], timeout: .seconds(60))
    }

    /// A program's version line (`VBoxManage --version`, `qemu-img --version`, `ssh -V`).
    public static func version(of program: Program, tool: String? = nil, flag: String = "--version") -> ProgramCommand {
        ProgramCommand(program, tool: tool, arguments: [flag], timeout: .seconds(15), outputLimit: 1 << 16)
    }

    // MARK: - bash

    /// A local build: `shell` runs the script file with exactly the build's environment.
    /// bash running the build script at `path` only while the worker `owner` lives. A worker
    /// SIGKILLed after forking the build but before recording its process group would leave a
    /// build nobody knows of running beside the job's rerun, so the script waits for one line on
    /// stdin (`buildGoAhead`), which the worker writes only once the group is recorded (its
    /// master kills a recorded group when the worker dies); a worker dead before that closes
    /// the pipe and the build never starts. A watcher in the build's process group also kills
    /// the group within half a second of the worker's death, for a worker run by hand. The
    /// watcher is not the script's child, so a `wait` in the build never waits for it; the
    /// worker kills the group when the script ends, watcher included.
    /// What the worker writes to a `buildScript` build once its process group is recorded.
    public static let buildGoAhead = "\n"

    public static func buildScript(_ path: String, shell: String, environment: [String: String], workingDirectory: String,
                                   owner: pid_t = getpid()) -> ProgramCommand {
        // Alive means not gone and not a zombie: a SIGKILLed worker stays a zombie until its
        // master reaps it, and `kill -0` would still find it. Builtins only, no fork per look.
        let alive = "alive() { local s; read -r s < /proc/\(owner)/stat 2>/dev/null || return 1; s=${s##*) }; [ \"${s%% *}\" != Z ]; }; "
        let guarded = alive + "read -r _ || exit 97; alive || exit 97; "
            + "( ( while alive; do sleep 0.5; done; kill -KILL 0 ) </dev/null >/dev/null 2>&1 & ); "
            + "exec \"$BASH\" \"$0\" </dev/null"
        return ProgramCommand(.bash(shell), arguments: ["-c", guarded, path], environment: .exactly(environment), workingDirectory: workingDirectory)
    }

    // MARK: - ssh

    /// ssh running `remoteCommand` on `target` (keys only, tworker's own known_hosts).
    public static func ssh(_ target: SSHTarget, remoteCommand: [String]) -> ProgramCommand {
        ProgramCommand(.ssh, arguments: target.arguments(remoteCommand: remoteCommand))
    }

    /// ssh opening a master connection to `target` on its control socket, left in the background.
    public static func sshControlMaster(_ target: SSHTarget, controlPath: String, connectTimeout: Int = 5) -> ProgramCommand {
        ProgramCommand(.ssh, arguments: target.controlMasterArguments(controlPath: controlPath, connectTimeout: connectTimeout))
    }

    /// ssh telling the master connection on `controlPath` to exit.
    public static func sshControlExit(_ target: SSHTarget, controlPath: String) -> ProgramCommand {
        ProgramCommand(.ssh, arguments: target.controlExitArguments(controlPath: controlPath))
    }
}
