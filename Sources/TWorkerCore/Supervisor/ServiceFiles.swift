import Foundation

/// A problem with what `tworker service install` was asked to render: one clear sentence.
public struct ServiceFilesError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

/// The service definitions that run `tworker start` (the foreground master) under systemd or
/// runit: rendered as text from a few values, so they can be printed, compared and tested
/// without touching /etc.
public struct ServiceFiles: Sendable, Equatable {
    /// Absolute path of the tworker binary.
    public var binary: String
    /// The environment name, passed as `--env`.
    public var env: String
    /// Absolute config directory, passed as `--config-dir`.
    public var configDir: String
    /// Absolute directory the master runs in, so a relative `state_dir` resolves as it does now.
    public var workingDirectory: String
    /// The account the master runs as; nil: root.
    public var user: String?
    /// Its group; nil: the user's primary group (what systemd and chpst do without one).
    public var group: String?
    /// Seconds systemd waits for a graceful stop before SIGKILL: `timeouts.hard_limit` + 60.
    public var stopTimeout: Int
    /// Where runit's svlogd keeps the log.
    public var logDirectory: String

    /// The unit's file name, and the runit service directory's name.
    public static let serviceName = "tworker"
    public static let systemdUnitName = "tworker.service"
    /// Seconds added to `timeouts.hard_limit` for `TimeoutStopSec=`: reporting the last results, cleanup.
    public static let stopGrace = 60

    public init(binary: String, env: String, configDir: String, workingDirectory: String,
                user: String? = nil, group: String? = nil, stopTimeout: Int,
                logDirectory: String = "/var/log/tworker") {
        self.binary = binary
        self.env = env
        self.configDir = configDir
        self.workingDirectory = workingDirectory
        self.user = user
        self.group = group
        self.stopTimeout = stopTimeout
        self.logDirectory = logDirectory
    }

    /// The values for this config: `TimeoutStopSec` from its `timeouts.hard_limit`.
    public init(config: WorkerConfig, binary: String, configDir: String, workingDirectory: String,
                user: String? = nil, group: String? = nil) {
        self.init(binary: binary, env: config.env, configDir: configDir, workingDirectory: workingDirectory,
                  user: user, group: group, stopTimeout: config.timeouts.hardLimit + Self.stopGrace)
    }

    /// `tworker start ...` as argv, binary first.
    public var command: [String] {
        [binary, "start", "--env", env, "--config-dir", configDir]
    }

    // MARK: - Validation

    /// The supervisors a service definition can be written for.
    public enum Manager: String, Sendable, CaseIterable {
        case systemd
        case runit
    }

    /// Checks names and paths for `manager`; the first problem found.
    public func validate(for manager: Manager) throws(ServiceFilesError) {
        if let user, let problem = Self.accountNameProblem(user, what: "user") { throw ServiceFilesError(problem) }
        if let group, let problem = Self.accountNameProblem(group, what: "group") { throw ServiceFilesError(problem) }
        for (what, path) in [("binary", binary), ("config directory", configDir),
                             ("working directory", workingDirectory), ("log directory", logDirectory)] {
            guard path.hasPrefix("/") else {
                throw ServiceFilesError("the \(what) must be an absolute path, got '\(path)'")
            }
            if path.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
                throw ServiceFilesError("the \(what) path contains a newline or another control character, which a service file cannot express: \(path.debugDescription)")
            }
        }
        // systemd strips a line's trailing blanks and joins a line ending in a backslash with the next.
        if manager == .systemd, let last = workingDirectory.last, last.isWhitespace || last == "\\" {
            throw ServiceFilesError("the working directory ends in a blank or a backslash, which a systemd unit cannot express: \(workingDirectory.debugDescription); run from another directory")
        }
        // systemd refuses an executable path holding a quote or a backslash ("special characters").
        if manager == .systemd, binary.contains(where: { "'\"\\".contains($0) }) {
            throw ServiceFilesError("systemd cannot run an executable whose path holds a quote or a backslash: \(binary); install tworker elsewhere")
        }
        guard ConfigLoader.isValidEnvName(env) else {
            throw ServiceFilesError("invalid environment name \"\(env)\" (use letters, digits, '-' and '_')")
        }
        guard stopTimeout > 0 else { throw ServiceFilesError("the stop timeout must be positive, got \(stopTimeout)") }
    }

    /// Why `name` is no valid user or group name (`[a-z_][a-z0-9_-]*[$]?`, at most 32
    /// characters, as useradd takes them), or nil when it is one.
    public static func accountNameProblem(_ name: String, what: String = "user") -> String? {
        let scalars = Array(name.unicodeScalars)
        func isLower(_ c: Unicode.Scalar) -> Bool { ("a"..."z").contains(c) }
        func isDigit(_ c: Unicode.Scalar) -> Bool { ("0"..."9").contains(c) }
        var valid = !scalars.isEmpty && scalars.count <= 32 && (isLower(scalars[0]) || scalars[0] == "_")
        if valid {
            for (index, c) in scalars.enumerated().dropFirst() {
                let isLast = index == scalars.count - 1
                guard isLower(c) || isDigit(c) || c == "_" || c == "-" || (isLast && c == "$") else {
                    valid = false
                    break
                }
            }
        }
        guard !valid else { return nil }
        return "invalid \(what) name \(name.debugDescription): use at most 32 of a-z, 0-9, '_' and '-', starting with a letter or '_' (a final '$' is allowed)"
    }

    // MARK: - systemd

    /// The text of `tworker.service`.
    public var systemdUnit: String {
        var service = [
            "Type=simple",
            "WorkingDirectory=\(Self.systemdPathValue(workingDirectory))",
            "Environment=TWORKER_ENV=\(env)",
            "ExecStart=\(([Self.systemdWord(binary, executable: true)] + command.dropFirst().map { Self.systemdWord($0) }).joined(separator: " "))",
            "# HUP reloads the configuration; the master keeps its pid.",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "# `systemctl stop` (and so every deploy) is graceful: QUIT tells the master to let each running",
            "# build finish and take no new job. No build outlives timeouts.hard_limit, so after it plus",
            "# \(Self.stopGrace) s for reporting (TimeoutStopSec) whatever still runs gets SIGKILL, and the jobs it",
            "# held are recovered by the next start. KillMode=mixed: QUIT goes to the master only (the builds",
            "# and an embedded redis-server must not get it), the final SIGKILL to every process left.",
            "# To hurry a stop in progress (builds stopped now, their jobs requeued at the head of the queue):",
            "#   systemctl kill --kill-who=main --signal=TERM tworker",
            "KillMode=mixed",
            "KillSignal=SIGQUIT",
            "TimeoutStopSec=\(stopTimeout)",
            "SendSIGKILL=yes",
            "Restart=always",
            "RestartSec=2",
            "# 64: usage error, 78: invalid configuration; restarting cannot fix either.",
            "RestartPreventExitStatus=64 78",
        ]
        if let user { service.append("User=\(user)") }
        if let group { service.append("Group=\(group)") }
        service.append("LimitNOFILE=65536")
        let lines = [
            "# \(Self.systemdUnitName): written by `tworker service install --systemd`.",
            "[Unit]",
            "Description=tworker CI build-worker host (\(env))",
            "After=network-online.target redis-server.service",
            "Wants=network-online.target",
            "# Keep restarting every RestartSec however often it fails.",
            "StartLimitIntervalSec=0",
            "",
            "[Service]",
        ] + service + [
            "",
            "[Install]",
            "WantedBy=multi-user.target",
        ]
        return lines.joined(separator: "\n") + "\n"
    }

    /// One word of a systemd command line: specifiers (`%`) doubled, and variables (`$`) in
    /// arguments (the executable gets no substitution); double-quoted with C escapes when it
    /// holds a space, a quote, a backslash or a `;`.
    public static func systemdWord(_ word: String, executable: Bool = false) -> String {
        var escaped = word.replacingOccurrences(of: "%", with: "%%")
        if !executable { escaped = escaped.replacingOccurrences(of: "$", with: "$$") }
        let needsQuotes = word.isEmpty || word.contains { " \t\"'\\;".contains($0) }
        guard needsQuotes else { return escaped }
        escaped = escaped.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        return "\"" + escaped + "\""
    }

    /// A path setting such as `WorkingDirectory=`: taken literally up to the end of the line
    /// (spaces included), with specifiers expanded, so only `%` is escaped.
    static func systemdPathValue(_ path: String) -> String {
        path.replacingOccurrences(of: "%", with: "%%")
    }

    // MARK: - runit

    /// `<service dir>/run`.
    public var runitRun: String {
        let run = (user.map { ["chpst", "-u", runitAccount($0)] } ?? []) + command
        let lines = [
            "#!/bin/sh",
            "# \(Self.serviceName) (runit): written by `tworker service install --runit`.",
            "# sv down / sv restart send TERM: running builds are stopped, their jobs requeued at the head",
            "# of the queue. A graceful stop, letting running builds finish: sv once \(Self.serviceName) && sv quit \(Self.serviceName)",
            "exec 2>&1",
            "cd \(Self.shellQuote(workingDirectory)) || exit 1",
            "exec " + run.map(Self.shellQuote).joined(separator: " "),
        ]
        return lines.joined(separator: "\n") + "\n"
    }

    /// `<service dir>/log/run`: svlogd with timestamps into `logDirectory`, as the user when there is one.
    public var runitLogRun: String {
        let dir = Self.shellQuote(logDirectory)
        var lines = ["#!/bin/sh", "mkdir -p \(dir)"]
        if let user {
            lines.append("chown \(Self.shellQuote(runitAccount(user))) \(dir)")
            lines.append("exec chpst -u \(Self.shellQuote(runitAccount(user))) svlogd -tt \(dir)")
        } else {
            lines.append("exec svlogd -tt \(dir)")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// `user` or `user:group` for chpst and chown.
    private func runitAccount(_ user: String) -> String {
        group.map { "\(user):\($0)" } ?? user
    }

    /// What `--print` shows for runit: both scripts, each under a `# <path>` header.
    public var runitPrinted: String {
        "# run\n" + runitRun + "\n# log/run\n" + runitLogRun
    }

    /// A POSIX shell word: as is when it only holds safe characters, else in single quotes
    /// (a `'` inside becomes `'\''`).
    public static func shellQuote(_ word: String) -> String {
        let safe = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")
        if !word.isEmpty, word.allSatisfy({ safe.contains($0) }) { return word }
        return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    // MARK: - Locations

    /// An absolute, normalized form of `path` (`.` and `..` removed), relative paths against `base`.
    public static func absolute(_ path: String, relativeTo base: String) -> String {
        absolutePath(path, relativeTo: base)
    }

    /// The config directory `tworker` uses for `flag` (`--config-dir`), `TWORKER_CONFIG_DIR` or
    /// `./config`, made absolute: what ConfigLoader reads.
    public static func configDirectory(flag: String?, environment: [String: String], currentDirectory: String) -> String {
        let named = [flag, environment["TWORKER_CONFIG_DIR"]].compactMap { $0 }.first { !$0.isEmpty }
        return absolutePath(named ?? "./config", relativeTo: currentDirectory)
    }

    /// The absolute path of the running executable: /proc/self/exe, else argv[0].
    public static func currentExecutable(currentDirectory: String = FileManager.default.currentDirectoryPath) -> String {
        if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"), target.hasPrefix("/") {
            return target
        }
        let argv0 = CommandLine.arguments.first ?? "tworker"
        return URL(fileURLWithPath: absolutePath(argv0, relativeTo: currentDirectory)).resolvingSymlinksInPath().path
    }
}
