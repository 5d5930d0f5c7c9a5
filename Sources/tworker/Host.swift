import ArgumentParser
import Foundation
import TWorkerCore

struct Host: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "host",
        abstract: "Set up new tworker hosts.",
        subcommands: [HostCloudInit.self]
    )
}

struct HostCloudInit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cloud-init",
        abstract: "Print cloud-init user data (#cloud-config) that makes a fresh Debian/Ubuntu VM a tworker host.",
        discussion: """
        First boot: installs packages, creates the `tworker` account, writes /etc/tworker/worker.yml \
        (redis.url, vms.count), installs the release, runs `tworker vagrant import` and \
        `tworker service install --systemd`, and starts tworker. Every later boot: \
        tworker-update.service installs the newest release (when it changed) before tworker starts. \
        A release is a tarball made by scripts/release: an absolute PATH on the VM, or an http(s) URL \
        fetched with curl. The VM's provider programs (VirtualBox and vagrant, or qemu) and base box \
        come with its image. Defaults come from this config (redis.url, vms.count). Exit codes: \
        0 printed; 64 bad input; 78 configuration error.
        """
    )

    @OptionGroup var global: GlobalOptions

    @Option(name: .customLong("redis-url"), help: "The shared Redis the host joins (default: this config's redis.url).")
    var redisURL: String?

    @Option(help: "Worker VMs on the host, 1..64 (default: this config's vms.count).")
    var vms: Int?

    @Option(help: "The newest release: an absolute path of a release tarball on the VM, or an http(s) URL.")
    var release: String

    @Option(name: .customLong("host-env"), help: "The environment the host runs (worker.<env>.yml from the release).")
    var hostEnv = "production"

    func run() async throws {
        let config = try global.load().config
        do {
            let userData = try CloudInit(redisURL: redisURL ?? config.redis.url, vms: vms ?? config.vms.count,
                                         release: try ReleaseSource(release), env: hostEnv)
            print(userData.userData, terminator: "")
        } catch {
            printError("\(error)")
            throw ExitCode(64)
        }
    }
}
