import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// A worker SIGKILLed after forking its build but before recording the build's process group
/// leaves a build nobody knows of: the build command itself must refuse to run, or die, once
/// its worker is gone. Here a `sleep` stands in for the worker, and `setsid` gives the build
/// its own session as the worker's spawn does (the watcher kills its whole process group).
@Suite(.tags(.endToEnd), .serialized)
struct OrphanBuildTests {
    /// `goAhead`: the build's stdin holds the line its worker writes once the build's group is
    /// recorded; without it stdin ends at once, as when the worker dies before writing it.
    func spawnBuild(owner: pid_t, in directory: TempDirectory, goAhead: Bool = true) throws -> (SpawnedProcess, marker: String) {
        let marker = directory.path + "/side-effect"
        let script = directory.path + "/job.build.sh"
        try "echo started > \(marker).start\nsleep 2\necho done > \(marker)\n".write(toFile: script, atomically: true, encoding: .utf8)
        let input = directory.path + "/stdin"
        try (goAhead ? ProgramCommand.buildGoAhead : "").write(toFile: input, atomically: true, encoding: .utf8)
        let command = ProgramCommand.buildScript(script, shell: "/bin/bash", environment: ["PATH": "/usr/bin:/bin"],
                                                 workingDirectory: directory.path, owner: owner)
        let build = try SpawnedProcess.spawn("/bin/bash", ["-c", "exec /usr/bin/setsid -w /bin/bash \"$@\" < \"$0\"", input] + command.arguments,
                                             environment: ["PATH": "/usr/bin:/bin"], log: directory.path + "/build.log")
        return (build, marker)
    }

    @Test func aBuildWhoseWorkerNeverRecordedItNeverStarts() async throws {
        let directory = try TempDirectory(prefix: "tworker-orphan")
        defer { directory.remove() }
        let worker = try SpawnedProcess.spawn("/bin/sleep", ["30"], environment: [:], log: "/dev/null")
        defer { Task { await worker.kill9() } }
        let (build, marker) = try spawnBuild(owner: worker.pid, in: directory, goAhead: false)
        #expect(await build.waitForExit(timeout: .seconds(10)) == 97)
        #expect(!FileManager.default.fileExists(atPath: marker + ".start"), "not one command of the build ran")
    }

    @Test func aBuildWhoseWorkerIsAlreadyDeadNeverStarts() async throws {
        let directory = try TempDirectory(prefix: "tworker-orphan")
        defer { directory.remove() }
        let worker = try SpawnedProcess.spawn("/bin/sleep", ["30"], environment: [:], log: "/dev/null")
        await worker.kill9()
        let (build, marker) = try spawnBuild(owner: worker.pid, in: directory)
        #expect(await build.waitForExit(timeout: .seconds(10)) == 97)
        #expect(!FileManager.default.fileExists(atPath: marker + ".start"), "not one command of the build ran")
    }

    @Test func aBuildWhoseWorkerIsAnUnreapedZombieNeverStarts() async throws {
        let directory = try TempDirectory(prefix: "tworker-orphan")
        defer { directory.remove() }
        // SIGKILLed but not yet reaped, as a worker is until its master sees it exit.
        let worker = try SpawnedProcess.spawn("/bin/sleep", ["30"], environment: [:], log: "/dev/null")
        kill(worker.pid, SIGKILL)
        #expect(await eventually(timeout: .seconds(5)) {
            ((try? String(contentsOfFile: "/proc/\(worker.pid)/stat", encoding: .utf8)) ?? "").contains(") Z")
        })
        let (build, marker) = try spawnBuild(owner: worker.pid, in: directory)
        #expect(await build.waitForExit(timeout: .seconds(10)) == 97)
        #expect(!FileManager.default.fileExists(atPath: marker + ".start"), "not one command of the build ran")
        _ = await worker.waitForExit(timeout: .seconds(5))
    }

    @Test func aBuildDiesWithinASecondOfItsWorker() async throws {
        let directory = try TempDirectory(prefix: "tworker-orphan")
        defer { directory.remove() }
        let worker = try SpawnedProcess.spawn("/bin/sleep", ["30"], environment: [:], log: "/dev/null")
        let (build, marker) = try spawnBuild(owner: worker.pid, in: directory)
        #expect(await eventually(timeout: .seconds(10)) { FileManager.default.fileExists(atPath: marker + ".start") })
        await worker.kill9()
        let killed = ContinuousClock.now
        #expect(await build.waitForExit(timeout: .seconds(5)) != nil)
        #expect(ContinuousClock.now - killed < .seconds(1.5), "the watcher polls every 0.5 s")
        try await Task.sleep(for: .seconds(2.5))
        #expect(!FileManager.default.fileExists(atPath: marker), "the build's side effect never happened")
    }

    @Test func aBuildWhoseWorkerLivesRunsToItsEnd() async throws {
        let directory = try TempDirectory(prefix: "tworker-orphan")
        defer { directory.remove() }
        let worker = try SpawnedProcess.spawn("/bin/sleep", ["30"], environment: [:], log: "/dev/null")
        defer { Task { await worker.kill9() } }
        let (build, marker) = try spawnBuild(owner: worker.pid, in: directory)
        #expect(await build.waitForExit(timeout: .seconds(10)) == 0)
        #expect(FileManager.default.fileExists(atPath: marker))
    }
}
