import Foundation
import Logging
import Testing
@testable import TWorkerCore
import TWorkerTestSupport

@Suite struct VBoxManageCommandTests {
    @Test func commandsBuildTheDocumentedArgv() {
        #expect(VBoxManageCommand.snapshotRestore("p-worker-1", name: "sandbox").arguments == ["snapshot", "p-worker-1", "restore", "sandbox"])
        #expect(VBoxManageCommand.startVM("p-worker-1", type: "headless").arguments == ["startvm", "p-worker-1", "--type", "headless"])
        #expect(VBoxManageCommand.powerOff("vm").arguments == ["controlvm", "vm", "poweroff"])
        #expect(VBoxManageCommand.showVMInfo("vm").arguments == ["showvminfo", "vm", "--machinereadable"])
        #expect(VBoxManageCommand.linkedClone(of: "p-base", snapshot: "base", name: "p-worker-2").arguments
            == ["clonevm", "p-base", "--snapshot", "base", "--options", "link", "--name", "p-worker-2", "--register"])
        #expect(VBoxManageCommand.importAppliance("/b/box.ovf", name: "p-base").arguments == ["import", "/b/box.ovf", "--vsys", "0", "--vmname", "p-base"])
        let rule = NATRule(name: "guestssh", hostIP: "127.0.0.1", hostPort: 2221, guestPort: 22)
        #expect(VBoxManageCommand.setNATRule("vm", rule: rule).arguments == ["modifyvm", "vm", "--natpf1", "guestssh,tcp,127.0.0.1,2221,,22"])
        #expect(NATRule(specification: rule.specification) == rule)
        #expect(VBoxManageCommand.showVMInfo("vm").changes == nil, "reads change nothing")
        #expect(VBoxManageCommand.unregister("vm").changes == "vm")
    }

    @Test func machineReadableOutputIsParsed() {
        let text = """
        name="tworker-test-worker-1"
        UUID="1b2c"
        VMState="saved"
        memory=1536
        Forwarding(0)="guestssh,tcp,127.0.0.1,2221,,22"
        description="a \\"quoted\\" \\\\ value"
        SnapshotName="base"
        SnapshotName-1="sandbox"
        """
        let info = MachineReadable(text)
        #expect(info.state == "saved")
        #expect(info.uuid == "1b2c")
        #expect(info["memory"] == "1536")
        #expect(info["description"] == #"a "quoted" \ value"#)
        #expect(info.forwardingRules == [NATRule(name: "guestssh", hostIP: "127.0.0.1", hostPort: 2221, guestPort: 22)])
        #expect(Set(info.snapshotNames) == ["base", "sandbox"])
        #expect(MachineReadable.vmNames(fromList: "\"a b\" {1}\n\"c\" {2}\n") == ["a b", "c"])
    }

    @Test func errorsAreParsedFromStderr() {
        let stderr = """
        VBoxManage: error: The machine 'vm' is already locked by a session (or being locked or unlocked)
        VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component MachineWrap, interface IMachine
        VBoxManage: error: Context: "LockMachine" at line 640 of file VBoxManageSnapshot.cpp
        """
        let error = VBoxManageError.parse(command: .snapshotRestore("vm", name: "sandbox"), exitCode: 1, stdout: "", stderr: stderr)
        #expect(error.isLocked)
        #expect(error.code == "VBOX_E_INVALID_OBJECT_STATE")
        #expect(error.hex == "0x80bb0007")
        #expect(error.message == "The machine 'vm' is already locked by a session (or being locked or unlocked)")
        #expect(error.description.contains("VBoxManage snapshot vm restore sandbox failed (exit 1)"))
        let missing = VBoxManageError.parse(command: .showVMInfo("x"), exitCode: 1, stdout: "",
                                            stderr: "VBoxManage: error: Could not find a registered machine named 'x'\nVBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap\n")
        #expect(missing.isNotFound && !missing.isLocked)
        let plain = VBoxManageError.parse(command: .snapshotRestore("x", name: "s"), exitCode: 1, stdout: "This machine does not have any snapshots\n", stderr: "")
        #expect(plain.message == "This machine does not have any snapshots")
    }

    @Test func sshArgumentsUseKeysOnlyAndTworkersKnownHosts() {
        let target = SSHTarget(user: "travis", host: "127.0.0.1", port: 2221, key: "/k", knownHosts: "/var/ssh/known_hosts-worker-1")
        let argv = target.arguments(remoteCommand: ["bash", "-s"])
        #expect(argv.suffix(5) == ["-l", "travis", "127.0.0.1", "--", "bash", "-s"].suffix(5))
        for option in ["BatchMode=yes", "StrictHostKeyChecking=accept-new", "UserKnownHostsFile=/var/ssh/known_hosts-worker-1",
                       "ServerAliveInterval=5", "ServerAliveCountMax=3", "IdentitiesOnly=yes"] {
            #expect(argv.contains(option), "\(option)")
        }
        #expect(argv.contains("-i") && argv.contains("/k"))
        #expect(VirtualBoxProvider.workerNumber("worker-12") == 12)
        #expect(VirtualBoxProvider.workerNumber("worker-0") == nil)
        #expect(VirtualBoxProvider.workerNumber("builder-1") == nil)
    }
}

/// The runner against a stand-in VBoxManage script whose behaviour each test scripts.
@Suite struct VBoxManageRunnerTests {
    func stub(_ body: String, in directory: TempDirectory) throws -> String {
        let path = directory.path + "/VBoxManage"
        try ("#!/bin/bash\necho \"$*\" >> \(directory.path)/calls\n" + body).write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
        return path
    }

    func runner(_ path: String, timeout: Duration = .seconds(5)) -> VBoxManageRunner {
        VBoxManageRunner(executable: path, namePrefix: "tw-", timeout: timeout, logger: Logger(label: "t"), lockRetryDelay: .milliseconds(10))
    }

    @Test func lockErrorsAreRetriedUntilTheLockIsGone() async throws {
        let directory = try TempDirectory()
        defer { directory.remove() }
        let path = try stub("""
        n=$(wc -l < \(directory.path)/calls)
        if [ "$n" -le 2 ]; then
          echo "VBoxManage: error: The machine 'tw-worker-1' is already locked by a session (or being locked or unlocked)" >&2
          echo "VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component MachineWrap, interface IMachine" >&2
          exit 1
        fi
        echo "Restoring snapshot"
        """, in: directory)
        let vbox = runner(path)
        try await vbox.run(.snapshotRestore("tw-worker-1", name: "sandbox"))
        #expect(vbox.calls == 3)
    }

    @Test func lockErrorsGiveUpAfterFiveTries() async throws {
        let directory = try TempDirectory()
        defer { directory.remove() }
        let path = try stub("echo \"VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component X\" >&2; exit 1", in: directory)
        let vbox = runner(path)
        await #expect(throws: VBoxManageError.self) { try await vbox.run(.snapshotRestore("tw-worker-1", name: "sandbox")) }
        #expect(vbox.calls == 5)
    }

    @Test func otherErrorsAreNotRetriedAndCarryStderr() async throws {
        let directory = try TempDirectory()
        defer { directory.remove() }
        let path = try stub("echo 'VBoxManage: error: Failed to start' >&2; exit 1", in: directory)
        let vbox = runner(path)
        do {
            try await vbox.run(.startVM("tw-worker-1", type: "headless"))
            Issue.record("expected a failure")
        } catch let error as VBoxManageError {
            #expect(error.message == "Failed to start")
            #expect(error.stderr.contains("Failed to start"))
        }
        #expect(vbox.calls == 1)
    }

    @Test func anErrorOnStderrWithExitZeroIsAFailure() async throws {
        let directory = try TempDirectory()
        defer { directory.remove() }
        let path = try stub("echo 'VBoxManage: error: something odd' >&2; exit 0", in: directory)
        await #expect(throws: VBoxManageError.self) { try await runner(path).run(.startVM("tw-worker-1", type: "headless")) }
    }

    @Test func aHungCallIsKilledAfterTheTimeout() async throws {
        let directory = try TempDirectory()
        defer { directory.remove() }
        let path = try stub("echo $$ > \(directory.path)/pid; exec sleep 300", in: directory)
        let started = ContinuousClock.now
        do {
            try await runner(path, timeout: .milliseconds(500)).run(.startVM("tw-worker-1", type: "headless"))
            Issue.record("expected a timeout")
        } catch let error as VBoxManageError {
            #expect(error.timedOut)
            #expect(error.description.contains("did not finish in time"))
        }
        #expect(ContinuousClock.now - started < .seconds(10))
        let pid = try #require(pid_t(try String(contentsOfFile: directory.path + "/pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        let gone = await eventually(timeout: .seconds(5)) { processIsGone(pid) }
        #expect(gone, "the hung VBoxManage was killed")
    }

    @Test func vmsOutsideThePrefixAreNeverChanged() async throws {
        let directory = try TempDirectory()
        defer { directory.remove() }
        let path = try stub("exit 0", in: directory)
        let vbox = runner(path)
        await #expect(throws: VBoxManageRunner.OutsidePrefix.self) { try await vbox.run(.powerOff("production-db")) }
        await #expect(throws: VBoxManageRunner.OutsidePrefix.self) { try await vbox.run(.unregister("other-worker-1")) }
        _ = try await vbox.run(.showVMInfo("production-db"))
        #expect(vbox.calls == 1, "only the read ran")
    }
}
