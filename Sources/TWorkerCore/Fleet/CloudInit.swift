import Foundation
import RedisClient

/// A problem with what `tworker host cloud-init` was asked for: one clear sentence.
public struct CloudInitError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Where a host takes tworker releases from: a release tarball (`scripts/release` makes one)
/// as an absolute path on the machine, or an http(s) URL fetched with curl. It names the newest
/// release: the host installs whatever it finds there when it differs from what it runs.
public enum ReleaseSource: Sendable, Equatable {
    case path(String)
    case url(String)

    public init(_ text: String) throws(CloudInitError) {
        if text.hasPrefix("/") {
            guard !text.contains("\0"), !text.hasSuffix("/") else {
                throw CloudInitError("--release: '\(text)' must name a release tarball, not a directory")
            }
            self = .path(text)
            return
        }
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased() else {
            throw CloudInitError("--release: '\(text)' is neither an absolute path nor an http(s) URL")
        }
        guard scheme == "http" || scheme == "https" else {
            throw CloudInitError("--release: '\(text)': only http:// and https:// URLs are fetched (got \(scheme)://)")
        }
        guard let host = components.host, !host.isEmpty else {
            throw CloudInitError("--release: '\(text)' has no host")
        }
        guard !components.path.isEmpty, components.path != "/" else {
            throw CloudInitError("--release: '\(text)' names no file (expected e.g. https://\(host)/tworker-latest.tar.gz)")
        }
        guard !text.contains(where: { $0.isWhitespace || $0.isNewline }) else {
            throw CloudInitError("--release: '\(text)' contains whitespace")
        }
        self = .url(text)
    }

    public var text: String {
        switch self {
        case .path(let path): path
        case .url(let url): url
        }
    }
}

/// `tworker host cloud-init`: `#cloud-config` user data that turns a fresh Debian/Ubuntu VM into
/// a tworker host on its first boot, and has it take the newest release on every later boot
/// (seed 000's rc.local flow, with cloud-init and systemd).
///
/// First boot (cloud-init): packages, the `tworker` account, `/etc/tworker/worker.yml`, the
/// update script and its systemd oneshot are written; then the oneshot installs the release,
/// `tworker vagrant import` makes the VMs, `tworker service install --systemd` writes the unit
/// and the service starts. Every boot after: `tworker-update.service` runs before
/// `tworker.service` and installs the release if it changed.
public struct CloudInit: Sendable, Equatable {
    /// With `sentinels`, only a `redis://` URL's password and database are used (or none at all).
    public var redisURL: String
    /// `redis.sentinels` (host:port) and `redis.master_name`: the host finds the master through them.
    public var sentinels: [String]
    public var masterName: String?
    public var vms: Int
    public var release: ReleaseSource
    /// The environment on the host (`worker.<env>.yml` from the release).
    public var env: String

    /// Where things go on the host.
    public static let configDir = "/etc/tworker"
    public static let home = "/var/lib/tworker"
    public static let prefix = "/opt/tworker"
    public static let binary = "/usr/local/bin/tworker"
    public static let updateScript = "/usr/local/sbin/tworker-update"
    public static let updateDefaults = "/etc/default/tworker-update"
    public static let account = "tworker"

    public init(redisURL: String, vms: Int, release: ReleaseSource, env: String = "production",
                sentinels: [String] = [], masterName: String? = nil) throws(CloudInitError) {
        guard (1...64).contains(vms) else { throw CloudInitError("--vms must be between 1 and 64, got \(vms)") }
        for sentinel in sentinels {
            do { _ = try RedisEndpoint.HostPort(parsing: sentinel) } catch { throw CloudInitError("--sentinel: \(error.message)") }
        }
        guard sentinels.isEmpty == (masterName ?? "").isEmpty else {
            throw CloudInitError(sentinels.isEmpty ? "--master-name needs at least one --sentinel"
                                                   : "--sentinel needs --master-name (the name the sentinels monitor)")
        }
        if let masterName, !masterName.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) {
            throw CloudInitError("--master-name: '\(masterName)' is not a Sentinel master name")
        }
        // With sentinels a URL is optional: only its password and database count.
        let url = !sentinels.isEmpty && (redisURL == "embedded" || redisURL.isEmpty) ? "" : redisURL
        if !url.isEmpty { try Self.checkShared(url) }
        guard env.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }), !env.isEmpty else {
            throw CloudInitError("--env: '\(env)' is not an environment name")
        }
        self.redisURL = url
        self.sentinels = sentinels
        self.masterName = masterName
        self.vms = vms
        self.release = release
        self.env = env
    }

    /// A Redis every host of the fleet can reach: a `redis://` URL, not the embedded server or a socket.
    private static func checkShared(_ redisURL: String) throws(CloudInitError) {
        guard redisURL != "embedded" else {
            throw CloudInitError("--redis-url: a fleet host needs the shared Redis (redis://host:port/db), not 'embedded'")
        }
        let endpoint: RedisEndpoint
        do {
            endpoint = try RedisEndpoint(url: redisURL)
        } catch {
            throw CloudInitError("--redis-url: \((error as? RedisURLError)?.message ?? "\(error)")")
        }
        guard case .tcp = endpoint.address else {
            throw CloudInitError("--redis-url: a fleet host reaches the shared Redis over the network (redis://...), not a unix socket")
        }
    }

    // MARK: - Files

    /// The host's own config: everything else comes from the release's `worker.<env>.yml`.
    public var workerYAML: String {
        """
        # Written by `tworker host cloud-init` on first boot: this host's own settings, merged over
        # worker.\(env).yml (which tworker-update copies from each release). Edit, then `systemctl reload tworker`.
        redis:
        \(redisLines)
        vms:
          count: \(vms)
        state_dir: \(Self.home)/var
        user: \(Self.account)
        vagrant:
          directory: \(Self.prefix)/current/boxes

        """
    }

    /// The `redis:` keys of the host's config (indented two spaces, one per line).
    var redisLines: String {
        var lines: [String] = []
        if !redisURL.isEmpty { lines.append("  url: \(Self.yamlString(redisURL))") }
        if !sentinels.isEmpty, let masterName {
            lines.append("  sentinels: [\(sentinels.map(Self.yamlString).joined(separator: ", "))]")
            lines.append("  master_name: \(Self.yamlString(masterName))")
        }
        return lines.joined(separator: "\n")
    }

    /// Read by the update script and its unit; shell syntax, single-quoted.
    public var updateDefaultsText: String {
        """
        # Where tworker-update takes the newest tworker release from (a tarball path or an http(s) URL).
        TWORKER_RELEASE=\(Self.shellQuote(release.text))
        TWORKER_ENV=\(Self.shellQuote(env))

        """
    }

    public static let updateUnit = """
        [Unit]
        Description=Install the newest tworker release before tworker starts
        Wants=network-online.target
        After=network-online.target
        Before=tworker.service

        [Service]
        Type=oneshot
        RemainAfterExit=yes
        EnvironmentFile=\(updateDefaults)
        ExecStart=\(updateScript)
        TimeoutStartSec=900

        [Install]
        WantedBy=multi-user.target

        """

    /// tworker.service (written by `tworker service install`) waits for the update on every boot.
    public static let serviceDropIn = """
        [Unit]
        Wants=tworker-update.service
        After=tworker-update.service

        """

    public var userData: String {
        var lines: [String] = []
        lines.append("#cloud-config")
        lines.append("# tworker \(TWorkerVersion.current) host: generated by `tworker host cloud-init`.")
        lines.append("# First boot: install tworker, write its config, import the VMs, start the service.")
        lines.append("# Every later boot: tworker-update.service installs the newest release before tworker starts.")
        lines.append("package_update: true")
        lines.append("packages:")
        for package in Self.packages { lines.append("  - \(package)") }
        lines.append("users:")
        lines.append("  - default")
        lines.append("  - name: \(Self.account)")
        lines.append("    gecos: tworker builds")
        lines.append("    system: true")
        lines.append("    homedir: \(Self.home)")
        lines.append("    shell: /bin/bash")
        lines.append("    lock_passwd: true")
        lines.append("write_files:")
        // worker.yml may hold the Redis password: readable by the tworker account only, so it is
        // written late (`defer`), once cloud-init has created that account.
        let files: [(path: String, owner: String, permissions: String, deferred: Bool, content: String)] = [
            (Self.configDir + "/worker.yml", "root:\(Self.account)", "0640", true, workerYAML),
            (Self.updateDefaults, "root:root", "0644", false, updateDefaultsText),
            (Self.updateScript, "root:root", "0755", false, Self.updateScriptText),
            ("/etc/systemd/system/tworker-update.service", "root:root", "0644", false, Self.updateUnit),
            ("/etc/systemd/system/tworker.service.d/update.conf", "root:root", "0644", false, Self.serviceDropIn),
        ]
        for file in files {
            lines.append("  - path: \(file.path)")
            lines.append("    owner: \(file.owner)")
            lines.append("    permissions: '\(file.permissions)'")
            if file.deferred { lines.append("    defer: true") }
            lines.append("    content: |")
            // A literal block: every line indented; the text's own last newline ends it.
            let content = file.content.hasSuffix("\n") ? file.content : file.content + "\n"
            for line in content.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
                lines.append(line.isEmpty ? "" : "      " + line)
            }
        }
        lines.append("runcmd:")
        for command in firstBootCommands {
            lines.append("  - [" + command.map(Self.yamlString).joined(separator: ", ") + "]")
        }
        lines.append("")
        return lines.joined(separator: "\n")
    }

    /// Packages every host needs (the release's binary links Debian's hiredis, installed by the
    /// update script under the name the distribution uses).
    public static let packages = ["ca-certificates", "curl", "tar", "gzip", "git", "openssh-client", "rsync"]

    /// cloud-init's runcmd, in order, each an argv (no shell).
    public var firstBootCommands: [[String]] {
        let config = ["--env", env, "--config-dir", Self.configDir]
        return [
            ["install", "-d", "-o", Self.account, "-g", Self.account, "-m", "0750", Self.home],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "tworker-update.service"],
            // Installs the release now; on later boots systemd runs it before tworker.service.
            ["systemctl", "start", "tworker-update.service"],
            ["env", "-C", Self.home, "runuser", "-u", Self.account, "--", "env", "HOME=\(Self.home)",
             Self.binary, "vagrant", "import"] + config,
            ["env", "-C", Self.home, Self.binary, "service", "install", "--systemd", "--user", Self.account, "--force"] + config,
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "tworker.service"],
        ]
    }

    // MARK: - Quoting

    /// A YAML double-quoted scalar (JSON's escapes are YAML's).
    static func yamlString(_ text: String) -> String {
        JSONValue.string(text).jsonText
    }

    static func shellQuote(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
