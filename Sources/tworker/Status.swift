import ArgumentParser
import Foundation
import RedisClient
import TWorkerCore

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the master, its workers (state, pid, job, jobs done, RSS), queue depths and the failed count.",
        discussion: "Without a running master, what Redis knows: every registered worker's heartbeat."
    )

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let config = try global.load().config
        let paths = MasterPaths(stateDir: config.stateDir)
        var report: StatusReport?
        do {
            let response = try ControlClient.send(ControlRequest(command: .status), path: paths.socket)
            guard response.ok, let status = response.status else {
                printError(response.error ?? "the master sent no status")
                throw ExitCode.failure
            }
            report = status
        } catch ControlClient.Failure.noMaster {
            report = nil
        } catch let error as ControlClient.Failure {
            printError(error.description)
            throw ExitCode.failure
        }
        if report == nil { report = try await reportingFailures { try await Self.fromRedis(config) } }
        guard let report else { return }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(report.render())
        }
    }

    /// Reads Redis directly; never starts the embedded server just to look.
    static func fromRedis(_ config: WorkerConfig) async throws -> StatusReport {
        let redis = try lookupConnection(config)
        defer { redis.close() }
        return try await StatusReport.fromRedis(keys: RedisKeys(namespace: config.redis.namespace, host: config.host), redis: redis)
    }
}

/// A connection to the config's Redis for a command that only looks or flips a key (`status`
/// without a master, `hosts`, `drain`): it never starts the embedded server.
func lookupConnection(_ config: WorkerConfig) throws -> RedisConnection {
    let endpoint: RedisEndpoint
    if let external = try RedisSetup.externalEndpoint(config) {
        // redis.url, or with redis.sentinels the master they name.
        endpoint = external
    } else {
        let socket = EmbeddedRedis.socketPath(stateDir: config.stateDir)
        guard FileManager.default.fileExists(atPath: socket) else {
            throw ControlClient.Failure.failed("no master running on this host, and the embedded redis-server is not running (\(socket)): nothing to show")
        }
        endpoint = try RedisEndpoint(url: "unix://" + socket)
    }
    return RedisConnection(endpoint: endpoint, connectTimeout: .seconds(2), commandTimeout: .seconds(5))
}

/// One request to the master over its control socket, failures as one line and exit 1.
enum ControlCall {
    static func send(_ global: GlobalOptions, _ request: ControlRequest) throws -> (ControlResponse, MasterPaths) {
        let config = try global.load().config
        let paths = MasterPaths(stateDir: config.stateDir)
        let response: ControlResponse
        do {
            response = try ControlClient.send(request, path: paths.socket)
        } catch {
            printError(error.description)
            throw ExitCode.failure
        }
        guard response.ok else {
            printError(response.error ?? "the master refused")
            throw ExitCode.failure
        }
        return (response, paths)
    }
}
