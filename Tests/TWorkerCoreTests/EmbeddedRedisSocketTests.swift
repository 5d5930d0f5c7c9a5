import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// Which `redis.url` is `state_dir`'s embedded socket (its users join the server instead of
/// treating it as a Redis of someone else's), however the path is spelled.
struct EmbeddedRedisSocketTests {
    @Test func theSameSocketIsRecognisedThroughSymlinksAndRelativePaths() throws {
        let directory = try TempDirectory(prefix: "tworker-socket")
        defer { directory.remove() }
        let stateDir = directory.path + "/var"
        try FileManager.default.createDirectory(atPath: stateDir + "/redis", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory.path + "/other/redis", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: directory.path + "/link", withDestinationPath: stateDir)
        let socket = stateDir + "/redis/redis.sock"
        #expect(EmbeddedRedis.socketPath(stateDir: stateDir) == socket)
        #expect(EmbeddedRedis.isSocket(socket, ofStateDir: stateDir))
        #expect(EmbeddedRedis.isSocket(directory.path + "/link/redis/redis.sock", ofStateDir: stateDir))
        #expect(EmbeddedRedis.isSocket(socket, ofStateDir: directory.path + "/link"))
        #expect(EmbeddedRedis.isSocket(directory.path + "/var/../var/redis/redis.sock", ofStateDir: stateDir))
        #expect(!EmbeddedRedis.isSocket(directory.path + "/other/redis/redis.sock", ofStateDir: stateDir), "another state_dir's")
        #expect(!EmbeddedRedis.isSocket(stateDir + "/redis/other.sock", ofStateDir: stateDir), "another socket beside it")
        #expect(!EmbeddedRedis.isSocket("/nonexistent/redis/redis.sock", ofStateDir: stateDir))
        #expect(!EmbeddedRedis.isSocket(socket, ofStateDir: directory.path + "/missing"), "a state_dir without a redis directory has no server")
        #expect(EmbeddedRedis.lockFiles(stateDir: stateDir) == [stateDir + "/redis/start.lock", stateDir + "/redis/users.lock"])
    }
}
