import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// The tiny real guest of `boxes/qemu/build-test-image`, booted under software emulation (no KVM
/// here) and driven over SSH and QMP the way a `provider: qemu` worker will drive it.
struct QEMUGuest {
    static let qemu = "/usr/bin/qemu-system-x86_64"
    static let qemuImg = "/usr/bin/qemu-img"
    static var installed: Bool {
        FileManager.default.isExecutableFile(atPath: qemu) && FileManager.default.isExecutableFile(atPath: qemuImg)
    }

    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    /// Ignored by git (`.build-*/`); the script reuses what it finds there.
    static let imageDirectory = packageRoot + "/.build-qemu-image"

    let scratch: String
    let port: Int
    let process: SpawnedProcess
    let qmpPath: String
    var key: String { Self.imageDirectory + "/id_ed25519" }

    /// Runs the image script (builds once, then reuses); returns how long it took.
    static func buildImage(scratch: String) async throws -> Duration {
        let started = ContinuousClock.now
        let result = try await FakeVirtualBox.capture(packageRoot + "/boxes/qemu/build-test-image", [imageDirectory],
                                                      environment: ProcessInfo.processInfo.environment, scratch: scratch,
                                                      timeout: .seconds(600))
        guard result.status == 0 else { throw TestSupportError("build-test-image failed: \(FakeVirtualBox.describe(result))") }
        return ContinuousClock.now - started
    }

    /// Starts qemu on a fresh overlay of the image's disk, SSH forwarded from 127.0.0.1:`port`.
    static func boot(scratch: String) async throws -> QEMUGuest {
        let overlay = scratch + "/overlay.qcow2"
        let made = try await FakeVirtualBox.capture(qemuImg, ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                                                              imageDirectory + "/disk.qcow2", overlay],
                                                    environment: ProcessInfo.processInfo.environment, scratch: scratch, timeout: .seconds(30))
        guard made.status == 0 else { throw TestSupportError("qemu-img create failed: \(FakeVirtualBox.describe(made))") }
        let port = try freeLoopbackPort()
        let qmpPath = scratch + "/qmp.sock"
        let arguments = [
            "-accel", "tcg", "-cpu", "max", "-m", "256", "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", "file:" + scratch + "/console.log",
            "-kernel", imageDirectory + "/vmlinuz", "-initrd", imageDirectory + "/initrd.cpio.gz", "-append", "console=ttyS0 quiet",
            "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:\(port)-:22", "-device", "virtio-net-pci,romfile=,netdev=n0",
            "-drive", "file=\(overlay),if=virtio,format=qcow2",
            "-qmp", "unix:\(qmpPath),server,nowait",
        ]
        let process = try SpawnedProcess.spawn(qemu, arguments, environment: ProcessInfo.processInfo.environment,
                                               log: scratch + "/qemu.log")
        return QEMUGuest(scratch: scratch, port: port, process: process, qmpPath: qmpPath)
    }

    /// Runs `command` in the guest as root over the host's OpenSSH client.
    @discardableResult
    func ssh(_ command: String, timeout: Duration = .seconds(60)) async throws -> (status: Int32, stdout: String, stderr: String) {
        let args = ["-i", key, "-p", String(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "-o", "IdentitiesOnly=yes",
                    "root@127.0.0.1", command]
        return try await FakeVirtualBox.capture("/usr/bin/ssh", args, environment: ProcessInfo.processInfo.environment,
                                                scratch: scratch, timeout: timeout)
    }

    /// Polls `ssh true` until it succeeds; how long that took, nil on timeout.
    func waitForSSH(timeout: Duration) async throws -> Duration? {
        let started = ContinuousClock.now
        while ContinuousClock.now - started < timeout {
            if try await ssh("true", timeout: .seconds(15)).status == 0 { return ContinuousClock.now - started }
            try await Task.sleep(for: .milliseconds(100))
        }
        return nil
    }

    var console: String { (try? String(contentsOfFile: scratch + "/console.log", encoding: .utf8)) ?? "" }
    var diagnostics: String { "qemu: \(process.output)\nconsole (tail): \(console.suffix(3000))" }
}

@Suite(.serialized, .enabled(if: QEMUGuest.installed,
                             "qemu-system-x86_64 / qemu-img are not installed (scripts/install-deps installs qemu-system-x86 qemu-utils)"))
struct QEMUGuestTests {
    @Test(.timeLimit(.minutes(15)))
    func aGuestAnswersSSHAndItsSnapshotUndoesAJob() async throws {
        let directory = try TempDirectory(prefix: "tworker-qemu")
        defer { directory.remove() }
        let testStarted = ContinuousClock.now

        let firstBuild = try await QEMUGuest.buildImage(scratch: directory.path)
        let reusedBuild = try await QEMUGuest.buildImage(scratch: directory.path)
        #expect(reusedBuild < .seconds(5), "a built image is reused, not rebuilt")
        let fragment = try String(contentsOfFile: QEMUGuest.imageDirectory + "/worker.yml", encoding: .utf8)
        for key in ["base_image: \(QEMUGuest.imageDirectory)/disk.qcow2", "kernel: ", "initrd: ", "user: root",
                    "key: \(QEMUGuest.imageDirectory)/id_ed25519"] {
            #expect(fragment.contains(key), "worker.yml names \(key)")
        }

        let guest = try await QEMUGuest.boot(scratch: directory.path)
        do {
            // Under TCG on 2 busy cores a boot takes 6-20 s; a generous bound keeps CI honest but calm.
            let booted = try await guest.waitForSSH(timeout: .seconds(180))
            try #require(booted != nil, "the guest never answered SSH\n\(guest.diagnostics)")

            let hello = try await guest.ssh("bash -c 'echo hi; id -un'")
            #expect(hello.status == 0)
            #expect(hello.stdout == "hi\nroot\n", "\(FakeVirtualBox.describe(hello))")
            // Builds are fed to `bash -s` on stdin; the clock must be settable after a restore.
            let tools = try await guest.ssh("echo $BASH_VERSION; date -s @1700000000 >/dev/null && date +%s; test -b /dev/vda && echo disk")
            let lines = tools.stdout.split(separator: "\n")
            #expect(lines.first?.hasPrefix("5.") == true, "bash is the login shell: \(FakeVirtualBox.describe(tools))")
            #expect(lines.count == 3 && Int(lines[1]).map { abs($0 - 1_700_000_000) < 5 } == true, "date -s works: \(tools.stdout)")
            #expect(lines.last == "disk")
            let script = try await guest.ssh("printf 'echo from-stdin; exit 3\\n' | bash -s")
            #expect(script.stdout == "from-stdin\n" && script.status == 3, "bash -s runs a script from stdin: \(FakeVirtualBox.describe(script))")

            let qmp = try await QMPClient.connect(path: guest.qmpPath, timeout: .seconds(10))
            #expect(try await qmp.status() == QMPClient.Status(status: "running", running: true))

            let saveStarted = ContinuousClock.now
            try await qmp.humanMonitor("savevm sandbox", timeout: .seconds(120))
            let saveTook = ContinuousClock.now - saveStarted
            let snapshots = try await qmp.humanMonitor("info snapshots")
            #expect(snapshots.contains("sandbox"), "the snapshot is listed: \(snapshots)")

            let marked = try await guest.ssh("echo job >/root/marker && echo job >/tmp/marker && cat /root/marker /tmp/marker")
            #expect(marked.stdout == "job\njob\n", "\(FakeVirtualBox.describe(marked))")

            let loadStarted = ContinuousClock.now
            try await qmp.humanMonitor("loadvm sandbox", timeout: .seconds(120))
            let loadTook = ContinuousClock.now - loadStarted
            let answered = try await guest.waitForSSH(timeout: .seconds(60))
            try #require(answered != nil, "no SSH after loadvm\n\(guest.diagnostics)")
            let loadToSSH = ContinuousClock.now - loadStarted
            let after = try await guest.ssh("ls /root/marker /tmp/marker 2>/dev/null; echo checked")
            #expect(after.stdout == "checked\n", "the job's files are gone after loadvm: \(FakeVirtualBox.describe(after))")

            // A QMP-level failure and an HMP-level one both carry qemu's own words.
            let unknown = await #expect(throws: QMPError.self) { try await qmp.execute("no-such-command") }
            #expect(unknown?.errorClass == "CommandNotFound", "\(String(describing: unknown))")
            let missing = await #expect(throws: QMPError.self) { try await qmp.humanMonitor("loadvm nosuch") }
            #expect(missing?.qemuMessage?.contains("nosuch") == true, "\(String(describing: missing))")
            // HMP's loadvm stops the VM first and restarts it only on success: a failed restore leaves
            // it paused, and the provider has to `cont` (or retry) itself.
            let afterFailure = try await qmp.status()
            #expect(afterFailure == QMPClient.Status(status: "restore-vm", running: false))
            try await qmp.cont()
            #expect(try await qmp.status().running)

            try await qmp.stop()
            #expect(try await qmp.status() == QMPClient.Status(status: "paused", running: false))
            try await qmp.cont()
            #expect(try await qmp.status().running)
            let resumed = try await guest.waitForSSH(timeout: .seconds(60))
            #expect(resumed != nil, "SSH answers after cont")

            try await qmp.quit()
            let exit = await guest.process.waitForExit(timeout: .seconds(20))
            #expect(exit == 0, "qemu exits on quit: \(guest.diagnostics)")
            #expect(processIsGone(guest.process.pid))
            await qmp.close()

            print("""
                qemu guest figures: image build \(firstBuild) (reused \(reusedBuild)), boot to SSH \(booted!), \
                savevm \(saveTook), loadvm \(loadTook), loadvm to SSH \(loadToSSH), after a failed loadvm \(afterFailure.status), \
                test \(ContinuousClock.now - testStarted)
                """)
        } catch {
            await guest.process.kill9()
            throw error
        }
        // Should the checks above have left it running, it is stopped by PID, never by name.
        if !processIsGone(guest.process.pid) { await guest.process.kill9() }
    }
}
