import Foundation

/// An external program tworker runs: the name it is run by (a bare name looked up on PATH, or
/// a path, containing `/`, used as it is) and what an operator does when it is not there.
public struct Program: Sendable, Equatable, CustomStringConvertible {
    public var name: String
    /// The end of the missing-program line: `install VirtualBox or set virtualbox.vboxmanage`.
    public var remedy: String

    public init(name: String, remedy: String) {
        self.name = name
        self.remedy = remedy
    }

    public var description: String { name }

    public static func vboxmanage(_ name: String) -> Program {
        Program(name: name, remedy: "install VirtualBox or set virtualbox.vboxmanage")
    }
    public static func vagrant(_ name: String) -> Program {
        Program(name: name, remedy: "install Vagrant or set vagrant.vagrant")
    }
    public static func bash(_ name: String = "bash") -> Program {
        Program(name: name, remedy: "install bash")
    }
    public static func qemuSystem(_ name: String) -> Program {
        Program(name: name, remedy: "install qemu-system-x86 or set qemu.binary")
    }
    public static func qemuImg(_ name: String) -> Program {
        Program(name: name, remedy: "install qemu-utils or set qemu.img")
    }
    public static let ssh = Program(name: "ssh", remedy: "install the ssh client (openssh-client)")
    /// Drops a root master's workers to `user`/`group` (util-linux, on every Debian system).
    public static let setpriv = Program(name: "setpriv", remedy: "install util-linux")
    public static let git = Program(name: "git", remedy: "install git")
    public static let tar = Program(name: "tar", remedy: "install tar")
    public static let redisServer = Program(name: "redis-server", remedy: "install redis-server or set redis.url to an existing server")
    public static let useradd = Program(name: "useradd", remedy: "install passwd (useradd, groupadd)")
    public static let groupadd = Program(name: "groupadd", remedy: "install passwd (useradd, groupadd)")
    public static let sshKeygen = Program(name: "ssh-keygen", remedy: "install the ssh client (openssh-client)")

    /// A host-side hook (`hooks.before_job`, `hooks.after_job`): an executable at `path`.
    public static func hook(_ path: String, key: String) -> Program {
        Program(name: path, remedy: "make it an executable file or unset \(key)")
    }

    /// What every job of `config.provider` runs: `tworker start` checks these before it starts workers.
    public static func forWorkers(_ config: WorkerConfig) -> [Program] {
        let machine: [Program] = switch config.provider {
        case .local: [.bash()]
        case .virtualbox: [.vboxmanage(config.virtualbox.vboxmanage), .ssh]
        case .qemu: [.qemuSystem(config.qemu.binary), .qemuImg(config.qemu.img), .ssh]
        }
        return machine + [config.hooks.beforeJob.map { hook($0, key: "hooks.before_job") },
                          config.hooks.afterJob.map { hook($0, key: "hooks.after_job") }].compactMap { $0 }
    }

    /// What `tworker start` checks before it takes the master lock: its workers' programs, and
    /// redis-server when it runs the embedded Redis.
    public static func forStart(_ config: WorkerConfig) -> [Program] {
        forWorkers(config) + (config.redis.usesEmbedded ? [.redisServer] : [])
    }

    /// What a `tworker vagrant` command runs: VBoxManage (qemu and qemu-img for `provider: qemu`);
    /// ssh to provision, vagrant to build a box; tar to unpack a `.box` file into the base VM
    /// (`importingBase`: a command that makes the base when it is missing or rebuilds it), so a
    /// rebuild never sets the old base aside only to find it cannot unpack the new one.
    public static func forLifecycle(_ config: WorkerConfig, provisioning: Bool = false, buildingBox: Bool = false,
                                    importingBase: Bool = false) -> [Program] {
        if config.provider == .qemu { return [.qemuSystem(config.qemu.binary), .qemuImg(config.qemu.img), .ssh] }
        // A box vagrant builds is a file; so is a `vms.base_box` that exists (else a vagrant box name).
        let unpacking = importingBase && (buildingBox || BaseBox.isFile(config.vms.baseBox))
        return [.vboxmanage(config.virtualbox.vboxmanage)] + (provisioning ? [.ssh] : []) + (buildingBox ? [.vagrant(config.vagrant.vagrant)] : [])
            + (unpacking ? [.tar] : [])
    }
}

/// A program that is not there, as one line that names it and what to do about it.
public struct ProgramNotFound: Error, Sendable, Equatable, CustomStringConvertible {
    public var program: Program
    /// The PATH searched for a bare name; nil when the name was a path.
    public var searchPath: String?

    public var description: String {
        if let searchPath {
            return "\(program.name) not found on PATH (\(searchPath)); \(program.remedy)"
        }
        return "\(program.name) not found or not executable; \(program.remedy)"
    }
}

/// Finds programs the way a shell does: a name containing `/` is used as it is, a bare name is
/// the first executable regular file of that name in PATH's directories, in order.
///
/// Empty PATH entries are skipped. POSIX reads them as the current directory, but a worker's
/// current directory is wherever it was started: no place to pick a program from by accident.
public struct ProgramLocator: Sendable {
    /// What a shell searches when PATH is not set at all.
    public static let defaultSearchPath = "/usr/local/bin:/usr/bin:/bin"

    public var searchPath: String

    /// `searchPath` is a PATH value; the default is this process's PATH.
    public init(searchPath: String? = ProcessInfo.processInfo.environment["PATH"]) {
        self.searchPath = searchPath ?? Self.defaultSearchPath
    }

    /// The directories searched, in order.
    public var directories: [String] {
        searchPath.split(separator: ":", omittingEmptySubsequences: true).map(String.init)
    }

    /// The path to run `program` by.
    public func locate(_ program: Program) throws(ProgramNotFound) -> String {
        if program.name.contains("/") {
            guard Self.isExecutableFile(program.name) else { throw ProgramNotFound(program: program, searchPath: nil) }
            return program.name
        }
        if !program.name.isEmpty {
            for directory in directories {
                let candidate = directory.hasSuffix("/") ? "\(directory)\(program.name)" : "\(directory)/\(program.name)"
                if Self.isExecutableFile(candidate) { return candidate }
            }
        }
        throw ProgramNotFound(program: program, searchPath: searchPath)
    }

    /// Throws for the first of `programs` that is not there.
    public func check(_ programs: [Program]) throws(ProgramNotFound) {
        for program in programs { _ = try locate(program) }
    }

    /// A regular file (after symlinks) this process may execute: a shell skips directories and
    /// files without the execute bit and goes on down PATH.
    static func isExecutableFile(_ path: String) -> Bool {
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return false }
        return access(path, X_OK) == 0
    }
}
