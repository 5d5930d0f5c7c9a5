import Foundation
import Logging
import Synchronization
import Testing
@testable import TWorkerCore

/// Every external program's argv, environment and failure wording, asserted without spawning.
@Suite struct ProgramCommandTests {
    @Test func vboxManageCallsKeepTheirArgvAndCarryTheTimeout() {
        let command = ProgramCommand.vboxManage(.snapshotRestore("tw-worker-1", name: "sandbox"), executable: "/opt/vbox/VBoxManage", timeout: .seconds(7))
        #expect(command.program == .vboxmanage("/opt/vbox/VBoxManage"))
        #expect(command.arguments == ["snapshot", "tw-worker-1", "restore", "sandbox"])
        #expect(command.timeout == .seconds(7))
        #expect(command.description == "VBoxManage snapshot tw-worker-1 restore sandbox", "the operator's name, not the configured path")
        #expect(command.wording == .vboxManage)
    }

    @Test func gitNeverPromptsForAPassword() {
        let command = ProgramCommand.git(.remoteHead(url: "https://example.org/r.git"))
        #expect(command.program == .git)
        #expect(command.arguments == ["ls-remote", "--symref", "--", "https://example.org/r.git", "HEAD"])
        #expect(command.environment.resolved(from: ["PATH": "/bin"]) == ["PATH": "/bin", "GIT_TERMINAL_PROMPT": "0"])
        #expect(command.timeout == nil)
    }

    @Test func tarUnpacksIntoTheGivenDirectory() {
        let command = ProgramCommand.tarExtract("/s/base.box", into: "/s/boxes/base.partial")
        #expect(command.program == .tar)
        #expect(command.arguments == ["-xf", "/s/base.box", "-C", "/s/boxes/base.partial"])
    }

    @Test func vagrantRunsInItsProjectWithTheBaseVMsVariables() {
        let command = ProgramCommand.vagrant(["up", "--provision"], executable: "/usr/bin/vagrant", directory: "/v", variables: ["TWORKER_VM_NAME": "tw-base-build"])
        #expect(command.program == .vagrant("/usr/bin/vagrant"))
        #expect(command.description == "vagrant up --provision")
        #expect(command.workingDirectory == "/v")
        #expect(command.environment.resolved(from: ["HOME": "/h"]) == ["HOME": "/h", "TWORKER_VM_NAME": "tw-base-build"])
    }

    @Test func theEmbeddedRedisServerIsDaemonizedOnASocketOnly() {
        let command = ProgramCommand.embeddedRedisServer(directory: "/s/redis", socket: "/s/redis/sock", pidFile: "/s/redis/pid")
        #expect(command.program == .redisServer)
        #expect(command.arguments == ["--port", "0", "--unixsocket", "/s/redis/sock", "--unixsocketperm", "700",
                                      "--dir", "/s/redis", "--appendonly", "yes", "--pidfile", "/s/redis/pid",
                                      "--daemonize", "yes", "--logfile", "/s/redis/redis.log", "--save", ""])
        #expect(!command.capturesOutput, "the daemon's output goes to its log file")
    }

    @Test func buildsRunWithExactlyTheirEnvironment() throws {
        let command = ProgramCommand.buildScript("/w/job.build.sh", shell: "bash", environment: ["HOME": "/w"], workingDirectory: "/w", owner: 4242)
        #expect(command.arguments.count == 3 && command.arguments.first == "-c" && command.arguments.last == "/w/job.build.sh")
        #expect(command.arguments[1].contains("/proc/4242/stat"), "runs only while its worker 4242 lives")
        #expect(command.environment.resolved(from: ["SECRET": "x"]) == ["HOME": "/w"])
        let build = try BuildCommand(command, runner: ProgramRunner(searchPath: "/usr/bin:/bin"))
        #expect(build.executable.hasSuffix("/bash") && build.workingDirectory == "/w" && build.environment == ["HOME": "/w"])
    }

    @Test func sshTakesTheTargetsArgv() {
        let target = SSHTarget(user: "travis", host: "127.0.0.1", port: 2221, key: nil, knownHosts: "/k")
        let command = ProgramCommand.ssh(target, remoteCommand: ["bash", "-s"])
        #expect(command.program == .ssh)
        #expect(command.arguments == target.arguments(remoteCommand: ["bash", "-s"]))
    }

    /// A build's session uses the master connection on the control socket when one runs (and
    /// connects on its own otherwise); the master itself keeps no keep-alives, so it outlives a
    /// paused guest (ssh takes the first value of an option, so order matters).
    @Test func sshSessionsGoOverTheMasterConnectionWhenThereIsOne() {
        let target = SSHTarget(user: "root", host: "127.0.0.1", port: 2221, key: "/id", knownHosts: "/k", controlPath: "/w/ssh.sock")
        let session = ProgramCommand.ssh(target, remoteCommand: ["true"]).arguments
        #expect(Array(session.prefix(4)) == ["-o", "ControlPath=/w/ssh.sock", "-o", "ControlMaster=no"])
        #expect(session.contains("ServerAliveInterval=5"))

        let master = ProgramCommand.sshControlMaster(target, controlPath: "/w/ssh.sock")
        #expect(master.program == .ssh)
        #expect(Array(master.arguments.prefix(8)) == ["-o", "ControlPath=/w/ssh.sock", "-o", "ControlMaster=yes", "-o", "ControlPersist=yes",
                                                       "-o", "ServerAliveInterval=0"])
        #expect(!master.arguments.contains("ControlMaster=no"))
        #expect(Array(master.arguments.suffix(5)) == ["-l", "root", "127.0.0.1", "--", "true"])
        #expect(master.arguments.firstIndex(of: "ServerAliveInterval=0")! < master.arguments.firstIndex(of: "ServerAliveInterval=5")!)

        let exit = ProgramCommand.sshControlExit(target, controlPath: "/w/ssh.sock")
        #expect(exit.arguments == ["-o", "ControlPath=/w/ssh.sock", "-O", "exit", "-p", "2221", "-l", "root", "127.0.0.1"])
    }

    @Test func failuresKeepEachToolsWording() {
        let git = ProgramFailure(tool: "git", arguments: ["ls-remote", "x"], status: .exited(128), stdout: "",
                                 stderr: "fatal: repository 'x' not found\n", wording: .standardError)
        #expect(git.description == "git ls-remote x failed: fatal: repository 'x' not found")
        #expect(git.exitCode == 128)
        let vagrant = ProgramFailure(tool: "vagrant", arguments: ["destroy", "-f"], status: .exited(1), stdout: "out\n",
                                     stderr: "err\n", wording: .outputTail)
        #expect(vagrant.description == "vagrant destroy -f failed (exited(1)):\nerr\n\nout")
        let killed = ProgramFailure(tool: "tar", arguments: [], status: .signaled(9), stdout: "", stderr: "", wording: .standardError)
        #expect(killed.exitCode == 137, "128 + signal, as a shell reports it")
        let late = ProgramFailure.timedOut(.vboxManage(.powerOff("tw-worker-1"), executable: "VBoxManage", timeout: .seconds(3)), after: .seconds(3))
        #expect(late.timedOut && late.exitCode == nil)
        #expect(late.description == "VBoxManage controlvm tw-worker-1 poweroff did not finish in time and was killed")
    }
}

/// A `ProgramRunning` that answers from a script of results and records what it was asked.
final class ScriptedPrograms: ProgramRunning {
    private let state: Mutex<(answers: [Result<ProgramOutput, ProgramFailure>], asked: [ProgramCommand])>

    init(_ answers: [Result<ProgramOutput, ProgramFailure>]) { state = Mutex((answers, [])) }

    var asked: [ProgramCommand] { state.withLock { $0.asked } }

    func run(_ command: ProgramCommand) async throws -> ProgramOutput {
        let answer = state.withLock { state -> Result<ProgramOutput, ProgramFailure> in
            state.asked.append(command)
            return state.answers.isEmpty ? .success(ProgramOutput()) : state.answers.removeFirst()
        }
        return try answer.get()
    }
}

@Suite struct VBoxManageRunnerLogicTests {
    @Test func aLockedVMIsRetriedWithTheSameCommand() async throws {
        let locked = VBoxManageError.parse(command: .powerOff("tw-worker-1"), exitCode: 1, stdout: "",
                                           stderr: "VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component X\n")
        let programs = ScriptedPrograms([.failure(locked), .success(ProgramOutput(stdout: "done"))])
        let vbox = VBoxManageRunner(executable: "VBoxManage", namePrefix: "tw-", timeout: .seconds(9), logger: Logger(label: "t"),
                                    lockRetryDelay: .milliseconds(1), programs: programs)
        #expect(try await vbox.run(.powerOff("tw-worker-1")).stdout == "done")
        #expect(programs.asked.map(\.arguments) == [["controlvm", "tw-worker-1", "poweroff"], ["controlvm", "tw-worker-1", "poweroff"]])
        #expect(programs.asked.allSatisfy { $0.timeout == .seconds(9) })
        #expect(vbox.calls == 2)
    }
}
