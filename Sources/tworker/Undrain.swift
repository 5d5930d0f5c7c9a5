import ArgumentParser
import Foundation
import TWorkerCore

struct Undrain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "End a host's drain: its workers take jobs again.",
        discussion: """
        Removes tworker:drain:<host> (--all: every drain key). Undraining a host that is not \
        drained is not an error. Exit codes: 0 done; 1 Redis unreachable; 64 usage error.
        """
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The host, as `tworker hosts` lists it.")
    var hosts: [String] = []

    @Flag(help: "Undrain every drained host.")
    var all = false

    func validate() throws {
        try validateHostSelection(hosts, all: all)
    }

    func run() async throws {
        let config = try global.load().config
        try await reportingFailures {
            let redis = try lookupConnection(config)
            defer { redis.close() }
            let done = try await FleetDrain(redis: redis).undrain(hosts, all: all)
            print(done.isEmpty ? "no host is drained" : "undrained \(done.joined(separator: ", ")): workers take jobs again")
        }
    }
}
