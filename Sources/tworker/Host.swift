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
        (redis.url or redis.sentinels and redis.master_name, vms.count), installs the release, runs `tworker vagrant import` and \
        `tworker service install --systemd`, and starts tworker. Every later boot: \
        tworker-update.service installs the newest release (when it changed) before tworker starts. \
        A release is a tarball made by scripts/release: an absolute PATH on the VM, or an http(s) URL \
        fetched with curl. The VM's provider programs (VirtualBox and vagrant, or qemu) and base box \
        come with its image. Defaults come from this config (redis.url, redis.sentinels, redis.master_name, vms.count). Exit codes: \
        0 printed; 64 bad input; 78 configuration error.
        """
    )

    @OptionGroup var global: GlobalOptions

    @Option(name: .customLong("redis-url"), help: "The shared Redis the host joins (default: this config's redis.url).")
    var redisURL: String?

    @Option(name: .customLong("sentinel"), help: "A Redis Sentinel (host:port) the host finds the master through; repeat for each (default: this config's redis.sentinels).")
    var sentinels: [String] = []

    @Option(name: .customLong("master-name"), help: "The name the sentinels monitor the master under (default: this config's redis.master_name).")
    var masterName: String?

    @Option(help: "Worker VMs on the host, 1..64 (default: this config's vms.count).")
    var vms: Int?

    @Option(help: "The newest release: an absolute path of a release tarball on the VM, or an http(s) URL.")
    var release: String

    @Option(name: .customLong("host-env"), help: "The environment the host runs (worker.<env>.yml from the release).")
    var hostEnv = "production"

    func run() async throws {
        let config = try global.load().config
        do {
            // The Redis given on the command line, or else this config's (URL or sentinels).
            let useConfigSentinels = sentinels.isEmpty && masterName == nil && redisURL == nil
            let userData = try CloudInit(redisURL: redisURL ?? config.redis.url, vms: vms ?? config.vms.count,
                                         release: try ReleaseSource(release), env: hostEnv,
                                         sentinels: useConfigSentinels ? config.redis.sentinels : sentinels,
                                         masterName: useConfigSentinels ? config.redis.masterName : masterName)
            print(userData.userData, terminator: "")
        } catch {
            printError("\(error)")
            throw ExitCode(64)
        }
    }
}
