import Foundation
import Testing
@testable import TWorkerCore

/// One bad local file and the exact line it must produce (`F` stands for the file's path).
struct InvalidConfigCase: CustomTestStringConvertible, Sendable {
    var name: String
    var yaml: String
    var expected: String
    var testDescription: String { name }
}

extension ConfigTests {
    @Suite struct Validation {
        static let cases: [InvalidConfigCase] = [
            .init(name: "unknown top-level key", yaml: "queue: a\nquue: builds\n",
                  expected: "F:2: quue: unknown key (did you mean 'queue'?)"),
            .init(name: "unknown key without a near miss", yaml: "colour: blue\n",
                  expected: "F:1: colour: unknown key"),
            .init(name: "unknown nested key", yaml: "timeouts:\n  script: 10\n  scirpt: 10\n",
                  expected: "F:3: timeouts.scirpt: unknown key (did you mean 'script'?)"),
            .init(name: "dotted key", yaml: "timeouts.script: 5\n",
                  expected: "F:1: timeouts.script: unknown key (write nested keys as mappings, not dotted)"),
            .init(name: "env-only key in a file", yaml: "vm: tworker-1\n",
                  expected: "F:1: vm: cannot be set in a config file (use the VM environment variable)"),
            .init(name: "env name in a file", yaml: "\nenv: production\n",
                  expected: "F:2: env: cannot be set in a config file"),
            .init(name: "string for an integer", yaml: "vms:\n  count: two\n",
                  expected: "F:2: vms.count: expected an integer, got a string (\"two\")"),
            .init(name: "quoted number for an integer", yaml: "vms:\n  count: \"2\"\n",
                  expected: "F:2: vms.count: expected an integer, got a string (\"2\")"),
            .init(name: "float for an integer", yaml: "timeouts:\n  script: 1.5\n",
                  expected: "F:2: timeouts.script: expected an integer, got a number (1.5)"),
            .init(name: "null for an integer", yaml: "heartbeat:\n  interval:\n",
                  expected: "F:2: heartbeat.interval: expected an integer, got null"),
            .init(name: "negative count", yaml: "vms:\n  count: -1\n",
                  expected: "F:2: vms.count: must be between 1 and 64, got -1"),
            .init(name: "count 0", yaml: "vms:\n  count: 0\n",
                  expected: "F:2: vms.count: must be between 1 and 64, got 0"),
            .init(name: "port out of range", yaml: "ssh:\n  port_base: 70000\n",
                  expected: "F:2: ssh.port_base: must be between 1 and 65000, got 70000"),
            .init(name: "below a minimum", yaml: "limits:\n  log_length: 512\n",
                  expected: "F:2: limits.log_length: must be at least 1024, got 512"),
            .init(name: "huge integer", yaml: "reporting:\n  retention: 99999999999999999999999\n",
                  expected: "F:2: reporting.retention: integer 99999999999999999999999 is too large"),
            // Yams' own base-60 conversion would trap on this: tworker must say what is wrong.
            .init(name: "huge base-60 integer", yaml: "reporting:\n  retention: 999999999999:59:59:59:59\n",
                  expected: "F:2: reporting.retention: integer 999999999999:59:59:59:59 is too large"),
            .init(name: "bad provider", yaml: "provider: kvm\n",
                  expected: "F:1: provider: invalid value \"kvm\" (expected one of: local, virtualbox, qemu)"),
            .init(name: "bad start_type", yaml: "virtualbox:\n  start_type: window\n",
                  expected: "F:2: virtualbox.start_type: invalid value \"window\" (expected one of: headless, gui, sdl, separate)"),
            .init(name: "mapping where a scalar is expected", yaml: "queue:\n  name: builds\n",
                  expected: "F:1: queue: expected a queue name or a list of queue names, got a mapping"),
            .init(name: "list where a scalar is expected", yaml: "vms:\n  count: [1, 2]\n",
                  expected: "F:2: vms.count: expected an integer, got a list"),
            .init(name: "list where a mapping is expected", yaml: "timeouts:\n  - 10\n",
                  expected: "F:1: timeouts: expected a mapping, got a list"),
            .init(name: "scalar where a mapping is expected", yaml: "redis: redis://x\n",
                  expected: "F:1: redis: expected a mapping, got a string (\"redis://x\")"),
            .init(name: "empty string", yaml: "queue: ''\n",
                  expected: "F:1: queue: must not be empty"),
            .init(name: "bad redis.url scheme", yaml: "redis:\n  url: http://127.0.0.1:6379\n",
                  expected: "F:2: redis.url: invalid Redis URL \"http://127.0.0.1:6379\" (expected embedded, redis://... or unix://...)"),
            .init(name: "YAML syntax error", yaml: "queue: builds\nredis:\n  url: embedded\n bad: x\n",
                  expected: "F:4: while parsing a block mapping, did not find expected key"),
            .init(name: "YAML syntax error in a flow", yaml: "queue: builds\nvms: {count: 1\n",
                  expected: "F:3: while parsing a flow mapping, did not find expected ',' or '}'"),
            .init(name: "duplicate key", yaml: "queue: a\nprovider: local\nqueue: b\n",
                  expected: "F:1: duplicate key 'queue'"),
            .init(name: "list at the top level", yaml: "- queue\n- builds\n",
                  expected: "F:1: top level: expected a mapping of keys, got a list"),
            .init(name: "scalar at the top level", yaml: "\n\njust some text\n",
                  expected: "F:3: top level: expected a mapping of keys, got a string (\"just some text\")"),
        ]

        @Test(arguments: cases)
        func invalidLocalFile(_ invalid: InvalidConfigCase) throws {
            let dir = try TempConfigDir()
            try dir.write("worker.yml", invalid.yaml)
            let expected = invalid.expected.replacingOccurrences(of: "F:", with: dir.file("worker.yml") + ":")
            #expect(configProblems(dir.loader()) == [expected])
        }

        @Test func badRedisURLVariable() throws {
            let dir = try TempConfigDir()
            #expect(configProblems(dir.loader(environment: ["REDIS_URL": "localhost:6379"])) == [
                "environment: REDIS_URL: invalid Redis URL \"localhost:6379\" (expected embedded, redis://... or unix://...)",
            ])
        }

        @Test func badVerboseVariable() throws {
            let dir = try TempConfigDir()
            #expect(configProblems(dir.loader(environment: ["VERBOSE": "maybe"])) == [
                "environment: VERBOSE: expected true, 1, yes, false, 0 or no, got \"maybe\"",
            ])
        }

        @Test func badEnvironmentName() throws {
            let dir = try TempConfigDir()
            #expect(configProblems(dir.loader(environment: ["TWORKER_ENV": "../etc"])) == [
                "environment: TWORKER_ENV: invalid environment name \"../etc\" (use letters, digits, '-' and '_')",
            ])
            #expect(configProblems(dir.loader(env: "a b")) == [
                "command line: --env: invalid environment name \"a b\" (use letters, digits, '-' and '_')",
            ])
        }

        @Test func namedConfigDirMustExist() throws {
            let missing = "/nonexistent/tworker-\(UUID().uuidString)"
            #expect(configProblems(ConfigLoader(configDir: missing, environment: [:])) == [
                "\(missing): config directory not found",
            ])
            #expect(configProblems(ConfigLoader(environment: ["TWORKER_CONFIG_DIR": missing])) == [
                "\(missing): config directory not found",
            ])
        }

        @Test func allProblemsOfBothFilesAndEnvironmentTogetherInOrder() throws {
            let dir = try TempConfigDir()
            try dir.write("worker.production.yml", """
                provider: kvm
                vms:
                  count: 0
                  memory: lots
                """)
            try dir.write("worker.yml", """
                timeouts:
                  script: -5
                nonsense: 1
                """)
            let env = dir.file("worker.production.yml"), local = dir.file("worker.yml")
            let problems = configProblems(dir.loader(environment: [
                "TWORKER_ENV": "production", "REDIS_URL": "http://x", "VERBOSE": "sometimes",
            ]))
            #expect(problems == [
                "\(env):1: provider: invalid value \"kvm\" (expected one of: local, virtualbox, qemu)",
                "\(env):3: vms.count: must be between 1 and 64, got 0",
                "\(env):4: vms.memory: expected an integer, got a string (\"lots\")",
                "\(local):2: timeouts.script: must be between 1 and 86400, got -5",
                "\(local):3: nonsense: unknown key",
                "environment: REDIS_URL: invalid Redis URL \"http://x\" (expected embedded, redis://... or unix://...)",
                "environment: VERBOSE: expected true, 1, yes, false, 0 or no, got \"sometimes\"",
            ])
        }

        @Test func environmentProblemsSortAfterFileProblems() throws {
            let dir = try TempConfigDir()
            try dir.write("worker.yml", "queue: a\nbogus: 1\n")
            // The bad env name is found first but belongs after the file's lines.
            #expect(configProblems(dir.loader(environment: ["TWORKER_ENV": "no/such"])) == [
                "\(dir.file("worker.yml")):2: bogus: unknown key",
                "environment: TWORKER_ENV: invalid environment name \"no/such\" (use letters, digits, '-' and '_')",
            ])
        }

        @Test func syntaxErrorInOneFileStillReportsTheOther() throws {
            let dir = try TempConfigDir()
            try dir.write("worker.development.yml", "queue: [unclosed\n")
            try dir.write("worker.yml", "provider: none\n")
            let problems = configProblems(dir.loader())
            #expect(problems.count == 2)
            #expect(problems.first?.hasPrefix(dir.file("worker.development.yml") + ":") == true)
            #expect(problems.last == dir.file("worker.yml") + ":1: provider: invalid value \"none\" (expected one of: local, virtualbox, qemu)")
        }

        @Test func errorDescriptionIsOneLinePerProblem() throws {
            let dir = try TempConfigDir()
            try dir.write("worker.yml", "a: 1\nb: 2\n")
            do {
                _ = try dir.loader().load()
                Issue.record("expected a ConfigError")
            } catch {
                #expect(error.description == "\(dir.file("worker.yml")):1: a: unknown key\n\(dir.file("worker.yml")):2: b: unknown key")
            }
        }

        /// Odd input must give problem lines, never a crash.
        @Test(arguments: [
            "{", "]", "queue: *nowhere\n", "\tqueue: x\n", "---\nqueue: a\n---\nqueue: b\n",
            "? [a, b]\n: c\n", "vms:\n  count: !!str 5\n", "timeouts: &t {script: 5}\nlimits: *t\n",
            "%YAML 9.9\n---\nqueue: a\n", "queue: \"unterminated\n",
        ])
        func oddInputIsReportedNotFatal(yaml: String) throws {
            let dir = try TempConfigDir()
            try dir.write("worker.yml", yaml)
            let problems = configProblems(dir.loader())
            #expect(!problems.isEmpty)
            #expect(problems.allSatisfy { $0.hasPrefix(dir.file("worker.yml") + ":") })
        }

        @Test func invalidUTF8IsReported() throws {
            let dir = try TempConfigDir()
            try Data([0x71, 0x3A, 0x20, 0xFF, 0xFE, 0x0A]).write(to: URL(fileURLWithPath: dir.file("worker.yml")))
            #expect(configProblems(dir.loader()) == ["\(dir.file("worker.yml")): not valid UTF-8"])
        }
    }
}
