import Foundation
import Testing
import TWorkerTestSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The fake `VBoxManage` (Tests/Fixtures/fakes) must behave like the real one as described in
/// VIRTUALBOX.md, failures included; these tests pin that down. Serialized: each test starts real
/// sshd processes and measures delays, which a loaded 2-CPU machine would blur.
@Suite(.serialized, .tags(.endToEnd))
struct FakeVBoxManageTests {
    typealias Result = (status: Int32, stdout: String, stderr: String)

    /// Exit 1 and the three-line COM error on stderr.
    func expectError(_ result: Result, _ message: String, code: String, hex: String,
                     sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == 1, "\(FakeVirtualBox.describe(result))", sourceLocation: sourceLocation)
        let expected = "VBoxManage: error: \(message)\nVBoxManage: error: Details: code \(code) (\(hex)), component "
        #expect(result.stderr.contains(expected), "\(FakeVirtualBox.describe(result))", sourceLocation: sourceLocation)
        #expect(result.stderr.contains("\nVBoxManage: error: Context: \""), "\(FakeVirtualBox.describe(result))",
                sourceLocation: sourceLocation)
    }

    func expectLockError(_ result: Result, _ vm: String, sourceLocation: SourceLocation = #_sourceLocation) {
        expectError(result, "The machine '\(vm)' is already locked by a session (or being locked or unlocked)",
                    code: "VBOX_E_INVALID_OBJECT_STATE", hex: "0x80bb0007", sourceLocation: sourceLocation)
    }

    func expectSuccess(_ result: Result, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == 0, "\(FakeVirtualBox.describe(result))", sourceLocation: sourceLocation)
        #expect(!result.stderr.contains("VBoxManage: error:"), "\(FakeVirtualBox.describe(result))",
                sourceLocation: sourceLocation)
    }

    /// A Vagrant-style box directory: box.ovf referencing box-disk001.vmdk, a tar of a guest filesystem
    /// holding `payload` (`size` bytes) and `etc/hostname`.
    func makeBox(in directory: String, size: Int) throws -> (ovf: String, diskSize: Int) {
        let root = directory + "/guest-root"
        try FileManager.default.createDirectory(atPath: root + "/etc", withIntermediateDirectories: true)
        try Data(repeating: 0x61, count: size).write(to: URL(fileURLWithPath: root + "/payload"))
        try "box\n".write(toFile: root + "/etc/hostname", atomically: true, encoding: .utf8)
        let disk = directory + "/box-disk001.vmdk"
        let tar = Process()
        tar.executableURL = URL(fileURLWithPath: "/bin/tar")
        tar.arguments = ["-cf", disk, "-C", root, "."]
        try tar.run()
        tar.waitUntilExit()
        #expect(tar.terminationStatus == 0)
        let ovf = directory + "/box.ovf"
        try """
        <?xml version="1.0"?>
        <Envelope ovf:version="1.0" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
          <References><File ovf:id="file1" ovf:href="box-disk001.vmdk"/></References>
          <VirtualSystem ovf:id="base-box"><Name>base-box</Name></VirtualSystem>
        </Envelope>
        """.write(toFile: ovf, atomically: true, encoding: .utf8)
        let diskSize = try FileManager.default.attributesOfItem(atPath: disk)[.size] as! Int
        return (ovf, diskSize)
    }

    func fileExists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    // MARK: - Basics and error texts

    @Test func versionListAndSyntaxErrors() async throws {
        try await withFakeVirtualBox { fake in
            let version = try await fake.run(["--version"])
            #expect(version.status == 0 && version.stdout == "7.0.20r163906\n")
            let uuid = try await fake.createVM(name: "alpha", port: try freeLoopbackPort())
            let list = try await fake.run(["list", "vms"])
            #expect(list.stdout == "\"alpha\" {\(uuid)}\n")
            #expect(try await fake.run(["list", "runningvms"]).stdout == "")
            for bad in [["frobnicate"], ["list", "nonsense"], ["startvm", "alpha", "--type", "tv"],
                        ["modifyvm", "alpha", "--bogus", "1"], ["snapshot", "alpha", "explode"], ["controlvm", "alpha", "dance"]] {
                let result = try await fake.run(bad)
                #expect(result.status == 2, "\(bad): \(FakeVirtualBox.describe(result))")
                #expect(result.stderr.contains("VBoxManage: error: ") && result.stderr.contains("Usage:"), "\(bad)")
            }
            let info = try await fake.run(["showvminfo", uuid, "--machinereadable"])
            expectSuccess(info)
            for line in ["name=\"alpha\"", "UUID=\"\(uuid)\"", "VMState=\"poweroff\"", "memory=1024", "cpus=1",
                         "nic1=\"nat\"", "Forwarding(0)=\"guestssh,tcp,127.0.0.1,"] {
                #expect(info.stdout.contains(line), "missing \(line) in \(info.stdout)")
            }
            #expect(info.stdout.contains("CfgFile=\"\(fake.home)/VirtualBox VMs/alpha/alpha.vbox\""))
            #expect(info.stdout.range(of: #"VMStateChangeTime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}""#,
                                      options: .regularExpression) != nil)
        }
    }

    @Test func unknownVMIsObjectNotFound() async throws {
        try await withFakeVirtualBox { fake in
            for args in [["showvminfo", "ghost", "--machinereadable"], ["startvm", "ghost", "--type", "headless"],
                         ["snapshot", "ghost", "take", "s"], ["controlvm", "ghost", "poweroff"],
                         ["modifyvm", "ghost", "--memory", "512"], ["unregistervm", "ghost", "--delete"]] {
                let result = try await fake.run(args)
                expectError(result, "Could not find a registered machine named 'ghost'",
                            code: "VBOX_E_OBJECT_NOT_FOUND", hex: "0x80bb0001")
                #expect(result.stdout.isEmpty)
            }
            let unset = try await FakeVirtualBox.capture(fake.vboxmanagePath, ["list", "vms"], environment: ["PATH": "/usr/bin:/bin"],
                                                         scratch: fake.home, timeout: .seconds(30))
            #expect(unset.status == 1 && unset.stderr.contains("FAKE_VBOX_HOME"))
        }
    }

    @Test func snapshotErrors() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.1
            try await fake.createVM(name: "snaps", port: try freeLoopbackPort())
            let none = try await fake.run(["snapshot", "snaps", "restorecurrent"])
            #expect(none.status == 1 && none.stdout == "This machine does not have any snapshots\n")
            #expect(try await fake.run(["snapshot", "snaps", "list", "--machinereadable"]).status == 1)
            expectSuccess(try await fake.run(["snapshot", "snaps", "take", "one"]))
            let missing = try await fake.run(["snapshot", "snaps", "restore", "two"])
            expectError(missing, "Could not find a snapshot named 'two'", code: "VBOX_E_OBJECT_NOT_FOUND", hex: "0x80bb0001")
            expectSuccess(try await fake.run(["startvm", "snaps", "--type", "headless"]))
            for args in [["snapshot", "snaps", "restore", "one"], ["snapshot", "snaps", "restorecurrent"]] {
                let running = try await fake.run(args)
                expectError(running, "Cannot delete the current state of the running machine (machine state: Running)",
                            code: "VBOX_E_INVALID_VM_STATE", hex: "0x80bb0002")
            }
            #expect(try await fake.state(of: "snaps") == "running")
            // Duplicate names are allowed; the tree nests under the current snapshot.
            let take = try await fake.run(["snapshot", "snaps", "take", "one", "--live", "--description", "again"])
            expectSuccess(take)
            #expect(take.stdout.range(of: #"^Snapshot taken\. UUID: [0-9a-f-]{36}\n$"#, options: .regularExpression) != nil)
            #expect(take.stderr.contains("0%...10%") && take.stderr.contains("100%"))
            let list = try await fake.run(["snapshot", "snaps", "list", "--machinereadable"]).stdout
            #expect(list.contains("SnapshotName=\"one\"\nSnapshotUUID="))
            #expect(list.contains("SnapshotName-1=\"one\"\nSnapshotUUID-1="))
            #expect(list.contains("SnapshotDescription-1=\"again\""))
            #expect(list.contains("CurrentSnapshotNode=\"SnapshotName-1\""))
        }
    }

    @Test func startvmTwiceIsLockError() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.1
            try await fake.createVM(name: "twice", port: try freeLoopbackPort())
            let first = try await fake.run(["startvm", "twice", "--type", "headless"])
            expectSuccess(first)
            #expect(first.stdout == "Waiting for VM \"twice\" to power on...\nVM \"twice\" has been successfully started.\n")
            expectLockError(try await fake.run(["startvm", "twice", "--type", "headless"]), "twice")
            #expect(try await fake.run(["list", "runningvms"]).stdout.hasPrefix("\"twice\" {"))
            // modifyvm and unregistervm refuse a running VM too.
            expectLockError(try await fake.run(["modifyvm", "twice", "--memory", "2048"]), "twice")
            expectLockError(try await fake.run(["unregistervm", "twice", "--delete"]), "twice")
        }
    }

    @Test func lockWindowAfterPoweroff() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.1
            try await fake.createVM(name: "locky", port: try freeLoopbackPort(), snapshot: "sandbox")
            // A short window: locked right after the poweroff, unlocked once it has passed.
            fake.lockWindow = 1.5
            expectSuccess(try await fake.run(["startvm", "locky", "--type", "headless"]))
            let off = try await fake.run(["controlvm", "locky", "poweroff"])
            expectSuccess(off)
            #expect(off.stderr.contains("100%"))
            let stoppedAt = ContinuousClock.now
            let inside = try await fake.run(["snapshot", "locky", "restore", "sandbox"])
            if ContinuousClock.now - stoppedAt < .seconds(1.4) { expectLockError(inside, "locky") }
            try await Task.sleep(until: stoppedAt + .seconds(1.7))
            expectSuccess(try await fake.run(["snapshot", "locky", "restore", "sandbox"]))
            expectSuccess(try await fake.run(["modifyvm", "locky", "--cpus", "2"]))
            #expect(try await fake.run(["showvminfo", "locky", "--machinereadable"]).stdout.contains("\ncpus=2\n"))

            // A long window: every locked command fails inside it, whatever the machine's load.
            fake.lockWindow = 60
            expectSuccess(try await fake.run(["startvm", "locky", "--type", "headless"]))
            expectSuccess(try await fake.run(["controlvm", "locky", "poweroff"]))
            for args in [["snapshot", "locky", "restore", "sandbox"], ["modifyvm", "locky", "--cpus", "1"],
                         ["startvm", "locky", "--type", "headless"], ["unregistervm", "locky"]] {
                expectLockError(try await fake.run(args), "locky")
            }
            #expect(try await fake.state(of: "locky") == "poweroff")
            let notRunning = try await fake.run(["controlvm", "locky", "poweroff"])
            #expect(notRunning.status == 1 && notRunning.stderr == "VBoxManage: error: Machine 'locky' is not currently running.\n")
            #expect(notRunning.stdout.isEmpty)
        }
    }

    @Test func natRules() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.1
            let port = try freeLoopbackPort()
            try await fake.createVM(name: "nat", port: port)
            let duplicateName = try await fake.run(["modifyvm", "nat", "--natpf1", "guestssh,tcp,127.0.0.1,\(port + 1),,22"])
            expectError(duplicateName, "A NAT rule of this name already exists", code: "E_INVALIDARG", hex: "0x80070057")
            let duplicatePort = try await fake.run(["modifyvm", "nat", "--natpf1", "other,tcp,127.0.0.1,\(port),,22"])
            #expect(duplicatePort.status == 1 && duplicatePort.stderr.contains("already exists"))
            expectSuccess(try await fake.run(["modifyvm", "nat", "--natpf1", "delete", "guestssh"]))
            var info = try await fake.run(["showvminfo", "nat", "--machinereadable"]).stdout
            #expect(!info.contains("Forwarding("))
            let second = try freeLoopbackPort()
            expectSuccess(try await fake.run(["modifyvm", "nat", "--natpf1", "guestssh,tcp,127.0.0.1,\(second),,22"]))
            info = try await fake.run(["showvminfo", "nat", "--machinereadable"]).stdout
            #expect(info.contains("Forwarding(0)=\"guestssh,tcp,127.0.0.1,\(second),,22\""))
            expectSuccess(try await fake.run(["startvm", "nat", "--type", "headless"]))
            expectLockError(try await fake.run(["modifyvm", "nat", "--natpf1", "x,tcp,127.0.0.1,\(port),,22"]), "nat")
            // controlvm natpf1 works while running, and the guest answers on the new port at once.
            expectSuccess(try await fake.run(["controlvm", "nat", "natpf1", "extra,tcp,127.0.0.1,\(port),,22"]))
            let guestLog = { (try? String(contentsOfFile: fake.home + "/VirtualBox VMs/nat/sshd.log", encoding: .utf8)) ?? "(no sshd.log)" }
            #expect(try await fake.waitForSSH(port: second), "\(guestLog())")
            #expect(try await fake.waitForSSH(port: port), "\(guestLog())")
            expectSuccess(try await fake.run(["controlvm", "nat", "natpf1", "delete", "extra"]))
            let gone = try await fake.run(["controlvm", "nat", "natpf1", "delete", "extra"])
            expectError(gone, "A NAT rule of this name does not exist", code: "E_INVALIDARG", hex: "0x80070057")
        }
    }

    // MARK: - Snapshots and the real guest

    @Test func onlineSnapshotRestoresSavedAndResumesQuickly() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.2
            fake.resumeDelay = 0.1
            fake.lockWindow = 0.1
            let port = try freeLoopbackPort()
            try await fake.createVM(name: "online", port: port)
            expectSuccess(try await fake.run(["startvm", "online", "--type", "headless"]))
            #expect(try await fake.waitForSSH(port: port))
            expectSuccess(try await fake.run(["snapshot", "online", "take", "Started", "--live"]))
            expectSuccess(try await fake.run(["controlvm", "online", "poweroff"]))
            try await Task.sleep(for: .milliseconds(300))
            let restore = try await fake.run(["snapshot", "online", "restore", "Started"])
            expectSuccess(restore)
            #expect(restore.stdout.hasPrefix("Restoring snapshot 'Started' ("))
            #expect(try await fake.state(of: "online") == "saved")
            // From saved the VM resumes (resume delay), it does not boot (boot delay).
            fake.bootDelay = 30
            let started = ContinuousClock.now
            expectSuccess(try await fake.run(["startvm", "online", "--type", "headless"]))
            #expect(try await fake.state(of: "online") == "running")
            #expect(try await fake.waitForSSH(port: port, timeout: .seconds(20)))
            #expect(ContinuousClock.now - started < .seconds(20))
            // savestate ends saved; pause/resume.
            expectSuccess(try await fake.run(["controlvm", "online", "pause"]))
            #expect(try await fake.state(of: "online") == "paused")
            expectSuccess(try await fake.run(["controlvm", "online", "resume"]))
            expectSuccess(try await fake.run(["controlvm", "online", "savestate"]))
            #expect(try await fake.state(of: "online") == "saved")
        }
    }

    @Test func offlineSnapshotRestoresPoweroff() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.1
            fake.lockWindow = 0.1
            try await fake.createVM(name: "offline", port: try freeLoopbackPort(), snapshot: "base")
            #expect(try await fake.state(of: "offline") == "poweroff")
            expectSuccess(try await fake.run(["startvm", "offline", "--type", "headless"]))
            expectSuccess(try await fake.run(["controlvm", "offline", "poweroff"]))
            try await Task.sleep(for: .milliseconds(300))
            expectSuccess(try await fake.run(["snapshot", "offline", "restorecurrent"]))
            #expect(try await fake.state(of: "offline") == "poweroff")
            // And the online shortcut leaves a saved VM whose snapshot restores to saved.
            try await fake.createVM(name: "online", port: try freeLoopbackPort(), snapshot: "sandbox", online: true)
            #expect(try await fake.state(of: "online") == "saved")
            expectSuccess(try await fake.run(["snapshot", "online", "restore", "sandbox"]))
            #expect(try await fake.state(of: "online") == "saved")
        }
    }

    @Test func guestRunsInDiskDirectoryAndRestoreDiscardsWrites() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.2
            fake.lockWindow = 0.1
            let port = try freeLoopbackPort()
            try await fake.createVM(name: "guest", port: port, snapshot: "sandbox")
            let disk = try await fake.diskDirectory(of: "guest")
            expectSuccess(try await fake.run(["startvm", "guest", "--type", "headless"]))
            #expect(try await fake.waitForSSH(port: port))
            let write = try await fake.ssh(port: port, "echo hi > f")
            #expect(write.status == 0, "\(FakeVirtualBox.describe(write))")
            #expect((try? String(contentsOfFile: disk + "/f", encoding: .utf8)) == "hi\n")
            let whereAmI = try await fake.ssh(port: port, "pwd; echo $HOME; exit 7")
            #expect(whereAmI.status == 7)
            #expect(whereAmI.stdout == "\(disk)\n\(disk)\n")
            let ip = try await fake.run(["guestproperty", "get", "guest", "/VirtualBox/GuestInfo/Net/0/V4/IP"])
            #expect(ip.stdout == "Value: 10.0.2.15\n")
            expectSuccess(try await fake.run(["controlvm", "guest", "poweroff"]))
            #expect(try await fake.run(["guestproperty", "get", "guest", "/VirtualBox/GuestInfo/Net/0/V4/IP"]).stdout == "No value set!\n")
            #expect(try await fake.ssh(port: port, "true").status == 255, "the guest still answers after poweroff")
            try await Task.sleep(for: .milliseconds(300))
            expectSuccess(try await fake.run(["snapshot", "guest", "restore", "sandbox"]))
            #expect(!fileExists(disk + "/f"))
        }
    }

    @Test func killGuestDropsTheConnection() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.1
            let port = try freeLoopbackPort()
            try await fake.createVM(name: "crashy", port: port)
            expectSuccess(try await fake.run(["startvm", "crashy", "--type", "headless"]))
            #expect(try await fake.waitForSSH(port: port))
            let session = Task { try await fake.ssh(port: port, "sleep 30", timeout: .seconds(40)) }
            let disk = try await fake.diskDirectory(of: "crashy")
            let dir = URL(fileURLWithPath: disk).deletingLastPathComponent().path
            #expect(await eventually { ((try? FileManager.default.contentsOfDirectory(atPath: dir + "/sessions")) ?? []).contains { $0.hasSuffix(".json") } })
            let killedAt = ContinuousClock.now
            try await fake.killGuest("crashy")
            let result = try await session.value
            #expect(result.status == 255, "\(FakeVirtualBox.describe(result))")
            #expect(ContinuousClock.now - killedAt < .seconds(5))
            #expect(try await fake.state(of: "crashy") == "aborted")
            // An aborted VM boots again.
            expectSuccess(try await fake.run(["startvm", "crashy", "--type", "headless"]))
            #expect(try await fake.waitForSSH(port: port))
        }
    }

    @Test func poweroffKillsGuestCommands() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.1
            let port = try freeLoopbackPort()
            try await fake.createVM(name: "busy", port: port)
            expectSuccess(try await fake.run(["startvm", "busy", "--type", "headless"]))
            #expect(try await fake.waitForSSH(port: port))
            let disk = try await fake.diskDirectory(of: "busy")
            let session = Task {
                try await fake.ssh(port: port, "(sleep 301 >/dev/null 2>&1 & echo $! > bg.pid); echo $$ > fg.pid; exec sleep 300",
                                   timeout: .seconds(60))
            }
            func pid(_ name: String) -> pid_t? {
                (try? String(contentsOfFile: disk + "/" + name, encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            }
            #expect(await eventually { pid("fg.pid") != nil && pid("bg.pid") != nil })
            let foreground = try #require(pid("fg.pid")), background = try #require(pid("bg.pid"))
            #expect(await eventually { FakeVirtualBox.processIsAlive(foreground) && FakeVirtualBox.processIsAlive(background) })
            let guest = try await fake.guestProcesses(of: "busy")
            #expect(guest.contains(foreground))
            expectSuccess(try await fake.run(["controlvm", "busy", "poweroff"]))
            #expect(!FakeVirtualBox.processIsAlive(foreground))
            #expect(!FakeVirtualBox.processIsAlive(background))
            for pid in guest { #expect(!FakeVirtualBox.processIsAlive(pid), "guest process \(pid) survived poweroff") }
            let result = try await session.value
            #expect(result.status == 255, "\(FakeVirtualBox.describe(result))")
        }
    }

    @Test func acpiPowerButtonReturnsAtOnce() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.1
            fake.acpiDelay = 0.5
            let port = try freeLoopbackPort()
            try await fake.createVM(name: "acpi", port: port)
            expectSuccess(try await fake.run(["startvm", "acpi", "--type", "headless"]))
            #expect(try await fake.waitForSSH(port: port))
            expectSuccess(try await fake.run(["controlvm", "acpi", "acpipowerbutton"]))
            #expect(try await fake.state(of: "acpi") == "running")
            #expect(try await eventually(timeout: .seconds(5)) { try await fake.state(of: "acpi") == "poweroff" })
            #expect(try await fake.ssh(port: port, "true").status == 255)
        }
    }

    @Test func hostKeysDifferPerVMAndSurviveRestarts() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.1
            fake.lockWindow = 0
            let portA = try freeLoopbackPort(), portB = try freeLoopbackPort()
            try await fake.createVM(name: "a", port: portA)
            try await fake.createVM(name: "b", port: portB)
            func hostKey(_ port: Int) async throws -> String {
                let result = try await FakeVirtualBox.capture("/usr/bin/ssh-keyscan", ["-t", "ed25519", "-p", String(port), "127.0.0.1"],
                                                              environment: ProcessInfo.processInfo.environment,
                                                              scratch: fake.home, timeout: .seconds(20))
                let key = result.stdout.split(separator: "\n").first { $0.contains("ssh-ed25519") }
                    .map { String($0.split(separator: " ").last ?? "") } ?? ""
                #expect(!key.isEmpty, "\(FakeVirtualBox.describe(result))")
                return key
            }
            for vm in ["a", "b"] { expectSuccess(try await fake.run(["startvm", vm, "--type", "headless"])) }
            #expect(try await fake.waitForSSH(port: portA))
            #expect(try await fake.waitForSSH(port: portB))
            let keyA = try await hostKey(portA), keyB = try await hostKey(portB)
            #expect(keyA != keyB)
            expectSuccess(try await fake.run(["controlvm", "a", "poweroff"]))
            expectSuccess(try await fake.run(["startvm", "a", "--type", "headless"]))
            #expect(try await fake.waitForSSH(port: portA))
            #expect(try await hostKey(portA) == keyA)
            // A re-created VM (new UUID) gets a new key.
            expectSuccess(try await fake.run(["controlvm", "a", "poweroff"]))
            expectSuccess(try await fake.run(["unregistervm", "a", "--delete"]))
            #expect(!(try await fake.run(["list", "vms"]).stdout.contains("\"a\"")))
            try await fake.createVM(name: "a", port: portA)
            expectSuccess(try await fake.run(["startvm", "a", "--type", "headless"]))
            #expect(try await fake.waitForSSH(port: portA))
            #expect(try await hostKey(portA) != keyA)
        }
    }

    // MARK: - Import and clone

    @Test func importCountsTheDiskAndLinkedClonesCostNothing() async throws {
        try await withFakeVirtualBox { fake in
            let box = try TempDirectory(prefix: "tworker-box")
            defer { box.remove() }
            let (ovf, diskSize) = try makeBox(in: box.path, size: 300_000)
            #expect(try fake.bytesCopied() == 0)
            let noVsys = try await fake.run(["import", ovf, "--vmname", "base"])
            #expect(noVsys.status == 2 && noVsys.stderr.contains("requires preceding --vsys"), "\(FakeVirtualBox.describe(noVsys))")
            let imported = try await fake.run(["import", ovf, "--vsys", "0", "--vmname", "base"])
            expectSuccess(imported)
            #expect(imported.stdout.contains("Successfully imported the appliance."))
            #expect(imported.stderr.contains("100%"))
            #expect(try fake.bytesCopied() == diskSize)
            let baseDisk = try await fake.diskDirectory(of: "base")
            #expect((try? String(contentsOfFile: baseDisk + "/etc/hostname", encoding: .utf8)) == "box\n")
            let again = try await fake.run(["import", ovf, "--vsys", "0", "--vmname", "base"])
            expectError(again, "Machine settings file '\(fake.home)/VirtualBox VMs/base/base.vbox' already exists",
                        code: "VBOX_E_FILE_ERROR", hex: "0x80bb0004")
            #expect(try fake.bytesCopied() == diskSize)

            let noSnapshot = try await fake.run(["clonevm", "base", "--options", "link", "--name", "c0", "--register"])
            #expect(noSnapshot.status == 1 && noSnapshot.stderr.contains("VBoxManage: error:"))
            expectSuccess(try await fake.run(["snapshot", "base", "take", "base"]))
            try "changed after the snapshot\n".write(toFile: baseDisk + "/late", atomically: true, encoding: .utf8)
            let linked = try await fake.run(["clonevm", "base", "--snapshot", "base", "--options", "link", "--name", "c1", "--register"])
            expectSuccess(linked)
            #expect(linked.stdout == "Machine has been successfully cloned as \"c1\"\n")
            let afterLink = try fake.bytesCopied()
            #expect(afterLink - diskSize < 16_384, "a linked clone copied \(afterLink - diskSize) bytes")
            let cloneDisk = try await fake.diskDirectory(of: "c1")
            #expect(fileExists(cloneDisk + "/payload"))
            #expect(!fileExists(cloneDisk + "/late"), "the clone must start from the snapshot, not the current state")

            expectSuccess(try await fake.run(["clonevm", "base", "--name", "full", "--register"]))
            #expect(try fake.bytesCopied() - afterLink >= 300_000)
            expectSuccess(try await fake.run(["clonevm", "base", "--snapshot", "base", "--options", "link", "--name", "hidden"]))
            let vms = try await fake.run(["list", "vms"]).stdout
            #expect(vms.contains("\"c1\"") && vms.contains("\"full\"") && !vms.contains("\"hidden\""))
            expectError(try await fake.run(["showvminfo", "hidden"]), "Could not find a registered machine named 'hidden'",
                        code: "VBOX_E_OBJECT_NOT_FOUND", hex: "0x80bb0001")
        }
    }

    @Test func linkedClonesKeepTheirSourceAndSnapshot() async throws {
        try await withFakeVirtualBox { fake in
            fake.lockWindow = 0
            try await fake.createVM(name: "base", port: try freeLoopbackPort())
            let take = try await fake.run(["snapshot", "base", "take", "base"])
            expectSuccess(take)
            let snapshot = try #require(take.stdout.firstMatch(of: /^Snapshot taken\. UUID: ([0-9a-f-]{36})\n$/)?.1).description
            #expect(try await fake.run(["snapshot", "base", "list", "--machinereadable"]).stdout
                .contains("SnapshotUUID=\"\(snapshot)\""))
            // Clones from the snapshot's UUID (braced too) and from its name.
            let byUUID = try await fake.run(["clonevm", "base", "--snapshot", snapshot, "--options", "link", "--name", "w1", "--register"])
            expectSuccess(byUUID)
            #expect(byUUID.stdout == "Machine has been successfully cloned as \"w1\"\n")
            expectSuccess(try await fake.run(["clonevm", "base", "--snapshot", "{\(snapshot)}", "--options", "link", "--name", "w2", "--register"]))
            // An unregistered clone does not count.
            expectSuccess(try await fake.run(["clonevm", "base", "--snapshot", "base", "--options", "link", "--name", "loose"]))
            let medium = "\(fake.home)/VirtualBox VMs/base/box-disk001.vmdk"
            let unregister = try await fake.run(["unregistervm", "base", "--delete"])
            expectError(unregister, "Cannot delete the medium '\(medium)' because it has 2 child media",
                        code: "VBOX_E_OBJECT_IN_USE", hex: "0x80bb000c")
            #expect(try await fake.run(["list", "vms"]).stdout.contains("\"base\" {"), "a failed delete must leave the VM registered")
            #expect(FileManager.default.fileExists(atPath: try await fake.diskDirectory(of: "base")))
            let deleteSnapshot = try await fake.run(["snapshot", "base", "delete", snapshot])
            expectError(deleteSnapshot, "Cannot delete the medium '\(medium)' because it has 2 child media",
                        code: "VBOX_E_OBJECT_IN_USE", hex: "0x80bb000c")
            #expect(try await fake.run(["snapshot", "base", "list", "--machinereadable"]).stdout.contains(snapshot))

            // A renamed clone still depends on the base (the link is by UUID).
            expectSuccess(try await fake.run(["modifyvm", "w1", "--name", "w1-renamed"]))
            let vms = try await fake.run(["list", "vms"]).stdout
            #expect(vms.contains("\"w1-renamed\" {") && !vms.contains("\"w1\" {"))
            expectSuccess(try await fake.run(["unregistervm", "w2", "--delete"]))
            expectError(try await fake.run(["unregistervm", "base", "--delete"]),
                        "Cannot delete the medium '\(medium)' because it has 1 child media",
                        code: "VBOX_E_OBJECT_IN_USE", hex: "0x80bb000c")
            expectError(try await fake.run(["snapshot", "base", "delete", "base"]),
                        "Cannot delete the medium '\(medium)' because it has 1 child media",
                        code: "VBOX_E_OBJECT_IN_USE", hex: "0x80bb000c")
            expectSuccess(try await fake.run(["unregistervm", "w1-renamed", "--delete"]))

            // Once the clones are gone, both work: the snapshot by UUID, then the VM.
            let deleted = try await fake.run(["snapshot", "base", "delete", snapshot])
            expectSuccess(deleted)
            #expect(deleted.stdout.hasPrefix("Deleting snapshot 'base' (\(snapshot))"))
            expectSuccess(try await fake.run(["unregistervm", "base", "--delete"]))
            #expect(!(try await fake.run(["list", "vms"]).stdout.contains("\"base\"")))
        }
    }

    @Test func snapshotWithCloneBlocksOnlyItself() async throws {
        try await withFakeVirtualBox { fake in
            fake.lockWindow = 0
            try await fake.createVM(name: "src", port: try freeLoopbackPort(), snapshot: "first")
            expectSuccess(try await fake.run(["snapshot", "src", "take", "second"]))
            expectSuccess(try await fake.run(["clonevm", "src", "--snapshot", "second", "--options", "link", "--name", "c", "--register"]))
            let blocked = try await fake.run(["snapshot", "src", "delete", "second"])
            #expect(blocked.status == 1 && blocked.stderr.contains("/VirtualBox VMs/src/Snapshots/{")
                    && blocked.stderr.contains("because it has 1 child media"), "\(FakeVirtualBox.describe(blocked))")
            // A full clone does not depend on its source.
            expectSuccess(try await fake.run(["clonevm", "src", "--snapshot", "first", "--name", "full", "--register"]))
            expectSuccess(try await fake.run(["unregistervm", "c", "--delete"]))
            expectSuccess(try await fake.run(["snapshot", "src", "delete", "second"]))
            expectSuccess(try await fake.run(["unregistervm", "src", "--delete"]))
            #expect(try await fake.run(["list", "vms"]).stdout.contains("\"full\" {"))
        }
    }

    @Test func parallelImportsFail() async throws {
        try await withFakeVirtualBox { fake in
            fake.importDelay = 1.5
            let box = try TempDirectory(prefix: "tworker-box")
            defer { box.remove() }
            let (ovf, _) = try makeBox(in: box.path, size: 1000)
            async let first = fake.run(["import", ovf, "--vsys", "0", "--vmname", "one"])
            async let second = fake.run(["import", ovf, "--vsys", "0", "--vmname", "two"])
            let results = try await [first, second]
            let failures = results.filter { $0.status != 0 }
            #expect(failures.count == 1, "\(results.map(FakeVirtualBox.describe))")
            #expect(failures.first?.stderr.contains("VBoxManage: error: ") == true)
            #expect(failures.first?.stderr.contains("Details: code ") == true)
            // Serialized, both work.
            fake.importDelay = 0
            let retry = results[0].status == 0 ? "two" : "one"
            expectSuccess(try await fake.run(["import", ovf, "--vsys", "0", "--vmname", retry]))
            #expect(try await fake.run(["list", "vms"]).stdout.split(separator: "\n").count == 2)
        }
    }

    // MARK: - Fault injection and bookkeeping

    @Test func injectedFailuresAndLocks() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.1
            try await fake.createVM(name: "faulty", port: try freeLoopbackPort())
            try fake.inject("startvm", fault: .fail(1, message: "The virtual machine 'faulty' has terminated unexpectedly during startup",
                                                    code: "E_FAIL", hex: "0x80004005"))
            expectError(try await fake.run(["startvm", "faulty", "--type", "headless"]),
                        "The virtual machine 'faulty' has terminated unexpectedly during startup", code: "E_FAIL", hex: "0x80004005")
            #expect(try await fake.state(of: "faulty") == "poweroff")
            expectSuccess(try await fake.run(["startvm", "faulty", "--type", "headless"]))
            #expect(try fake.faults()["startvm"]?.fail == 0)

            expectSuccess(try await fake.run(["controlvm", "faulty", "poweroff"]))
            try await Task.sleep(for: .milliseconds(300))
            try fake.inject("modifyvm", fault: .lock(2))
            expectLockError(try await fake.run(["modifyvm", "faulty", "--memory", "512"]), "faulty")
            expectLockError(try await fake.run(["modifyvm", "faulty", "--memory", "512"]), "faulty")
            expectSuccess(try await fake.run(["modifyvm", "faulty", "--memory", "512"]))

            try fake.inject("snapshot restore", fault: .fail(1))
            expectSuccess(try await fake.run(["snapshot", "faulty", "take", "s"]))
            let generic = try await fake.run(["snapshot", "faulty", "restore", "s"])
            #expect(generic.status == 1 && generic.stderr.contains("Details: code E_FAIL (0x80004005)"), "\(FakeVirtualBox.describe(generic))")
            expectSuccess(try await fake.run(["snapshot", "faulty", "restore", "s"]))
        }
    }

    @Test func injectedHangIsKilledByTheCallersTimeout() async throws {
        try await withFakeVirtualBox { fake in
            try await fake.createVM(name: "stuck", port: try freeLoopbackPort())
            try fake.inject("showvminfo", fault: .hang)
            let started = ContinuousClock.now
            do {
                _ = try await fake.run(["showvminfo", "stuck", "--machinereadable"], timeout: .seconds(1))
                Issue.record("a hung VBoxManage returned")
            } catch let timeout as FakeVBoxTimeout {
                #expect(!FakeVirtualBox.processIsAlive(timeout.pid))
                #expect(kill(timeout.pid, 0) != 0)
            }
            #expect(ContinuousClock.now - started < .seconds(10))
            try fake.clearFaults("showvminfo")
            expectSuccess(try await fake.run(["showvminfo", "stuck", "--machinereadable"], timeout: .seconds(30)))
        }
    }

    @Test func neverBootsStartsButNoSSH() async throws {
        try await withFakeVirtualBox { fake in
            fake.bootDelay = 0.1
            let port = try freeLoopbackPort()
            try await fake.createVM(name: "dud", port: port)
            try fake.inject("startvm", fault: .neverBoots)
            expectSuccess(try await fake.run(["startvm", "dud", "--type", "headless"]))
            #expect(try await fake.state(of: "dud") == "running")
            try await Task.sleep(for: .milliseconds(600))
            #expect(try await fake.ssh(port: port, "true").status == 255)
            #expect(try await fake.run(["guestproperty", "get", "dud", "/VirtualBox/GuestInfo/Net/0/V4/IP"]).stdout == "No value set!\n")
            expectSuccess(try await fake.run(["controlvm", "dud", "poweroff"]))
        }
    }

    @Test func callLogRecordsArgvAndExitCodes() async throws {
        try await withFakeVirtualBox { fake in
            try await fake.createVM(name: "logged", port: try freeLoopbackPort())
            _ = try await fake.run(["--version"])
            _ = try await fake.run(["showvminfo", "logged", "--machinereadable"])
            _ = try await fake.run(["showvminfo", "nobody"])
            _ = try await fake.run(["bogus"])
            _ = try await fake.state(of: "logged")
            #expect(try fake.calls() == [["--version"], ["showvminfo", "logged", "--machinereadable"],
                                         ["showvminfo", "nobody"], ["bogus"]])
            let records = try fake.callRecords()
            #expect(records.map(\.exit) == [0, 0, 1, 2])
            #expect(records.allSatisfy { $0.pid > 0 && $0.durationMs >= 0 && $0.start > 1_600_000_000 })
        }
    }
}
