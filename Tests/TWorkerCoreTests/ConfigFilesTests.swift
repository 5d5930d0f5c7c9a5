import Foundation
import Testing
@testable import TWorkerCore

extension ConfigTests {
    /// The committed files under config/ must always load.
    @Suite struct CommittedFiles {
        /// <package root>/config, found from this file's path.
        static let configDir = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("config").path

        /// Loads only the committed env file, never an operator's worker.yml.
        func loadCommitted(env: String, environment: [String: String] = [:]) throws -> LoadedConfig {
            let dir = try TempConfigDir()
            let source = Self.configDir + "/worker.\(env).yml"
            try dir.write("worker.\(env).yml", String(contentsOfFile: source, encoding: .utf8))
            return try dir.loader(env: env, environment: environment).load()
        }

        @Test func developmentLoads() throws {
            let loaded = try loadCommitted(env: "development")
            #expect(loaded.config.redis.url == "embedded")
            #expect(loaded.config.provider == .local)
            #expect(loaded.config.vms.count == 1)
            #expect(loaded.origins["redis.url"]?.description.hasSuffix("worker.development.yml:7") == true)
        }

        @Test func testLoadsWithSmallTimeouts() throws {
            let c = try loadCommitted(env: "test").config
            #expect(c.provider == .local)
            #expect(c.timeouts.hardLimit < 2400)
            #expect(c.timeouts.script < 600)
            #expect(c.heartbeat.interval < 10)
        }

        @Test func productionLoads() throws {
            let c = try loadCommitted(env: "production").config
            #expect(c.provider == .virtualbox)
            #expect(c.redis.url == "redis://127.0.0.1:6379/0")
            #expect(c.vms.count == 2)
        }

        @Test func productionRedisCanBeOverriddenByEnvironment() throws {
            let loaded = try loadCommitted(env: "production", environment: ["REDIS_URL": "redis://hub:6379/1"])
            #expect(loaded.config.redis.url == "redis://hub:6379/1")
        }

        /// The example is all comments; uncommented, it must set every file key and be valid.
        @Test func exampleLoadsAsIsAndUncommented() throws {
            let text = try String(contentsOfFile: Self.configDir + "/worker.example.yml", encoding: .utf8)
            let dir = try TempConfigDir()
            try dir.write("worker.yml", text)
            #expect(configProblems(dir.loader()) == [])

            let keyLine = try Regex(#"^# ( *[a-z_]+:( |$))"#)
            let uncommented = text.split(separator: "\n", omittingEmptySubsequences: false).map { line in
                line.firstMatch(of: keyLine) != nil ? String(line.dropFirst(2)) : String(line)
            }.joined(separator: "\n")
            try dir.write("worker.yml", uncommented)
            let loaded = try dir.loader().load()
            let fileKeys = ConfigSchema.keys.filter(\.inFile).map(\.path)
            let notShown = fileKeys.filter { loaded.origins[$0] == .default }
            #expect(notShown == [])
        }
    }
}
