import ArgumentParser
import Foundation
import TWorkerCore

struct Hosts: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every host sharing the Redis: state, version, master pid, workers by state, running jobs, last heartbeat, drain.",
        discussion: """
        Read from Redis alone, so it works from any machine with the Redis config. A host whose \
        master stopped or died shows `gone` with its last heartbeat for 24 hours, then is forgotten.
        """
    )

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Print JSON (what GET /api/hosts answers).")
    var json = false

    func run() async throws {
        let config = try global.load().config
        let hosts = try await reportingFailures {
            let redis = try lookupConnection(config)
            defer { redis.close() }
            return try await FleetView.read(redis: redis)
        }
        print(json ? try FleetView.json(hosts, pretty: true) : FleetView.render(hosts))
    }
}
