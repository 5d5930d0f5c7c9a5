import Foundation

/// What a root master does to `state_dir` before its workers start as another account: the
/// workers share a group with the master's files and own the directories they write, and
/// every other user is kept out. `state_dir` is tworker's own directory, so its group and
/// mode are ours to set.
public enum WorkerFileAccess {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// `state_dir` (group: the workers', 0750); the embedded Redis's directory (0750), socket
    /// (0770) and lock files (0660) in the same group; the directories the workers write (the local
    /// workspace, `<state_dir>/ssh`, `<state_dir>/qemu`), theirs with everything under them.
    public static func prepare(_ config: WorkerConfig, for account: WorkerAccount) throws(Failure) {
        try makeDirectory(config.stateDir, owner: nil, group: account.gid, mode: 0o750)
        if config.redis.usesEmbedded {
            let socket = EmbeddedRedis.socketPath(stateDir: config.stateDir)
            try makeDirectory((socket as NSString).deletingLastPathComponent, owner: nil, group: account.gid, mode: 0o750)
            guard chown(socket, uid_t.max, account.gid) == 0, chmod(socket, 0o770) == 0 else {
                throw Failure(description: "cannot give the embedded Redis socket \(socket) to the workers' group: \(String(cString: strerror(errno)))")
            }
            // The workers hold the users lock too (the server stays up while any of them runs,
            // their master killed or not), and take the start lock to join and to leave.
            for lock in EmbeddedRedis.lockFiles(stateDir: config.stateDir) {
                let fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0o660)
                defer { if fd >= 0 { close(fd) } }
                guard fd >= 0, fchown(fd, uid_t.max, account.gid) == 0, fchmod(fd, 0o660) == 0 else {
                    throw Failure(description: "cannot give \(lock) to the workers' group: \(String(cString: strerror(errno)))")
                }
            }
        }
        var owned = [(config.stateDir as NSString).appendingPathComponent("ssh")]
        if config.provider == .local { owned.append(config.local.workspace) }
        // The qemu workers restore, pause and restart their VMs: overlays, QMP sockets and pid
        // files an import run as root made must be theirs.
        if config.provider == .qemu { owned.append((config.stateDir as NSString).appendingPathComponent("qemu")) }
        for directory in owned {
            try makeDirectory(directory, owner: account.uid, group: account.gid, mode: 0o750)
            // Files a run as root left behind (an earlier allow_root run) would be beyond the
            // workers' reach: a workspace they cannot wipe fails every job.
            chownTree(directory, uid: account.uid, gid: account.gid)
        }
    }

    private static func makeDirectory(_ path: String, owner: uid_t?, group: gid_t, mode: mode_t) throws(Failure) {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw Failure(description: "cannot create \(path) for the workers: \(error.localizedDescription)")
        }
        guard chown(path, owner ?? uid_t.max, group) == 0, chmod(path, mode) == 0 else {
            throw Failure(description: "cannot give \(path) to the workers' account: \(String(cString: strerror(errno)))")
        }
    }

    private static func chownTree(_ root: String, uid: uid_t, gid: gid_t) {
        guard let walker = FileManager.default.enumerator(atPath: root) else { return }
        while let relative = walker.nextObject() as? String {
            let path = (root as NSString).appendingPathComponent(relative)
            var info = stat()
            guard lstat(path, &info) == 0, info.st_uid != uid || info.st_gid != gid else { continue }
            _ = lchown(path, uid, gid)
        }
    }
}
