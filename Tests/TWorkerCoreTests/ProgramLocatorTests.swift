import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// Real files in a temp directory: executable, not executable, directories of the same name.
struct ProgramLocatorTests {
    func withBins(_ body: (String) throws -> Void) throws {
        let directory = try TempDirectory(prefix: "tworker-locator")
        defer { directory.remove() }
        try body(directory.path)
    }

    func makeFile(_ path: String, executable: Bool = true) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try "#!/bin/sh\nexit 0\n".write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, executable ? 0o755 : 0o644)
    }

    @Test func aBareNameIsTheFirstExecutableOnPATHInOrder() throws {
        try withBins { root in
            try makeFile(root + "/a/VBoxManage")
            try makeFile(root + "/b/VBoxManage")
            let locator = ProgramLocator(searchPath: "\(root)/a:\(root)/b")
            #expect(try locator.locate(.vboxmanage("VBoxManage")) == root + "/a/VBoxManage")
            let reversed = ProgramLocator(searchPath: "\(root)/b:\(root)/a")
            #expect(try reversed.locate(.vboxmanage("VBoxManage")) == root + "/b/VBoxManage")
        }
    }

    @Test func nonExecutableFilesAndDirectoriesAreSkipped() throws {
        try withBins { root in
            try makeFile(root + "/plain/vagrant", executable: false)
            try FileManager.default.createDirectory(atPath: root + "/dir/vagrant", withIntermediateDirectories: true)
            try makeFile(root + "/real/vagrant")
            let locator = ProgramLocator(searchPath: "\(root)/plain:\(root)/dir:\(root)/missing:\(root)/real")
            #expect(try locator.locate(.vagrant("vagrant")) == root + "/real/vagrant")
        }
    }

    @Test func emptyPATHEntriesAreSkippedNotTheCurrentDirectory() throws {
        #expect(ProgramLocator(searchPath: ":/usr/bin::/bin:").directories == ["/usr/bin", "/bin"])
        #expect(ProgramLocator(searchPath: "").directories.isEmpty)
        let error = #expect(throws: ProgramNotFound.self) { try ProgramLocator(searchPath: "").locate(.bash()) }
        #expect(error?.description == "bash not found on PATH (); install bash")
    }

    @Test func aNameWithASlashIsUsedAsItIs() throws {
        try withBins { root in
            try makeFile(root + "/opt/VBoxManage")
            let locator = ProgramLocator(searchPath: "")
            #expect(try locator.locate(.vboxmanage(root + "/opt/VBoxManage")) == root + "/opt/VBoxManage")
            // Never looked up on PATH, even when PATH has one of that name.
            try makeFile(root + "/bin/VBoxManage")
            let missing = Program.vboxmanage(root + "/nowhere/VBoxManage")
            let error = #expect(throws: ProgramNotFound.self) { try ProgramLocator(searchPath: root + "/bin").locate(missing) }
            #expect(error?.description == "\(root)/nowhere/VBoxManage not found or not executable; install VirtualBox or set virtualbox.vboxmanage")
            try makeFile(root + "/opt/notexec", executable: false)
            #expect(throws: ProgramNotFound.self) { try locator.locate(.vboxmanage(root + "/opt/notexec")) }
        }
    }

    @Test func aMissingProgramIsOneLineNamingItsKey() throws {
        let locator = ProgramLocator(searchPath: "/nonexistent/tworker-a:/nonexistent/tworker-b")
        let cases: [(Program, String)] = [
            (.vboxmanage("VBoxManage"), "VBoxManage not found on PATH (/nonexistent/tworker-a:/nonexistent/tworker-b); install VirtualBox or set virtualbox.vboxmanage"),
            (.vagrant("vagrant"), "vagrant not found on PATH (/nonexistent/tworker-a:/nonexistent/tworker-b); install Vagrant or set vagrant.vagrant"),
            (.ssh, "ssh not found on PATH (/nonexistent/tworker-a:/nonexistent/tworker-b); install the ssh client (openssh-client)"),
            (.redisServer, "redis-server not found on PATH (/nonexistent/tworker-a:/nonexistent/tworker-b); install redis-server or set redis.url to an existing server"),
            (.git, "git not found on PATH (/nonexistent/tworker-a:/nonexistent/tworker-b); install git"),
            (.bash(), "bash not found on PATH (/nonexistent/tworker-a:/nonexistent/tworker-b); install bash"),
        ]
        for (program, line) in cases {
            let error = #expect(throws: ProgramNotFound.self) { try locator.locate(program) }
            #expect(error?.description == line)
        }
    }

    @Test func anUnsetPATHSearchesAShellsDefault() throws {
        #expect(ProgramLocator(searchPath: nil).searchPath == "/usr/local/bin:/usr/bin:/bin")
        #expect(try ProgramLocator(searchPath: nil).locate(.bash()).hasSuffix("/bash"))
    }

    @Test func checkNamesTheFirstMissingProgram() throws {
        try withBins { root in
            try makeFile(root + "/ssh")
            let locator = ProgramLocator(searchPath: root)
            try locator.check([.ssh])
            let error = #expect(throws: ProgramNotFound.self) { try locator.check([.ssh, .vboxmanage("VBoxManage"), .git]) }
            #expect(error?.program.name == "VBoxManage")
        }
    }

    @Test func eachProviderNeedsItsPrograms() throws {
        var config = WorkerConfig.defaults(env: "test")
        config.provider = .virtualbox
        config.virtualbox.vboxmanage = "/opt/vbox/VBoxManage"
        #expect(Program.forWorkers(config).map(\.name) == ["/opt/vbox/VBoxManage", "ssh"])
        #expect(Program.forLifecycle(config, provisioning: true, buildingBox: true).map(\.name) == ["/opt/vbox/VBoxManage", "ssh", "vagrant"])
        config.provider = .local
        #expect(Program.forWorkers(config).map(\.name) == ["bash"])
    }

    @Test func startChecksRedisServerOnlyForTheEmbeddedRedis() {
        var config = WorkerConfig.defaults(env: "test")
        config.provider = .local
        config.redis.url = "embedded"
        #expect(Program.forStart(config).map(\.name) == ["bash", "redis-server"])
        #expect(Program.forStart(config).last?.remedy == "install redis-server or set redis.url to an existing server")
        config.redis.url = "redis://127.0.0.1:6379"
        #expect(Program.forStart(config).map(\.name) == ["bash"])
    }

    @Test func tarIsNeededWhereABoxFileIsUnpackedIntoTheBase() throws {
        try withBins { root in
            var config = WorkerConfig.defaults(env: "test")
            config.provider = .virtualbox
            config.vms.baseBox = root + "/base.box"
            try makeFile(config.vms.baseBox, executable: false)
            #expect(Program.forLifecycle(config, importingBase: true).map(\.name) == ["VBoxManage", "tar"])
            #expect(Program.forLifecycle(config).map(\.name) == ["VBoxManage"], "status and remove unpack nothing")
            // A box added to vagrant is read where vagrant put it, unpacked already.
            config.vms.baseBox = "debian/bookworm64"
            #expect(Program.forLifecycle(config, importingBase: true).map(\.name) == ["VBoxManage"])
            // The box vagrant builds is a file, unpacked next.
            #expect(Program.forLifecycle(config, buildingBox: true, importingBase: true).map(\.name) == ["VBoxManage", "vagrant", "tar"])
            config.provider = .qemu
            #expect(Program.forLifecycle(config, importingBase: true).map(\.name) == ["qemu-system-x86_64", "qemu-img", "ssh"])
        }
    }
}
