import Foundation
import Testing
import TWorkerTestSupport
@testable import TWorkerCore

/// The runner against real processes: a program leads a process group of its own, and a
/// timeout or a cancel ends the whole group, not only the program tworker started.
@Suite struct ProgramRunnerTests {
    /// A script that leaves a child behind (its pid in `pidFile`), as vagrant leaves VBoxManage.
    private func scriptLeavingAChild(_ directory: TempDirectory) throws -> (script: String, pidFile: String) {
        let pidFile = directory.path + "/child.pid"
        let script = directory.path + "/leaves-a-child"
        try "#!/bin/bash\nsleep 300 &\necho $! > \"$1.partial\"\nmv \"$1.partial\" \"$1\"\nwait\n"
            .write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        return (script, pidFile)
    }

    /// The child's pid, once the script has written it, and its process group (-1 once it is gone).
    private func childPid(_ pidFile: String) async throws -> (pid: pid_t, group: pid_t) {
        var pid: pid_t?
        _ = await eventually(timeout: .seconds(10)) {
            pid = (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            return pid != nil
        }
        let child = try #require(pid, "the script never wrote its child's pid")
        return (child, getpgid(child))
    }

    @Test func aTimeoutEndsTheProgramsWholeProcessGroup() async throws {
        let directory = try TempDirectory()
        defer { directory.remove() }
        let (script, pidFile) = try scriptLeavingAChild(directory)
        let command = ProgramCommand(.bash(script), tool: "leaves-a-child", arguments: [pidFile], timeout: .seconds(1))
        let started = ContinuousClock.now
        await #expect(throws: ProgramFailure.self) { try await ProgramRunner().run(command) }
        // Read after the run ended: the child may already be gone (its group then reads -1).
        let (child, group) = try await childPid(pidFile)
        #expect(await eventually(timeout: .seconds(5)) { processIsGone(child) }, "the program's child outlived its timeout")
        #expect(ContinuousClock.now - started < .seconds(30))
        #expect(group < 0 || !ProgramGroups.running.contains(group))
    }

    @Test func aCancelEndsTheProgramsWholeProcessGroup() async throws {
        let directory = try TempDirectory()
        defer { directory.remove() }
        let (script, pidFile) = try scriptLeavingAChild(directory)
        let command = ProgramCommand(.bash(script), tool: "leaves-a-child", arguments: [pidFile])
        let run = Task { try await ProgramRunner().run(command) }
        let (child, group) = try await childPid(pidFile)
        // Still running here: it sits in a group of its own, which the runner knows.
        #expect(group > 0 && group != getpgrp(), "the program does not run in tworker's own process group")
        #expect(ProgramGroups.running.contains(group))
        run.cancel()
        _ = try? await run.value
        #expect(await eventually(timeout: .seconds(5)) { processIsGone(child) }, "the program's child outlived the cancel")
        #expect(!ProgramGroups.running.contains(group))
    }
}
