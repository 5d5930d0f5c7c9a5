import Foundation

/// The accounts of this host, as `tworker setup` needs to know them.
public protocol AccountLookup: Sendable {
    /// uid and primary gid of `user`, nil when there is no such user.
    func user(_ name: String) -> (uid: uid_t, gid: gid_t)?
    func group(_ name: String) -> gid_t?
}

/// The real account database (getpwnam/getgrnam, so NSS is honoured).
public struct SystemAccounts: AccountLookup {
    public init() {}

    public func user(_ name: String) -> (uid: uid_t, gid: gid_t)? {
        guard let entry = getpwnam(name) else { return nil }
        return (entry.pointee.pw_uid, entry.pointee.pw_gid)
    }

    public func group(_ name: String) -> gid_t? {
        getgrnam(name)?.pointee.gr_gid
    }
}

/// `tworker setup`: puts a host in the state `tworker start` needs, step by step, each step
/// changing only what is not so yet, so a second run changes nothing.
public struct HostSetup: Sendable {
    /// What one step found or did.
    public struct Step: Sendable, Equatable {
        public var name: String
        /// True when this step changed the host.
        public var changed: Bool
        public var detail: String

        public init(_ name: String, changed: Bool, _ detail: String) {
            self.name = name
            self.changed = changed
            self.detail = detail
        }
    }

    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var step: String
        public var description: String
    }

    public var runner: any ProgramRunning
    public var accounts: any AccountLookup
    /// Finds bash for the build user's login shell (the path found, as a shell would run it).
    public var locator: ProgramLocator

    public init(runner: any ProgramRunning = ProgramRunner(), accounts: any AccountLookup = SystemAccounts(),
                locator: ProgramLocator = ProgramLocator()) {
        self.runner = runner
        self.accounts = accounts
        self.locator = locator
    }

    /// What the steps run: `tworker setup` checks them all before its first step.
    public static let programs: [Program] = [.groupadd, .useradd, .sshKeygen, .bash()]

    /// Every one of `programs` that `locator` does not find, in order.
    public func missingPrograms() -> [ProgramNotFound] {
        var missing: [ProgramNotFound] = []
        for program in Self.programs {
            do {
                _ = try locator.locate(program)
            } catch {
                missing.append(error)
            }
        }
        return missing
    }

    // MARK: - Config

    /// `worker.yml` from `worker.example.yml` in `configDir`, when it has none yet.
    public func configFile(configDir: String) throws(Failure) -> Step {
        let target = (configDir as NSString).appendingPathComponent("worker.yml")
        let example = (configDir as NSString).appendingPathComponent("worker.example.yml")
        if FileManager.default.fileExists(atPath: target) { return Step("config", changed: false, "\(target) exists") }
        guard let data = FileManager.default.contents(atPath: example) else {
            return Step("config", changed: false, "no \(example) to copy; the built-in defaults and worker.<env>.yml apply")
        }
        do {
            try FileInstall.install([FileInstall.File(path: target, data: data, mode: 0o644)], directories: [configDir], force: false)
        } catch {
            throw Failure(step: "config", description: error.description)
        }
        return Step("config", changed: true, "copied \(example) to \(target)")
    }

    // MARK: - Build user

    /// `group` (when named and missing), then `user` (when missing) with a home and bash, as
    /// found on PATH, for its login shell: builds run as it. Nothing when the config names no user.
    public func account(user: String?, group: String?) async throws(Failure) -> [Step] {
        guard let user else {
            return [Step("user", changed: false, "no user in the config: the workers run as the master's own account")]
        }
        var steps: [Step] = []
        if let group {
            if accounts.group(group) != nil {
                steps.append(Step("group", changed: false, "\(group) exists"))
            } else {
                try await run(.groupadd(group), step: "group")
                steps.append(Step("group", changed: true, "created \(group)"))
            }
        }
        if let ids = accounts.user(user) {
            steps.append(Step("user", changed: false, "\(user) exists (uid \(ids.uid))"))
        } else {
            // Without a group, useradd makes one of the user's name, and refuses if that exists.
            let primary = group ?? (accounts.group(user) != nil ? user : nil)
            let shell: String
            do {
                shell = try locator.locate(.bash())
            } catch {
                throw Failure(step: "user", description: error.description)
            }
            try await run(.useradd(user, group: primary, shell: shell), step: "user")
            steps.append(Step("user", changed: true, "created \(user)" + (group.map { " in group \($0)" } ?? "")))
        }
        return steps
    }

    // MARK: - SSH key

    /// The private key at `ssh.key` (with its `.pub`): generated when missing, then owned by
    /// the workers' account (ssh reads it as that user) with mode 0600.
    public func sshKey(_ key: String?, user: String?) async throws(Failure) -> Step {
        guard let key else {
            return Step("ssh.key", changed: false, "ssh.key is not set: no key to make (set it to the key the VMs accept)")
        }
        let owner: (uid: uid_t, gid: gid_t)? = user.flatMap { accounts.user($0) }
        var changes: [String] = []
        let manager = FileManager.default
        if !manager.fileExists(atPath: key) {
            let directory = (key as NSString).deletingLastPathComponent
            if !manager.fileExists(atPath: directory) {
                do {
                    try manager.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
                } catch {
                    throw Failure(step: "ssh.key", description: "cannot create \(FileInstall.describe(error))")
                }
                if let owner { chown(directory, owner.uid, owner.gid) }
            }
            try await run(.sshKeygen(path: key, comment: "tworker@\(currentHostname())"), step: "ssh.key")
            changes.append("generated \(key) (ed25519)")
        }
        var info = stat()
        guard stat(key, &info) == 0 else {
            throw Failure(step: "ssh.key", description: "cannot read \(key): \(String(cString: strerror(errno)))")
        }
        if let owner, info.st_uid != owner.uid || info.st_gid != owner.gid {
            for path in [key, key + ".pub"] where manager.fileExists(atPath: path) {
                guard chown(path, owner.uid, owner.gid) == 0 else {
                    throw Failure(step: "ssh.key", description: "cannot give \(path) to \(user ?? ""): \(String(cString: strerror(errno)))")
                }
            }
            if changes.isEmpty { changes.append("gave \(key) to \(user ?? "")") }
        }
        if info.st_mode & 0o777 != 0o600 {
            guard chmod(key, 0o600) == 0 else {
                throw Failure(step: "ssh.key", description: "cannot chmod 600 \(key): \(String(cString: strerror(errno)))")
            }
            if changes.isEmpty { changes.append("set \(key) to mode 0600") }
        }
        if changes.isEmpty {
            return Step("ssh.key", changed: false, "\(key) exists, mode 0600" + (user.map { ", owned by \($0)" } ?? ""))
        }
        return Step("ssh.key", changed: true, changes.joined(separator: "; ") + (user.map { ", owned by \($0)" } ?? ""))
    }

    // MARK: - Binary

    /// A copy of `source` at `destination` (mode 0755), replaced only when it differs.
    public func binary(from source: String, to destination: String) throws(Failure) -> Step {
        if (source as NSString).resolvingSymlinksInPath == (destination as NSString).resolvingSymlinksInPath {
            return Step("binary", changed: false, "\(destination) is this binary")
        }
        guard let data = FileManager.default.contents(atPath: source) else {
            throw Failure(step: "binary", description: "cannot read \(source)")
        }
        let changed: Bool
        do {
            changed = try FileInstall.install([FileInstall.File(path: destination, data: data, mode: 0o755)],
                                              directories: [(destination as NSString).deletingLastPathComponent], force: true)
        } catch {
            throw Failure(step: "binary", description: error.description)
        }
        return Step("binary", changed: changed, changed ? "installed \(destination)" : "\(destination) is up to date")
    }

    // MARK: - Service

    /// The systemd unit or runit service that runs `tworker start`, written into `directory`
    /// (systemd: the unit directory; runit: the parent of `tworker/`).
    public func service(_ files: ServiceFiles, manager: ServiceFiles.Manager, directory: String, force: Bool) throws(Failure) -> Step {
        do {
            try files.validate(for: manager)
        } catch {
            throw Failure(step: "service", description: error.description)
        }
        let changed: Bool
        let written: String
        do {
            switch manager {
            case .systemd:
                written = directory + "/" + ServiceFiles.systemdUnitName
                changed = try FileInstall.install([FileInstall.File(path: written, text: files.systemdUnit, mode: 0o644)],
                                                  directories: [directory], force: force)
            case .runit:
                written = directory + "/" + ServiceFiles.serviceName
                changed = try FileInstall.install([FileInstall.File(path: written + "/run", text: files.runitRun, mode: 0o755),
                                                   FileInstall.File(path: written + "/log/run", text: files.runitLogRun, mode: 0o755)],
                                                  directories: [written, written + "/log"], force: force)
            }
        } catch {
            throw Failure(step: "service", description: error.description)
        }
        return Step("service", changed: changed, changed ? "wrote \(written)" : "\(written) is up to date")
    }

    private func run(_ command: ProgramCommand, step: String) async throws(Failure) {
        do {
            try await runner.run(command)
        } catch {
            throw Failure(step: step, description: "\(error)")
        }
    }
}
