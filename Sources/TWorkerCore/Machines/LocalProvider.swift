import Foundation

/// `provider: local`: each worker gets a workspace directory under `local.workspace`, wiped
/// before every job; builds run on the host as their own process group.
public struct LocalProvider: MachineProvider {
    public var workspaceRoot: String
    /// Looked up on PATH at each job unless it is a path.
    public var bash: String

    public init(workspaceRoot: String, bash: String = "bash") {
        self.workspaceRoot = workspaceRoot
        self.bash = bash
    }

    public func machine(named name: String) throws -> any Machine {
        LocalMachine(name: name, workspace: (workspaceRoot as NSString).appendingPathComponent(name), bash: bash)
    }
}

/// One local workspace.
public struct LocalMachine: Machine {
    public let name: String
    public let workspace: String
    let bash: String

    public func prepare() async throws(InfrastructureError) {
        try await InfrastructureError.mapping("cannot reset workspace \(workspace)") { try resetWorkspace() }
    }

    private func resetWorkspace() throws {
        let files = FileManager.default
        do {
            // Moving the old workspace aside is one rename; deleting a large checkout takes
            // milliseconds to seconds, so that happens on a thread of its own while the job runs.
            if files.fileExists(atPath: workspace), !Self.isEmptyDirectory(workspace) {
                let trash = workspace + ".trash-" + UUID().uuidString
                try files.moveItem(atPath: workspace, toPath: trash)
                Thread.detachNewThread { try? FileManager.default.removeItem(atPath: trash) }
            }
            try files.createDirectory(atPath: workspace, withIntermediateDirectories: true)
        } catch {
            throw InfrastructureError("cannot reset workspace \(workspace): \(error.localizedDescription)")
        }
    }

    static func isEmptyDirectory(_ path: String) -> Bool {
        guard let directory = opendir(path) else { return false }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { return false }
        }
        return true
    }

    public func run(script: String, jobID: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws(InfrastructureError) -> BuildExit {
        try await InfrastructureError.mapping("running the build in \(workspace)") { try await runScript(script, jobID: jobID, output: output) }
    }

    private func runScript(_ script: String, jobID: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws -> BuildExit {
        // The script lives beside the workspace, not in it (the build sees a clean checkout), and
        // not on stdin (a build command reading stdin would eat the rest of the script).
        let scriptPath = workspace + ".build.sh"
        // Located first: a missing bash fails the job before anything is written.
        let command = try BuildCommand(.buildScript(scriptPath, shell: bash, environment: Self.buildEnvironment(home: workspace, jobID: jobID, vm: name),
                                                    workingDirectory: workspace),
                                   standardInput: ProgramCommand.buildGoAhead)
        // Plain write(2): no fsync, the file only has to outlive this job.
        let fd = open(scriptPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw InfrastructureError("cannot write build script \(scriptPath): errno \(errno)") }
        let bytes = Array(script.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard written == bytes.count else { throw InfrastructureError("cannot write build script \(scriptPath): short write") }
        defer { buildGroup.clear() }
        return try await ChildProcess.run(command, output: output, started: { buildGroup.record($0) })
    }

    public func release() async throws(InfrastructureError) {}

    /// The process group of the build running here, recorded so that a worker killed mid-build
    /// (SIGKILL leaves its build's session running) has its build killed by its next start.
    var buildGroup: BuildGroupRecord { BuildGroupRecord(path: workspace + ".build.pgid") }

    public func killLeftovers() async {
        buildGroup.killRecorded()
    }

    /// A small, predictable environment: tworker's own variables (REDIS_URL, ...) never leak into builds.
    static func buildEnvironment(home: String, jobID: String, vm: String) -> [String: String] {
        let host = ProcessInfo.processInfo.environment
        return [
            "PATH": host["PATH"] ?? "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "CI": "true",
            "TRAVIS": "true",
            "TWORKER": "true",
            "TWORKER_JOB_ID": jobID,
            "TWORKER_VM": vm,
        ]
    }
}
