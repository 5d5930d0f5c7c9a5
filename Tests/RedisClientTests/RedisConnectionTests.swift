import RedisClient
import Testing
import TWorkerTestSupport

@Suite("RedisConnection against redis-server")
struct RedisConnectionTests {
    @Test func setGetIsBinarySafe() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            let key: [UInt8] = Array("bin\0key\r\n".utf8)
            let value: [UInt8] = [0, 13, 10, 255, 0, 36, 13, 10, 42] + Array("\r\n$3\r\nend".utf8)
            #expect(try await redis.send(bytes: [Array("SET".utf8), key, value]) == .status("OK"))
            #expect(try await redis.send(bytes: [Array("GET".utf8), key]) == .bulk(value))
            #expect(try await redis.send(bytes: [Array("STRLEN".utf8), key]) == .integer(Int64(value.count)))
            // The empty string is a value, a missing key is null.
            #expect(try await redis.send("SET", "empty", "") == .status("OK"))
            #expect(try await redis.send("GET", "empty") == .bulk([]))
            #expect(try await redis.send("GET", "missing").isNull)
        }
    }

    @Test func pipelinesAThousandCommandsInOneCall() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            let commands = (0..<1000).map { ["RPUSH", "list", "item-\($0)"] }
            let replies = try await redis.pipeline(commands)
            #expect(replies == (1...1000).map { RedisReply.integer(Int64($0)) })
            let range = try await redis.send("LRANGE", "list", "998", "-1")
            #expect(range.array?.compactMap(\.string) == ["item-998", "item-999"])
            #expect(try await redis.pipeline([[String]]()) == [])
        }
    }

    @Test func pipelineReturnsErrorRepliesInPlace() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            let replies = try await redis.pipeline([["SET", "s", "x"], ["LPUSH", "s", "y"], ["GET", "s"]])
            #expect(replies.count == 3)
            #expect(replies[0] == .status("OK"))
            guard case let .error(message) = replies[1] else {
                Issue.record("expected an error reply, got \(replies[1])")
                return
            }
            #expect(message.hasPrefix("WRONGTYPE"))
            #expect(replies[2] == .bulk(Array("x".utf8)))
        }
    }

    @Test func multiExecThroughPipeline() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            let replies = try await redis.pipeline([
                ["MULTI"], ["INCR", "n"], ["INCRBY", "n", "10"], ["GET", "n"], ["EXEC"],
            ])
            #expect(replies.count == 5)
            #expect(replies[0] == .status("OK"))
            #expect(replies[1...3].allSatisfy { $0 == .status("QUEUED") })
            #expect(replies[4] == .array([.integer(1), .integer(11), .bulk(Array("11".utf8))]))
        }
    }

    @Test func serverErrorThrowsServer() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            _ = try await redis.send("SET", "s", "x")
            do {
                _ = try await redis.send("LPUSH", "s", "y")
                Issue.record("LPUSH on a string should fail")
            } catch let error as RedisError {
                guard case let .server(message) = error else {
                    Issue.record("expected .server, got \(error)")
                    return
                }
                #expect(message.hasPrefix("WRONGTYPE"))
                #expect(!error.isConnectionError)
            }
            // The connection is still fine after an error reply.
            #expect(try await redis.send("GET", "s") == .bulk(Array("x".utf8)))
            await #expect(throws: RedisError.self) { try await redis.send([String]()) }
        }
    }

    @Test func authWithPassword() async throws {
        try await withRedisServer(password: "p@ss w:rd") { server async throws in
            let endpoint = try RedisEndpoint(url: server.url)
            #expect(endpoint.password == "p@ss w:rd")
            let redis = RedisConnection(endpoint: endpoint)
            defer { redis.close() }
            #expect(try await redis.send("PING") == .status("PONG"))

            var wrong = endpoint
            wrong.password = "nope"
            let bad = RedisConnection(endpoint: wrong)
            defer { bad.close() }
            await #expect {
                try await bad.send("PING")
            } throws: { error in
                guard case let .connectionFailed(message) = error as? RedisError else { return false }
                return message.contains("AUTH rejected") && !message.contains("nope")
            }

            let anonymous = RedisConnection(endpoint: RedisEndpoint(address: endpoint.address))
            defer { anonymous.close() }
            await #expect(throws: RedisError.self) { try await anonymous.send("GET", "x") }
        }
    }

    @Test func selectsTheDatabase() async throws {
        try await withRedisServer { server async throws in
            let db3 = RedisConnection(endpoint: try RedisEndpoint(url: server.url + "/3"))
            let db0 = RedisConnection(endpoint: try RedisEndpoint(url: server.url))
            defer {
                db3.close()
                db0.close()
            }
            _ = try await db3.send("SET", "only-in-3", "yes")
            #expect(try await db3.send("GET", "only-in-3") == .bulk(Array("yes".utf8)))
            #expect(try await db0.send("GET", "only-in-3").isNull)
            #expect(try await db0.send("DBSIZE") == .integer(0))
            let client = try await db3.send("CLIENT", "INFO").string ?? ""
            #expect(client.contains("db=3"))
        }
    }

    @Test func worksOverUnixSocket() async throws {
        try await withRedisServer(password: "sock") { server async throws in
            let redis = RedisConnection(endpoint: try RedisEndpoint(url: server.unixURL + "&db=2"))
            defer { redis.close() }
            _ = try await redis.send("SET", "k", "v")
            let client = try await redis.send("CLIENT", "INFO").string ?? ""
            #expect(client.contains("db=2"))
            // Unix-socket clients have no peer address; redis reports addr=/path:0.
            #expect(client.contains("addr=\(server.socketPath)"))
        }
    }

    @Test func concurrentCallersGetTheirOwnReplies() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<200 {
                    group.addTask {
                        let reply = try await redis.send("ECHO", "message-\(index)")
                        #expect(reply.string == "message-\(index)")
                    }
                }
                try await group.waitForAll()
            }
        }
    }
}
