import Foundation
import Synchronization
import Testing
@testable import TWorkerCore

/// A script fed on stdin to a program that may not read it (ssh refused, a session that stops
/// early): the write fails quietly, tworker lives on, and the child still has SIGPIPE's default.
@Suite struct ChildProcessInputTests {
    func run(_ arguments: [String], input: String) async throws -> (output: String, exit: BuildExit) {
        let output = Mutex<[UInt8]>([])
        let command = BuildCommand(executable: "/bin/bash", arguments: arguments, environment: ["PATH": "/usr/bin:/bin"], standardInput: input)
        let exit = try await ChildProcess.run(command, output: { chunk in output.withLock { $0 += chunk } })
        return (String(decoding: output.withLock { $0 }, as: UTF8.self), exit)
    }

    @Test func aChildThatExitsWithoutReadingItsInputIsJustAnExit() async throws {
        // 4 MiB: far more than a pipe holds, so the writer is still writing when the child exits.
        let big = String(repeating: "echo never-read\n", count: 262_144)
        for _ in 0..<5 {
            let result = try await run(["-c", "exit 7"], input: big)
            #expect(result.exit == .exited(7))
            #expect(result.output.isEmpty)
        }
    }

    @Test func aChildReadsAllOfALargeScript() async throws {
        let lines = 100_000
        let script = (1...lines).map { "echo \($0)" }.joined(separator: "\n") + "\n"
        let result = try await run(["-s"], input: script)
        #expect(result.exit == .exited(0))
        let printed = result.output.split(separator: "\n")
        #expect(printed.count == lines && printed.last == "\(lines)")
    }

    @Test func buildsKeepTheDefaultSIGPIPE() async throws {
        // With SIGPIPE ignored, `yes` would report a write error instead of dying quietly.
        let result = try await run(["-s"], input: "yes | head -n 1\necho \"${PIPESTATUS[0]}\"\n")
        #expect(result.output == "y\n141\n", "yes was killed by SIGPIPE (128+13): \(result.output)")
    }

    /// Seen as a reprovision test that hung for 10 minutes: a program started elsewhere in the
    /// process at the wrong moment inherited a build's pipe, and the build never ended.
    @Test func theBuildsPipesAreNeverInheritedByOtherPrograms() throws {
        let pipe = try ChildProcess.Pipe.make()
        defer { close(pipe.read); close(pipe.write) }
        #expect(fcntl(pipe.read, F_GETFD) & FD_CLOEXEC != 0)
        #expect(fcntl(pipe.write, F_GETFD) & FD_CLOEXEC != 0)
    }

    @Test func aBuildEndsWhenItExitsThoughAProcessOutsideItsGroupStillHoldsItsOutput() async throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("tworker-holder-\(UUID().uuidString)").path
        defer {
            if let pid = (try? String(contentsOfFile: scratch, encoding: .utf8)).flatMap({ pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
                kill(pid, SIGKILL)
            }
            try? FileManager.default.removeItem(atPath: scratch)
        }
        // `setsid`: a session and group of its own, out of reach of the kill of the build's group.
        let script = "echo before\nsetsid sh -c 'echo $$ >\(scratch); exec sleep 60' &\nsleep 0.3\necho after\nexit 3\n"
        let started = ContinuousClock.now
        let result = try await run(["-s"], input: script)
        #expect(result.exit == .exited(3))
        #expect(result.output == "before\nafter\n", "everything the build wrote is read: \(result.output)")
        #expect(ContinuousClock.now - started < .seconds(20), "the build ended with its script, not with the holder's sleep")
    }
}
