import Foundation
import RedisClient
import Synchronization
import Testing
import TWorkerCore
import TWorkerTestSupport

/// Issue 9: Redis restarted with its append-only file answers `LOADING` for a while; the
/// workers writing meanwhile must lose no log line and record every build's end exactly once.
@Suite(.tags(.endToEnd), .serialized)
struct RedisRestartTests {
    /// Filler keys in the AOF's base file; each costs `keyLoadDelay` µs (plus the sleep's own
    /// overhead) when loaded, so loading after a restart takes a few seconds.
    static let fillerKeys = 15_000
    static let keyLoadDelay = 100
    static let lines = 80

    /// Events are processed (and `LOADING` answered) every KiB loaded, not every 2 MiB, so
    /// clients see the loading phase instead of a server that does not answer.
    static let redisArguments = ["--key-load-delay", String(keyLoadDelay), "--loading-process-events-interval-bytes", "1024"]

    /// Restarted after line 15, the builds write their middle through the load; after line 72,
    /// their last lines too; after line 80, with every line written, their quiet end comes
    /// during the load, so the transaction recording it meets LOADING (EXECABORT).
    @Test(arguments: [15, 72, 80])
    func buildsWritingThroughALongAOFLoadKeepEveryLineAndRunOnce(restartAfterLine: Int) async throws {
        try await TestHost.with(appendonly: true, redisArguments: Self.redisArguments) { host in
            try await fillAppendOnlyFile(host)
            let script = ["for i in $(seq 1 \(Self.lines)); do echo \"tick $i\"; sleep 0.1; done; sleep 1.5"]
            let jobs = [try await host.push(script: script), try await host.push(script: script)]
            let workers = [try host.spawnWorker(vm: "worker-1"), try host.spawnWorker(vm: "worker-2")]
            // A failed expectation below must not leave a worker running.
            defer { for worker in workers where !processIsGone(worker.pid) { kill(-worker.pid, SIGKILL) } }

            // Restart once both builds reached the line, so both write through the load.
            let reached = try await eventually(timeout: .seconds(20)) {
                for id in jobs where try await !host.log(id).text.contains("tick \(restartAfterLine)\n") { return false }
                return true
            }
            #expect(reached, "both builds under way:\n\(workers.map(\.output).joined(separator: "\n"))")

            let probe = LoadingProbe(endpoint: host.redisServer.endpoint)
            let probing = Task { await probe.run() }
            try await host.redisServer.restart()
            probing.cancel()
            await probing.value
            // The test's own connection died with the server; its first command reconnects.
            _ = try? await host.redis.send(["PING"])
            let loading = probe.loading
            let logLine = host.redisServer.logTail(lines: 40).split(separator: "\n").last { $0.contains("DB loaded from append only file") }
            print("RedisRestartTests: \(loading.replies) LOADING replies over \(loading.span); \(logLine ?? "no load line")")
            #expect(loading.replies >= 10, "the server answered LOADING for a while: \(loading.replies) replies")
            #expect(loading.span >= .seconds(1), "LOADING lasted \(loading.span)")

            let finished = try await eventually(timeout: .seconds(60)) {
                for id in jobs where JobState(rawValue: try await host.record(id)["state"] ?? "")?.isFinal != true { return false }
                return true
            }
            let outputs = workers.map(\.output).joined(separator: "\n---\n")
            #expect(finished, "both jobs ended:\n\(outputs)")

            for id in jobs {
                let record = try await host.record(id)
                #expect(record["state"] == "passed", "\(record)")
                #expect(record["attempts"] == "1", "the build ran once: \(record)")
                #expect(record["exit_code"] == "0", "\(record)")
                #expect(try await host.events(for: id) == ["job:received", "job:started", "job:finished"])
                let log = try await host.log(id)
                #expect(log.isFinal)
                #expect(log.numbers == Array(1...log.entries.count), "entries numbered without gap or repeat: \(log.numbers)")
                let ticks = log.text.split(separator: "\n").compactMap { line in
                    line.hasPrefix("tick ") ? Int(line.dropFirst(5)) : nil
                }
                #expect(ticks == Array(1...Self.lines), "every line once, in order: \(ticks)")
                #expect(log.text.components(separatedBy: "Done. Your build exited with 0 (passed).").count == 2, "\(log.text)")
            }
            #expect(try await host.int(["GET", "resque:stat:processed"]) == 2)
            #expect(try await host.int(["LLEN", "resque:queue:builds"]) == 0)
            for vm in ["worker-1", "worker-2"] {
                #expect(try await host.int(["LLEN", host.keys.processing(vm: vm)]) == 0)
            }
            // Neither worker gave up on Redis: both are still serving, and stop cleanly.
            for worker in workers {
                #expect(await worker.waitForExit(timeout: .milliseconds(1)) == nil, "worker exited early:\n\(worker.output)")
                worker.signal(SIGTERM)
                #expect(await worker.waitForExit(timeout: .seconds(15)) == 0, "\(worker.output)")
            }
        }
    }

    /// Puts `fillerKeys` keys into the AOF's base file (DEBUG POPULATE is not logged to the AOF
    /// itself, a rewrite writes them) and waits for the rewrite to finish.
    private func fillAppendOnlyFile(_ host: TestHost) async throws {
        _ = try await host.redis.send(["DEBUG", "POPULATE", String(Self.fillerKeys), "filler", "16"])
        _ = try await host.redis.send(["BGREWRITEAOF"])
        let rewritten = try await eventually(timeout: .seconds(30)) {
            let info = try await host.redis.send(["INFO", "persistence"]).string ?? ""
            return info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
                && info.contains("aof_last_bgrewrite_status:ok")
        }
        #expect(rewritten, "the AOF rewrite finished")
    }
}

/// PINGs the server from its own connection every 20 ms, counting `LOADING` replies and the
/// time from the first to the last, so the test knows the loading phase really happened.
private final class LoadingProbe: Sendable {
    let connection: RedisConnection
    private let state = Mutex<(replies: Int, first: ContinuousClock.Instant?, last: ContinuousClock.Instant?)>((0, nil, nil))

    init(endpoint: RedisEndpoint) {
        connection = RedisConnection(endpoint: endpoint, connectTimeout: .milliseconds(500), commandTimeout: .seconds(2))
    }

    deinit { connection.close() }

    var loading: (replies: Int, span: Duration) {
        state.withLock { state in
            guard let first = state.first, let last = state.last else { return (state.replies, .zero) }
            return (state.replies, last - first)
        }
    }

    func run() async {
        while !Task.isCancelled {
            do {
                _ = try await connection.send(["PING"])
            } catch RedisError.server(let message) where RedisError.code(of: message) == "LOADING" {
                let now = ContinuousClock.now
                state.withLock { state in
                    state.replies += 1
                    state.first = state.first ?? now
                    state.last = now
                }
            } catch {
                // Refused while the server is down, or cancelled: not loading.
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}
