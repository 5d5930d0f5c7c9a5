import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

@Suite(.tags(.endToEnd))
struct ResqueCompatibilityTests {
    @Test func aJobPushedByAPlainResqueClientRuns() async throws {
        try await TestHost.with { host in
            // What Resque.enqueue does: SADD resque:queues, RPUSH resque:queue:<q> with {"class","args"}.
            _ = try await host.redis.send(["SADD", "resque:queues", "builds"])
            _ = try await host.redis.send(["RPUSH", "resque:queue:builds", #"{"class":"Travis::Build","args":[{"id":4711,"config":{"script":"echo from-resque"}}]}"#])
            try await host.runBurst()
            #expect(try await host.record("4711")["state"] == "passed")
            #expect(try await host.log("4711").text.contains("from-resque"))
            #expect(try await host.int(["GET", "resque:stat:processed"]) == 1)
        }
    }

    @Test func malformedJobsGoToTheFailedQueueAndTheWorkerCarriesOn() async throws {
        try await TestHost.with { host in
            let malformed = [
                "this is not json",
                #"{"class":"X","args":[{"id":"has space","config":{"script":"true"}}]}"#,
                #"{"class":"X","args":[{"id":"bad-slug","repository":{"slug":"a;rm -rf /","source_url":"x"},"commit":"abcdef0","branch":"main"}]}"#,
                #"{"class":"X"}"#,
            ]
            for entry in malformed { try await host.push(entry) }
            let good = try await host.push(script: ["echo still-working"])
            try await host.runBurst()

            #expect(try await host.record(good)["state"] == "passed")
            #expect(try await host.int(["GET", "resque:stat:failed"]) == 4)
            #expect(try await host.int(["LLEN", host.keys.processing(vm: "worker-1")]) == 0)
            let failures = try await host.redis.send(["LRANGE", "resque:failed", "0", "-1"]).array ?? []
            #expect(failures.count == 4)
            for (index, failure) in failures.enumerated() {
                guard case .object(let object)? = try? JSONValue.parse(Array((failure.string ?? "").utf8)) else {
                    Issue.record("failure \(index) is not a JSON object")
                    continue
                }
                #expect(Set(object.keys) == ["failed_at", "payload", "exception", "error", "backtrace", "worker", "queue"])
                #expect(object["worker"] == .string("testhost:worker-1"))
                #expect(object["queue"] == .string("builds"))
            }
            let first = String(describing: failures.first?.string ?? "")
            #expect(first.contains("MalformedJSON"))
            let second = failures[1].string ?? ""
            #expect(second.contains("InvalidPayload"))
            #expect(second.contains("id"))
            #expect(try await host.record("bad-slug")["state"] == "errored")
            #expect(try await host.record("bad-slug")["error"]?.contains("slug") == true)
        }
    }
}
