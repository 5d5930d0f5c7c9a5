import Foundation
import Testing
@testable import TWorkerCore
import TWorkerTestSupport

/// `provider: qemu` without a qemu: its config keys and the argv it would run.
@Suite struct QEMUProviderTests {
    @Test func qemuKeysLoadWithPathsMadeAbsolute() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", """
            provider: qemu
            vms:
              base_image: images/base.qcow2
              memory: 256
            qemu:
              binary: /opt/qemu/bin/qemu-system-x86_64
              accel: tcg
              extra_args: [-rtc, base=utc]
              kernel: /boot/vmlinuz
              initrd: images/initrd.gz
              append: console=ttyS0 quiet
            timeouts:
              qemu: 30
            """)
        let config = try dir.loader().load().config
        #expect(config.provider == .qemu)
        #expect(config.vms.baseImage?.hasSuffix("/images/base.qcow2") == true && config.vms.baseImage?.hasPrefix("/") == true)
        #expect(config.qemu.binary == "/opt/qemu/bin/qemu-system-x86_64")
        #expect(config.qemu.img == "qemu-img")
        #expect(config.qemu.accel == .tcg)
        #expect(config.qemu.extraArgs == ["-rtc", "base=utc"])
        #expect(config.qemu.initrd?.hasPrefix("/") == true)
        #expect(config.qemu.append == "console=ttyS0 quiet")
        #expect(config.timeouts.qemu == 30)
        #expect(Program.forWorkers(config).map(\.name) == ["/opt/qemu/bin/qemu-system-x86_64", "qemu-img", "ssh"])
    }

    @Test func qemuNeedsABaseImageAndAKernelForAnInitrd() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "provider: qemu\nqemu:\n  accel: fast\n")
        #expect(configProblems(dir.loader()) == [dir.file("worker.yml") + ":3: qemu.accel: invalid value \"fast\" (expected one of: auto, kvm, tcg)"])
        try dir.write("worker.yml", "provider: qemu\nqemu:\n  initrd: /x\n")
        #expect(configProblems(dir.loader()) == [
            dir.file("worker.yml") + ":1: vms.base_image: must be set for provider: qemu (a qcow2 disk; boxes/qemu/build-test-image DIR makes one)",
            dir.file("worker.yml") + ":1: qemu.kernel: must be set when qemu.initrd or qemu.append is (they belong to a direct kernel boot)",
        ])
    }

    @Test func missingQEMUNamesItsKey() {
        let error = #expect(throws: ProgramNotFound.self) {
            try ProgramLocator(searchPath: "/nonexistent/tworker").locate(.qemuSystem("qemu-system-x86_64"))
        }
        #expect(error?.description == "qemu-system-x86_64 not found on PATH (/nonexistent/tworker); install qemu-system-x86 or set qemu.binary")
    }

    @Test func commandsBuildTheDocumentedArgv() {
        let overlay = ProgramCommand.qemuImg(.createOverlay(base: "/img/base.qcow2", overlay: "/var/qemu/worker-1/disk.qcow2"),
                                             executable: "qemu-img", timeout: .seconds(60))
        #expect(overlay.arguments == ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "/img/base.qcow2", "/var/qemu/worker-1/disk.qcow2"])
        #expect(overlay.timeout == .seconds(60))
        #expect(QEMUImgCommand.info(image: "/d.qcow2").arguments == ["info", "-U", "--output=json", "/d.qcow2"])
        #expect(QEMUImgCommand.snapshotNames(infoJSON: #"{"snapshots":[{"id":"1","name":"sandbox"}],"format":"qcow2"}"#) == ["sandbox"])
        #expect(QEMUImgCommand.snapshotNames(infoJSON: #"{"format":"qcow2"}"#) == [])
        #expect(QEMUImgCommand.flatten(source: "/v/base/disk.qcow2", destination: "/v/images/b.qcow2.partial").arguments
                == ["convert", "-q", "-f", "qcow2", "-O", "qcow2", "/v/base/disk.qcow2", "/v/images/b.qcow2.partial"])
        #expect(QEMUImgCommand.backingFile(infoJSON: #"{"backing-filename":"/img/base.qcow2","full-backing-filename":"/img/base.qcow2"}"#)
                == "/img/base.qcow2")
        #expect(QEMUImgCommand.backingFile(infoJSON: #"{"format":"qcow2"}"#) == nil)

        let launch = QEMULaunch(name: "tworker-test-worker-2", accel: "tcg", memory: 256, cpus: 1, kernel: "/k", initrd: "/i",
                                append: "console=ttyS0", overlay: "/v/disk.qcow2", sshHost: "127.0.0.1", sshPort: 2222,
                                qmpSocket: "/v/qmp.sock", pidFile: "/v/qemu.pid", consoleLog: "/v/console.log",
                                loadSnapshot: "sandbox", extraArguments: ["-rtc", "base=utc"])
        let command = ProgramCommand.qemuSystem(launch, executable: "qemu-system-x86_64", timeout: .seconds(60))
        #expect(command.program == .qemuSystem("qemu-system-x86_64"))
        #expect(command.arguments == [
            "-name", "tworker-test-worker-2", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
            "-display", "none", "-monitor", "none", "-serial", "file:/v/console.log", "-no-reboot",
            "-kernel", "/k", "-initrd", "/i", "-append", "console=ttyS0",
            "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22", "-device", "virtio-net-pci,romfile=,netdev=n0",
            "-drive", "file=/v/disk.qcow2,if=virtio,format=qcow2", "-qmp", "unix:/v/qmp.sock,server=on,wait=off",
            "-pidfile", "/v/qemu.pid", "-daemonize", "-loadvm", "sandbox", "-rtc", "base=utc",
        ])
    }

    /// A provisioned base is used only while the config names the `vms.base_image` it was made from.
    @Test func theProvisionedBaseFollowsItsPointer() throws {
        let directory = try TempDirectory(prefix: "tworker-qemu-base")
        defer { directory.remove() }
        let base = QEMUBaseImage(configured: "/img/base.qcow2", stateDir: directory.path)
        #expect(base.current == "/img/base.qcow2" && base.provisioned == nil && base.images.isEmpty)

        let image = base.nextImage(now: Date(timeIntervalSince1970: 1_800_000_000))
        #expect(image == directory.path + "/qemu/images/base-20270115T080000Z.qcow2")
        try FileManager.default.createDirectory(atPath: base.directory, withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: image))
        #expect(base.nextImage(now: Date(timeIntervalSince1970: 1_800_000_000)) == directory.path + "/qemu/images/base-20270115T080000Z-2.qcow2",
                "never an existing file")
        try base.use(image)
        #expect(base.current == image && base.images == [image])
        #expect(QEMUBaseImage(configured: "/img/other.qcow2", stateDir: directory.path).current == "/img/other.qcow2",
                "made from another vms.base_image: not used")
        try FileManager.default.removeItem(atPath: image)
        #expect(base.current == "/img/base.qcow2", "a pointer to a missing file is ignored")
        try base.use(nil)
        #expect(!FileManager.default.fileExists(atPath: base.directory + "/current.json"))
    }

    /// Only a qemu started under our `-name` is ever signalled.
    @Test func aProcessIsOursOnlyByItsName() {
        #expect(QEMUProcess.isNamed("tworker-t-worker-1", ["qemu", "-name", "tworker-t-worker-1", "-m", "1"]))
        #expect(QEMUProcess.isNamed("tworker-t-worker-1", ["qemu", "-name", "guest=tworker-t-worker-1,debug-threads=on"]))
        #expect(!QEMUProcess.isNamed("tworker-t-worker-1", ["qemu", "-name", "tworker-t-worker-10"]))
        #expect(!QEMUProcess.isNamed("tworker-t-worker-1", ["sleep", "tworker-t-worker-1"]))
        // A pid file naming a live process that is not our qemu (this test process) is ignored.
        let file = NSTemporaryDirectory() + "/tworker-qemu-pid-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: file) }
        try? String(getpid()).write(toFile: file, atomically: true, encoding: .utf8)
        #expect(QEMUProcess(pidFile: file, name: "tworker-t-worker-1").runningPID() == nil)
    }
}
