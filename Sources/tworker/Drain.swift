import ArgumentParser
import Foundation
import TWorkerCore

struct Drain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Drain a host: its workers finish their running jobs and take no new ones.",
        discussion: """
        Sets tworker:drain:<host> in Redis, so it works from any machine with the Redis config and \
        outlasts a restart of the host's master; `tworker undrain HOST` ends it. It returns once every \
        idle worker there shows `draining` (up to 10 s), so no job starts there afterwards. The host's master \
        says so in `status`, `/health` (503, "host drained") and `tworker hosts`. --wait blocks \
        until no job runs on the host(s) and none can start ("drain, wait, reboot"). Exit codes: \
        0 done; 1 unknown host (without --force), Redis unreachable, or --wait timed out; 64 usage error.
        """
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The host, as `tworker hosts` lists it (its config's `host`).")
    var hosts: [String] = []

    @Flag(help: "Drain every host `tworker hosts` lists.")
    var all = false

    @Flag(help: "Drain a host this Redis does not know (yet): it starts drained.")
    var force = false

    @Flag(help: "Wait until no job runs on the host(s) and no worker can take one.")
    var wait = false

    @Option(help: "With --wait: give up after this many seconds (default: this config's timeouts.hard_limit + 60).")
    var timeout: Int?

    func validate() throws {
        try validateHostSelection(hosts, all: all)
        if timeout != nil && !wait { throw ValidationError("--timeout goes with --wait.") }
        if let timeout, timeout <= 0 { throw ValidationError("--timeout must be a positive number of seconds, got \(timeout).") }
    }

    func run() async throws {
        let config = try global.load().config
        try await reportingFailures {
            let redis = try lookupConnection(config)
            defer { redis.close() }
            let drain = FleetDrain(redis: redis)
            let targets = try await drain.resolve(hosts, all: all, force: force)
            guard !targets.isEmpty else {
                print("no hosts on this Redis: nothing to drain")
                return
            }
            try await drain.drain(targets)
            // Returning only once no worker there is idle means no job starts there after this command.
            let unacknowledged = try await drain.waitForAcknowledgement(of: targets)
            for host in unacknowledged {
                printError("warning: workers of \(host) still say idle 10 s after the drain; do they run a tworker that knows drains (`tworker hosts` shows versions)?")
            }
            print("drained \(targets.joined(separator: ", ")): running jobs finish, no new ones start")
            guard wait else { return }
            let limit = timeout ?? (config.timeouts.hardLimit + 60)
            try await drain.wait(for: targets, timeout: .seconds(limit)) { pending in
                for host in pending where !host.runningJobs.isEmpty {
                    print("waiting for \(host.host): running \(host.runningJobs.joined(separator: ", "))")
                }
            }
            print("no job runs on \(targets.joined(separator: ", ")) and none can start")
        }
    }
}

/// HOST... or --all, never both, never neither.
func validateHostSelection(_ hosts: [String], all: Bool) throws {
    if all && !hosts.isEmpty { throw ValidationError("Name hosts or use --all, not both.") }
    if !all && hosts.isEmpty { throw ValidationError("Name a host (see `tworker hosts`) or use --all.") }
    for host in hosts where host.isEmpty || host.contains(where: { $0.isWhitespace || $0 == "*" }) {
        throw ValidationError("'\(host)' is not a host name.")
    }
}
