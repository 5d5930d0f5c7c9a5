import Foundation
import Testing
import TWorkerTestSupport

/// The fake `vagrant` (Tests/Fixtures/fakes/vagrant) must behave like the real one as VIRTUALBOX.md
/// describes it, failures included. Serialized: each test boots real sshd guests.
@Suite(.serialized, .tags(.endToEnd))
struct FakeVagrantTests {
    typealias Result = (status: Int32, stdout: String, stderr: String)

    static let provisionFailed = "The SSH command responded with a non-zero exit status. Vagrant\n"
        + "assumes that this means the command failed. The output for this command\n"
        + "should be in the log above. Please read the output to determine what\n"
        + "went wrong."
    static let locked = "Vagrant can't use the requested machine because it is locked!"

    func describe(_ result: Result) -> String { FakeVirtualBox.describe(result) }

    /// A project directory with a `Vagrantfile` and the environment of its one machine.
    struct Project {
        let directory: String
        let environment: [String: String]
        let port: Int
        let vmName: String
    }

    func project(in root: String, name: String = "project", box: String, vmName: String,
                 scripts: [String] = []) throws -> Project {
        let directory = root + "/" + name
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try "# read by the real vagrant only; the fake reads TWORKER_* from the environment\n"
            .write(toFile: directory + "/Vagrantfile", atomically: true, encoding: .utf8)
        var paths: [String] = []
        for (index, script) in scripts.enumerated() {
            let path = "\(directory)/provision-\(index + 1).sh"
            try script.write(toFile: path, atomically: true, encoding: .utf8)
            paths.append(path)
        }
        let port = try freeLoopbackPort()
        return Project(directory: directory,
                       environment: ["TWORKER_BASE_BOX": box, "TWORKER_VM_NAME": vmName, "TWORKER_SSH_PORT": String(port),
                                     "TWORKER_PROVISION": paths.joined(separator: ":")],
                       port: port, vmName: vmName)
    }

    func run(_ vagrant: FakeVagrant, _ project: Project, _ args: [String]) async throws -> Result {
        try await vagrant.run(args, cwd: project.directory, environment: project.environment)
    }

    func state(_ vagrant: FakeVagrant, _ project: Project) async throws -> String? {
        let result = try await run(vagrant, project, ["status", "--machine-readable"])
        #expect(result.status == 0, "\(describe(result))")
        return FakeVagrant.machineReadable(result.stdout).first { $0.count >= 4 && $0[2] == "state" }?[3]
    }

    func read(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }

    // MARK: - Boxes

    @Test func boxAddListRemove() async throws {
        try await withFakeVagrant { _, vagrant in
            let scratch = try TempDirectory(prefix: "tworker-vagrant")
            defer { scratch.remove() }
            let box = scratch.path + "/base.box"
            try BoxBuilder.makeBox(at: box, files: ["etc/hostname": "box\n"], gzip: true)

            let empty = try await vagrant.run(["box", "list"])
            #expect(empty.status == 0 && empty.stdout.contains("There are no installed boxes!"), "\(describe(empty))")
            let added = try await vagrant.run(["box", "add", "--name", "tworker/base", "--provider", "virtualbox", box])
            #expect(added.status == 0, "\(describe(added))")
            #expect(added.stdout.contains("Successfully added box 'tworker/base' (v0) for 'virtualbox'!"))
            let directory = vagrant.boxDirectory("tworker/base")
            #expect(directory.hasSuffix("/boxes/tworker-VAGRANTSLASH-base/0/virtualbox"))
            for member in ["metadata.json", "box.ovf", "box-disk001.vmdk"] {
                #expect(FileManager.default.fileExists(atPath: directory + "/" + member), "missing \(member)")
            }
            #expect(try BoxBuilder.readDisk(directory + "/box-disk001.vmdk") == ["etc/hostname": "box\n"])

            // A second box, plain tar, to see the list padded and sorted.
            let plain = scratch.path + "/plain.box"
            try BoxBuilder.makeBox(at: plain, files: ["a": "b"])
            #expect(try await vagrant.run(["box", "add", "--name", "b", plain]).status == 0)
            let list = try await vagrant.run(["box", "list"])
            #expect(list.stdout == "b            (virtualbox, 0)\ntworker/base (virtualbox, 0)\n", "\(describe(list))")
            let machine = FakeVagrant.machineReadable(try await vagrant.run(["box", "list", "--machine-readable"]).stdout)
            #expect(machine.filter { $0[2] == "box-name" }.map { $0[3] } == ["b", "tworker/base"])
            #expect(machine.filter { $0[2] == "box-provider" }.map { $0[3] } == ["virtualbox", "virtualbox"])
            #expect(machine.filter { $0[2] == "box-version" }.map { $0[3] } == ["0", "0"])
            #expect(machine.allSatisfy { Int($0[0]) != nil && $0[1].isEmpty })

            // Adding it again fails without --force, in both output modes.
            let again = try await vagrant.run(["box", "add", "--name", "tworker/base", box])
            #expect(again.status == 1)
            #expect(again.stderr.contains("The box you're attempting to add already exists. Remove it before\n"
                                          + "adding it again or add it with the `--force` flag.\n\nName: tworker/base\n"
                                          + "Provider: virtualbox\nVersion: 0"), "\(describe(again))")
            let againMachine = try await vagrant.run(["box", "add", "--name", "tworker/base", box, "--machine-readable"])
            #expect(againMachine.status == 1 && againMachine.stderr.isEmpty, "\(describe(againMachine))")
            let errorExit = try #require(FakeVagrant.machineReadable(againMachine.stdout).last)
            #expect(errorExit[2] == "error-exit" && errorExit[3] == "Vagrant::Errors::BoxAlreadyExists")
            #expect(errorExit[4].hasPrefix("The box you're attempting to add already exists."))
            #expect(againMachine.stdout.contains("already exists. Remove it before\\nadding it again"))

            // --force replaces it with the new content.
            try BoxBuilder.makeBox(at: box + ".2", files: ["etc/hostname": "second\n"], gzip: true)
            let forced = try await vagrant.run(["box", "add", "--name", "tworker/base", "--force", box + ".2"])
            #expect(forced.status == 0, "\(describe(forced))")
            #expect(try BoxBuilder.readDisk(directory + "/box-disk001.vmdk") == ["etc/hostname": "second\n"])

            // A box for another provider, a missing file, a corrupt box.
            let wrongProvider = try await vagrant.run(["box", "add", "--name", "x", "--provider", "libvirt", box])
            #expect(wrongProvider.status == 1 && wrongProvider.stderr.contains("doesn't match the provider you specified"))
            let missing = try await vagrant.run(["box", "add", "--name", "x", scratch.path + "/nope.box"])
            #expect(missing.status == 1 && missing.stderr.contains("Couldn't open file"), "\(describe(missing))")
            try "not a tar".write(toFile: scratch.path + "/bad.box", atomically: true, encoding: .utf8)
            let corrupt = try await vagrant.run(["box", "add", "--name", "x", scratch.path + "/bad.box"])
            #expect(corrupt.status == 1 && corrupt.stderr.contains("The box failed to unpackage properly"))

            let removed = try await vagrant.run(["box", "remove", "tworker/base"])
            #expect(removed.status == 0, "\(describe(removed))")
            #expect(removed.stdout.contains("Removing box 'tworker/base' (v0) with provider 'virtualbox'..."))
            #expect(!FileManager.default.fileExists(atPath: vagrant.home + "/boxes/tworker-VAGRANTSLASH-base"))
            #expect(try await vagrant.run(["box", "list"]).stdout == "b (virtualbox, 0)\n")
            let gone = try await vagrant.run(["box", "remove", "tworker/base"])
            #expect(gone.status == 1 && gone.stderr.contains("No\nboxes named 'tworker/base' could be found."), "\(describe(gone))")

            // VAGRANT_HOME is required.
            var environment = ProcessInfo.processInfo.environment
            environment["VAGRANT_HOME"] = nil
            let unset = try await FakeVagrant.run(vagrant.vagrantPath, ["box", "list"], cwd: nil, environment: environment,
                                                  scratch: vagrant.home, timeout: .seconds(30))
            #expect(unset.status == 1 && unset.stderr.contains("VAGRANT_HOME"), "\(describe(unset))")
        }
    }

    // MARK: - up and provisioning

    @Test func upImportsTheBoxAndProvisionsInOrder() async throws {
        try await withFakeVagrant { fake, vagrant in
            fake.bootDelay = 0.2
            let scratch = try TempDirectory(prefix: "tworker-vagrant")
            defer { scratch.remove() }
            let box = scratch.path + "/base.box"
            let diskSize = try BoxBuilder.makeBox(at: box, files: ["etc/hostname": "box\n", "opt/app/README": "from the box\n"],
                                                  gzip: true)
            let project = try self.project(in: scratch.path, box: box, vmName: "tw-base", scripts: [
                "echo run >> runs.txt\necho first > first.txt\necho 'one says hi'\n",
                "test -f first.txt || exit 9\ncat first.txt > second.txt\necho \"two saw $(cat first.txt)\"\necho 'two, on stderr' >&2\n",
            ])
            #expect(try await state(vagrant, project) == "not_created")
            let up = try await run(vagrant, project, ["up", "--provision"])
            #expect(up.status == 0, "\(describe(up))")
            #expect(up.stdout.contains("==> default: Importing base box 'base.box'..."))
            let one = try #require(up.stdout.range(of: "    default: one says hi\n"), "\(describe(up))")
            let two = try #require(up.stdout.range(of: "    default: two saw first\n"), "\(describe(up))")
            #expect(one.upperBound <= two.lowerBound, "the provisioners ran out of order")
            #expect(up.stdout.contains("    default: two, on stderr\n"))
            #expect(try fake.bytesCopied() == diskSize)
            #expect(try fake.calls().contains { $0.first == "import" && $0.suffix(4) == ["--vsys", "0", "--vmname", "tw-base"] })
            let vmUUID = try await uuid(fake, "tw-base")
            #expect(try fake.calls().contains(["modifyvm", vmUUID, "--natpf1", "ssh,tcp,127.0.0.1,\(project.port),,22"]))

            // The guest has the box's files and what the provisioners wrote.
            #expect(try await fake.state(of: "tw-base") == "running")
            let disk = try await fake.diskDirectory(of: "tw-base")
            #expect(read(disk + "/etc/hostname") == "box\n" && read(disk + "/opt/app/README") == "from the box\n")
            #expect(read(disk + "/second.txt") == "first\n")
            #expect(try await fake.ssh(port: project.port, "cat opt/app/README").stdout == "from the box\n")
            #expect(try await state(vagrant, project) == "running")
            #expect(FileManager.default.fileExists(atPath: project.directory + "/.vagrant/machines/default/virtualbox/id"))

            // Running: a plain `up` only says so; --provision and `provision` run the scripts again.
            let again = try await run(vagrant, project, ["up", "default"])
            #expect(again.status == 0 && again.stdout.contains("VirtualBox VM is already running."), "\(describe(again))")
            #expect(read(disk + "/runs.txt") == "run\n")
            #expect(try await run(vagrant, project, ["up", "--provision"]).status == 0)
            #expect(try await run(vagrant, project, ["provision"]).status == 0)
            #expect(read(disk + "/runs.txt") == "run\nrun\nrun\n")
            #expect(try fake.bytesCopied() == diskSize, "a second up must not import again")
        }
    }

    func uuid(_ fake: FakeVirtualBox, _ vm: String) async throws -> String {
        let info = try await fake.run(["showvminfo", vm, "--machinereadable"]).stdout
        let line = try #require(info.split(separator: "\n").first { $0.hasPrefix("UUID=") })
        return String(line.dropFirst("UUID=\"".count).dropLast())
    }

    @Test func failingProvisionerFailsUp() async throws {
        try await withFakeVagrant { fake, vagrant in
            fake.bootDelay = 0.1
            let scratch = try TempDirectory(prefix: "tworker-vagrant")
            defer { scratch.remove() }
            let box = scratch.path + "/base.box"
            try BoxBuilder.makeBox(at: box, files: ["etc/hostname": "box\n"])
            let project = try self.project(in: scratch.path, box: box, vmName: "tw-fail", scripts: [
                "echo before the failure\nexit 3\n", "touch never\n",
            ])
            let up = try await run(vagrant, project, ["up"])
            #expect(up.status == 1, "\(describe(up))")
            #expect(up.stdout.contains("    default: before the failure\n"))
            #expect(up.stderr.contains(Self.provisionFailed), "\(describe(up))")
            let disk = try await fake.diskDirectory(of: "tw-fail")
            #expect(!FileManager.default.fileExists(atPath: disk + "/never"), "the second provisioner ran after a failure")
            // The VM stays up, as with real vagrant; `provision` fails the same way, machine-readably too.
            #expect(try await fake.state(of: "tw-fail") == "running")
            let again = try await run(vagrant, project, ["provision", "--machine-readable"])
            #expect(again.status == 1)
            let last = try #require(FakeVagrant.machineReadable(again.stdout).last)
            #expect(last[2] == "error-exit" && last[3] == "Vagrant::Errors::VagrantError" && last[4] == Self.provisionFailed,
                    "\(describe(again))")
            // An up without provisioning works on the same machine.
            #expect(try await run(vagrant, project, ["halt"]).status == 0)
            let quiet = try await run(vagrant, project, ["up", "--no-provision"])
            #expect(quiet.status == 0 && !quiet.stdout.contains("before the failure"), "\(describe(quiet))")
        }
    }

    @Test func haltDestroyAndStatus() async throws {
        try await withFakeVagrant { fake, vagrant in
            fake.bootDelay = 0.1
            let scratch = try TempDirectory(prefix: "tworker-vagrant")
            defer { scratch.remove() }
            let box = scratch.path + "/base.box"
            try BoxBuilder.makeBox(at: box, files: ["etc/hostname": "box\n"])
            #expect(try await vagrant.run(["box", "add", "--name", "named", box]).status == 0)
            let project = try self.project(in: scratch.path, box: "named", vmName: "tw-life", scripts: ["echo run >> runs.txt\n"])

            // Without a Vagrantfile there is no environment.
            let nowhere = try await vagrant.run(["status"], cwd: scratch.path, environment: project.environment)
            #expect(nowhere.status == 1 && nowhere.stderr.contains("A Vagrant environment or target machine is required"))
            // VAGRANT_CWD points at the project from anywhere.
            var viaCwd = project.environment
            viaCwd["VAGRANT_CWD"] = project.directory
            #expect(try await vagrant.run(["status"], cwd: scratch.path, environment: viaCwd).stdout
                .contains("default                   not created (virtualbox)"))

            #expect(try await run(vagrant, project, ["up"]).status == 0)
            let disk = try await fake.diskDirectory(of: "tw-life")
            #expect(read(disk + "/runs.txt") == "run\n", "the first up provisions")
            let human = try await run(vagrant, project, ["status"])
            #expect(human.stdout.hasPrefix("Current machine states:\n\ndefault                   running (virtualbox)\n"))

            let halt = try await run(vagrant, project, ["halt"])
            #expect(halt.status == 0, "\(describe(halt))")
            #expect(try await state(vagrant, project) == "poweroff")
            let vmUUID = try await uuid(fake, "tw-life")
            #expect(try fake.calls().contains(["controlvm", vmUUID, "poweroff"]))
            // `provision` on a stopped VM only says so and exits 0, like real vagrant.
            let stopped = try await run(vagrant, project, ["provision"])
            #expect(stopped.status == 0 && stopped.stdout.contains("VM is not currently running."), "\(describe(stopped))")
            // A later up boots it without provisioning again.
            let up = try await run(vagrant, project, ["up"])
            #expect(up.status == 0 && up.stdout.contains("Machine already provisioned."), "\(describe(up))")
            #expect(read(disk + "/runs.txt") == "run\n")
            #expect(try await state(vagrant, project) == "running")

            let noForce = try await run(vagrant, project, ["destroy"])
            #expect(noForce.status == 1 && noForce.stderr.contains("requires\na TTY"), "\(describe(noForce))")
            let destroy = try await run(vagrant, project, ["destroy", "-f"])
            #expect(destroy.status == 0, "\(describe(destroy))")
            #expect(destroy.stdout.contains("==> default: Forcing shutdown of VM...\n==> default: Destroying VM and associated drives..."))
            #expect(try await state(vagrant, project) == "not_created")
            #expect(!(try await fake.run(["list", "vms"]).stdout.contains("tw-life")))
            #expect(!FileManager.default.fileExists(atPath: disk))
            let twice = try await run(vagrant, project, ["destroy", "-f"])
            #expect(twice.status == 0 && twice.stdout.contains("VM not created. Moving on..."))
            #expect(try await run(vagrant, project, ["halt"]).status == 0)
        }
    }

    // MARK: - package

    @Test func packageBaseMakesABoxOfTheProvisionedDisk() async throws {
        try await withFakeVagrant { fake, vagrant in
            fake.bootDelay = 0.1
            let scratch = try TempDirectory(prefix: "tworker-vagrant")
            defer { scratch.remove() }
            let box = scratch.path + "/base.box"
            try BoxBuilder.makeBox(at: box, files: ["etc/hostname": "box\n"], gzip: true)
            let project = try self.project(in: scratch.path, box: box, vmName: "tw-pkg",
                                      scripts: ["mkdir -p opt && echo provisioned > opt/stamp\n"])
            #expect(try await run(vagrant, project, ["up", "--provision"]).status == 0)
            let copied = try fake.bytesCopied()

            let output = project.directory + "/boxes/base.box"
            try FileManager.default.createDirectory(atPath: project.directory + "/boxes", withIntermediateDirectories: true)
            let package = try await run(vagrant, project, ["package", "--base", "tw-pkg", "--output", "boxes/base.box"])
            #expect(package.status == 0, "\(describe(package))")
            #expect(package.stdout.contains("Compressing package to: \(output)"))
            // Packaging halts the VM and clears its forwarded ports, as real vagrant does.
            #expect(try await fake.state(of: "tw-pkg") == "poweroff")
            #expect(!(try await fake.run(["showvminfo", "tw-pkg", "--machinereadable"]).stdout.contains("Forwarding(")))
            #expect(try fake.bytesCopied() == copied)

            let contents = try BoxBuilder.readBox(output)
            #expect(Set(contents.members) == ["metadata.json", "box.ovf", "box-disk001.vmdk", "Vagrantfile"])
            #expect(contents.texts["metadata.json"]?.contains("\"provider\": \"virtualbox\"") == true)
            #expect(contents.texts["box.ovf"]?.contains("ovf:href=\"box-disk001.vmdk\"") == true)
            #expect(contents.disk == ["etc/hostname": "box\n", "opt/stamp": "provisioned\n"])

            let exists = try await run(vagrant, project, ["package", "--base", "tw-pkg", "--output", "boxes/base.box"])
            #expect(exists.status == 1 && exists.stderr.contains("'base.box' to save the package as already exists"),
                    "\(describe(exists))")
            let ghost = try await run(vagrant, project, ["package", "--base", "ghost", "--output", "other.box"])
            #expect(ghost.status == 1 && ghost.stderr.contains("The base VM with the name 'ghost' was not found."))

            // The packaged box is a working box: add it and bring up a second machine from it.
            #expect(try await vagrant.run(["box", "add", "--name", "rebuilt", output]).status == 0)
            let second = try self.project(in: scratch.path, name: "second", box: "rebuilt", vmName: "tw-second")
            let up = try await run(vagrant, second, ["up"])
            #expect(up.status == 0, "\(describe(up))")
            #expect(try await fake.ssh(port: second.port, "cat opt/stamp").stdout == "provisioned\n")
        }
    }

    // MARK: - Locks and faults

    @Test func secondVagrantOnTheSameMachineIsLocked() async throws {
        try await withFakeVagrant { fake, vagrant in
            fake.bootDelay = 0.1
            let scratch = try TempDirectory(prefix: "tworker-vagrant")
            defer { scratch.remove() }
            let box = scratch.path + "/base.box"
            try BoxBuilder.makeBox(at: box, files: ["etc/hostname": "box\n"])
            let project = try self.project(in: scratch.path, box: box, vmName: "tw-lock", scripts: [
                "touch started\nfor i in $(seq 600); do [ -f release ] && exit 0; sleep 0.05; done\nexit 1\n",
            ])
            let first = Task { try await run(vagrant, project, ["up"]) }
            let started = await eventually(timeout: .seconds(60)) {
                guard let disk = try? await fake.diskDirectory(of: "tw-lock") else { return false }
                return FileManager.default.fileExists(atPath: disk + "/started")
            }
            #expect(started)
            let provision = try await run(vagrant, project, ["provision", "--machine-readable"])
            #expect(provision.status == 1)
            let last = FakeVagrant.machineReadable(provision.stdout).last ?? []
            #expect(last.count == 5 && last[2] == "error-exit" && last[3] == "Vagrant::Errors::MachineLocked", "\(describe(provision))")
            #expect(last.last?.hasPrefix(Self.locked) == true)
            let halt = try await run(vagrant, project, ["halt", "base"])
            #expect(halt.status == 1 && halt.stderr.contains(Self.locked) && halt.stderr.contains("Name: base\nProvider: virtualbox"),
                    "\(describe(halt))")
            #expect(try await fake.state(of: "tw-lock") == "running", "the locked halt must not have touched the VM")
            // Reading the state takes no lock.
            #expect(try await state(vagrant, project) == "running")

            let disk = try await fake.diskDirectory(of: "tw-lock")
            try "".write(toFile: disk + "/release", atomically: true, encoding: .utf8)
            let result = try await first.value
            #expect(result.status == 0, "\(describe(result))")
            #expect(try await run(vagrant, project, ["halt"]).status == 0)
        }
    }

    @Test func injectedFaultsAndTheCallLog() async throws {
        try await withFakeVagrant { fake, vagrant in
            fake.bootDelay = 0.1
            let scratch = try TempDirectory(prefix: "tworker-vagrant")
            defer { scratch.remove() }
            let box = scratch.path + "/base.box"
            try BoxBuilder.makeBox(at: box, files: ["etc/hostname": "box\n"])

            try vagrant.inject("box add", fault: .fail(1, message: "Injected box failure"))
            let failed = try await vagrant.run(["box", "add", "--name", "b", box])
            #expect(failed.status == 1 && failed.stderr == "Injected box failure\n", "\(describe(failed))")
            #expect(try await vagrant.run(["box", "add", "--name", "b", box]).status == 0)
            #expect(try vagrant.faults()["box add"]?.fail == 0)

            let project = try self.project(in: scratch.path, box: "b", vmName: "tw-fault")
            try vagrant.inject("up", fault: .fail(1, message: "up, broken", errorClass: "Vagrant::Errors::VMBootTimeout"))
            let up = try await run(vagrant, project, ["up", "--machine-readable"])
            #expect(up.status == 1)
            let errorExit = FakeVagrant.machineReadable(up.stdout).last ?? []
            #expect(Array(errorExit.dropFirst()) == ["", "error-exit", "Vagrant::Errors::VMBootTimeout", "up, broken"], "\(describe(up))")
            #expect(up.stdout.contains("up%!(VAGRANT_COMMA) broken"))

            // A VBoxManage failure surfaces as vagrant's VBoxManageError.
            try fake.inject("startvm", fault: .fail(1, message: "The VM session was aborted"))
            let vboxFailure = try await run(vagrant, project, ["up"])
            #expect(vboxFailure.status == 1)
            #expect(vboxFailure.stderr.contains("There was an error while executing `VBoxManage`, a CLI used by Vagrant"))
            #expect(vboxFailure.stderr.contains("Command: [\"startvm\""))
            #expect(vboxFailure.stderr.contains("VBoxManage: error: The VM session was aborted"), "\(describe(vboxFailure))")
            #expect(try await run(vagrant, project, ["up"]).status == 0)

            // A hang is the caller's to kill.
            try vagrant.inject("status", fault: .hang)
            await #expect(throws: FakeVBoxTimeout.self) {
                try await vagrant.run(["status"], cwd: project.directory, environment: project.environment, timeout: .seconds(1))
            }
            try vagrant.clearFaults()

            let records = try vagrant.callRecords()
            #expect(records.map(\.argv) == [["box", "add", "--name", "b", box], ["box", "add", "--name", "b", box],
                                            ["up", "--machine-readable"], ["up"], ["up"]])
            #expect(records.map(\.exit) == [1, 0, 1, 1, 0])
            #expect(records.allSatisfy { $0.durationMs >= 0 && $0.pid > 0 })
            #expect(records.last?.cwd == project.directory)
        }
    }

    // MARK: - The real vagrant, when installed

    @Test(.enabled(if: FakeVagrant.realVagrant != nil, "real vagrant is not installed"))
    func realVagrantAgreesOnBoxes() async throws {
        let real = try #require(FakeVagrant.realVagrant)
        let scratch = try TempDirectory(prefix: "tworker-realvagrant")
        defer { scratch.remove() }
        let box = scratch.path + "/t.box"
        try BoxBuilder.makeBox(at: box, files: ["etc/hostname": "box\n"], gzip: true)
        var environment = ProcessInfo.processInfo.environment
        environment["VAGRANT_HOME"] = scratch.path + "/vagrant.d"
        environment["VAGRANT_CHECKPOINT_DISABLE"] = "1"
        func vagrant(_ args: [String]) async throws -> Result {
            try await FakeVagrant.run(real, args, cwd: scratch.path, environment: environment, scratch: scratch.path,
                                      timeout: .seconds(300))
        }
        let add = try await vagrant(["box", "add", "--name", "t", box])
        #expect(add.status == 0, "\(describe(add))")
        #expect(FileManager.default.fileExists(atPath: scratch.path + "/vagrant.d/boxes/t/0/virtualbox/metadata.json"),
                "the fake's box layout differs from the real vagrant's")
        let again = try await vagrant(["box", "add", "--name", "t", box])
        #expect(again.status == 1 && (again.stdout + again.stderr).contains("The box you're attempting to add already exists"))
        let list = try await vagrant(["box", "list"])
        #expect(list.status == 0 && list.stdout.contains("t (virtualbox, 0)"), "\(describe(list))")
        let machine = FakeVagrant.machineReadable(try await vagrant(["box", "list", "--machine-readable"]).stdout)
        #expect(machine.contains { $0.count >= 4 && $0[2] == "box-name" && $0[3] == "t" })
        let remove = try await vagrant(["box", "remove", "t"])
        #expect(remove.status == 0, "\(describe(remove))")
        #expect(try await vagrant(["box", "list"]).stdout.contains("There are no installed boxes!"))
    }
}
