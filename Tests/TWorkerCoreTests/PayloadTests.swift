import Foundation
import Subprocess
import Testing
import TWorkerCore

/// A queue entry around `payload` (JSON text), with optional extra envelope members.
private func entry(_ payload: String, extra: String = "") -> [UInt8] {
    Array(#"{"class":"Travis::Build","args":[\#(payload)]\#(extra)}"#.utf8)
}

private let validRepo = #""repository":{"slug":"octo/repo","source_url":"https://git.example/octo/repo.git"},"commit":"0123456789abcdef0123456789abcdef01234567","branch":"main""#

private func decoded(_ raw: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws -> QueuedJob {
    switch JobDecoder.decode(raw) {
    case .success(let job): return job
    case .failure(let error):
        Issue.record("unexpected rejection: \(error)", sourceLocation: sourceLocation)
        throw error
    }
}

private func rejection(_ raw: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) -> PayloadError? {
    switch JobDecoder.decode(raw) {
    case .success(let job):
        Issue.record("unexpectedly accepted: \(job.payload)", sourceLocation: sourceLocation)
        return nil
    case .failure(let error):
        return error
    }
}

/// One malformed entry and the exact problem list it must produce.
struct MalformedCase: Sendable, CustomTestStringConvertible {
    var name: String
    var raw: [UInt8]
    var problems: [String]
    var testDescription: String { name }

    init(_ name: String, _ raw: [UInt8], _ problems: String...) {
        self.name = name
        self.raw = raw
        self.problems = problems
    }

    init(_ name: String, payload: String, _ problems: String...) {
        self.name = name
        self.raw = entry(payload)
        self.problems = problems
    }
}

private let slugProblem = #"payload.repository.slug: expected owner/name, each part 1 to 100 characters of [A-Za-z0-9_.-] and not "." or "..""#
private let commitProblem = "payload.commit: expected 7 to 40 hexadecimal characters"

private func withSlug(_ slug: String) -> String {
    #"{"id":"j","repository":{"slug":\#(JSONValue.string(slug).jsonText),"source_url":"https://x/y.git"},"commit":"abcdef1","branch":"main"}"#
}

private func withBranch(_ branch: String) -> String {
    #"{"id":"j","repository":{"slug":"a/b","source_url":"https://x/y.git"},"commit":"abcdef1","branch":\#(JSONValue.string(branch).jsonText)}"#
}

private func withCommit(_ commit: String) -> String {
    #"{"id":"j","repository":{"slug":"a/b","source_url":"https://x/y.git"},"commit":\#(JSONValue.string(commit).jsonText),"branch":"main"}"#
}

private let malformedCases: [MalformedCase] = [
    MalformedCase("array top level", Array("[1,2]".utf8), "queue entry: expected a JSON object, got an array"),
    MalformedCase("missing class", Array(#"{"args":[{"id":"j"}]}"#.utf8), #"envelope: missing key "class""#),
    MalformedCase("class not a string", Array(#"{"class":5,"args":[{"id":"j"}]}"#.utf8), "envelope.class: expected a string"),
    MalformedCase("missing args", Array(#"{"class":"B"}"#.utf8), #"envelope: missing key "args""#),
    MalformedCase("args not an array", Array(#"{"class":"B","args":{"id":"j"}}"#.utf8), "envelope.args: expected an array"),
    MalformedCase("args empty", Array(#"{"class":"B","args":[]}"#.utf8), "envelope.args: expected exactly one element (the payload), got 0"),
    MalformedCase("args two elements", entry(#"{"id":"j"},{"id":"k"}"#), "envelope.args: expected exactly one element (the payload), got 2"),
    MalformedCase("payload not object", entry(#""just a string""#), "payload: expected an object, got a string"),
    MalformedCase("bad attempts", entry(#"{"id":"j"}"#, extra: #","attempts":-1"#), "envelope.attempts: expected a non-negative integer"),
    MalformedCase("bad queued_at", entry(#"{"id":"j"}"#, extra: #","queued_at":7"#), "envelope.queued_at: expected a string"),
    MalformedCase("missing id", payload: #"{"config":{"script":"x"}}"#, "payload.id: missing (required)"),
    MalformedCase("id wrong type", payload: #"{"id":1.5}"#, "payload.id: expected a string or an integer"),
    MalformedCase("id empty", payload: #"{"id":""}"#, "payload.id: must be 1 to 128 characters long"),
    MalformedCase("id too long", payload: #"{"id":"\#(String(repeating: "x", count: 129))"}"#, "payload.id: must be 1 to 128 characters long"),
    MalformedCase("id with space", payload: #"{"id":"a b"}"#, "payload.id: must not contain whitespace"),
    MalformedCase("id with newline", payload: #"{"id":"a\nb"}"#, "payload.id: must not contain whitespace", "payload.id: must not contain control characters"),
    MalformedCase("id with control char", payload: #"{"id":"a\u0001b"}"#, "payload.id: must not contain control characters"),
    MalformedCase("slug a/b/c", payload: withSlug("a/b/c"), slugProblem),
    MalformedCase("slug ../x", payload: withSlug("../x"), slugProblem),
    MalformedCase("slug x/..", payload: withSlug("x/.."), slugProblem),
    MalformedCase("slug without owner", payload: withSlug("/x"), slugProblem),
    MalformedCase("slug a;rm -rf/", payload: withSlug("a;rm -rf/"), slugProblem),
    MalformedCase("slug with $()", payload: withSlug("a/$(reboot)"), slugProblem),
    MalformedCase("slug with backtick", payload: withSlug("a/`id`"), slugProblem),
    MalformedCase("slug part too long", payload: withSlug("a/" + String(repeating: "b", count: 101)), slugProblem),
    MalformedCase("commit not hex", payload: withCommit("xyz1234"), commitProblem),
    MalformedCase("commit too short", payload: withCommit("abc12"), commitProblem),
    MalformedCase("commit too long", payload: withCommit(String(repeating: "a", count: 41)), commitProblem),
    MalformedCase("commit with shell", payload: withCommit("abcdef1;ls"), commitProblem),
    MalformedCase("branch with ..", payload: withBranch("a..b"), #"payload.branch: not a valid branch name (contains "..")"#),
    MalformedCase("branch starting with -", payload: withBranch("-b"), "payload.branch: not a valid branch name (starts with '-')"),
    MalformedCase("branch with space", payload: withBranch("a b"), "payload.branch: not a valid branch name (contains a space)"),
    MalformedCase("branch ending .lock", payload: withBranch("topic.lock"), #"payload.branch: not a valid branch name (a component ends with ".lock")"#),
    MalformedCase("branch with ;", payload: withBranch("a;reboot"), "payload.branch: not a valid branch name (contains a shell metacharacter)"),
    MalformedCase("branch with $()", payload: withBranch("$(reboot)"), "payload.branch: not a valid branch name (contains a shell metacharacter)"),
    MalformedCase("branch with backtick", payload: withBranch("a`id`"), "payload.branch: not a valid branch name (contains a shell metacharacter)"),
    MalformedCase("branch with quote", payload: withBranch("it's"), "payload.branch: not a valid branch name (contains a shell metacharacter)"),
    MalformedCase("branch not string", payload: withBranch("x").replacingOccurrences(of: #""branch":"x""#, with: #""branch":["x"]"#), "payload.branch: expected a string"),
    MalformedCase(
        "only repository", payload: #"{"id":"j","repository":{"slug":"a/b","source_url":"https://x/y.git"}}"#,
        "payload: repository, commit and branch must be given together (missing: commit, branch)"
    ),
    MalformedCase(
        "repository missing source_url", payload: #"{"id":"j","repository":{"slug":"a/b"},"commit":"abcdef1","branch":"m"}"#,
        "payload.repository.source_url: missing (required)"
    ),
    MalformedCase(
        "source_url starting with -",
        payload: #"{"id":"j","repository":{"slug":"a/b","source_url":"--upload-pack=touch /tmp/x"},"commit":"abcdef1","branch":"m"}"#,
        "payload.repository.source_url: must not start with '-'"
    ),
    MalformedCase(
        "source_url with newline",
        payload: #"{"id":"j","repository":{"slug":"a/b","source_url":"https://x\ny"},"commit":"abcdef1","branch":"m"}"#,
        "payload.repository.source_url: must not contain control characters"
    ),
    MalformedCase("env name 1X", payload: #"{"id":"j","config":{"env":["1X=1"]}}"#, "payload.config.env[0]: invalid variable name (must match [A-Za-z_][A-Za-z0-9_]*)"),
    MalformedCase("env name A-B", payload: #"{"id":"j","config":{"env":["OK=1","A-B=1"]}}"#, "payload.config.env[1]: invalid variable name (must match [A-Za-z_][A-Za-z0-9_]*)"),
    MalformedCase("env without =", payload: #"{"id":"j","config":{"env":["FOO"]}}"#, "payload.config.env[0]: expected NAME=value"),
    MalformedCase("env value with NUL", payload: #"{"id":"j","config":{"env":["A=x\u0000y"]}}"#, "payload.config.env[0]: value must not contain NUL bytes"),
    MalformedCase("env not a list", payload: #"{"id":"j","config":{"env":"A=1"}}"#, #"payload.config.env: expected an array of NAME=value strings or {"name", "value", "secure"} objects"#),
    MalformedCase("env item a number", payload: #"{"id":"j","config":{"env":[5]}}"#, #"payload.config.env[0]: expected a NAME=value string or a {"name", "value", "secure"} object"#),
    MalformedCase("secure env without value", payload: #"{"id":"j","config":{"env":[{"name":"A_TOKEN","secure":true}]}}"#, "payload.config.env[0].value: expected a string"),
    MalformedCase("secure env name", payload: #"{"id":"j","config":{"env":[{"name":"1X","value":"abcdefgh","secure":true}]}}"#, "payload.config.env[0]: invalid variable name (must match [A-Za-z_][A-Za-z0-9_]*)"),
    MalformedCase("secure not a bool", payload: #"{"id":"j","config":{"env":[{"name":"A","value":"abcdefgh","secure":"yes"}]}}"#, "payload.config.env[0].secure: expected true or false"),
    MalformedCase("env object unknown key", payload: #"{"id":"j","config":{"env":[{"name":"A","value":"abcdefgh","public":true}]}}"#, "payload.config.env[0].public: unknown key"),
    MalformedCase("command not a string", payload: #"{"id":"j","config":{"script":["a","b",3]}}"#, "payload.config.script[2]: expected a string"),
    MalformedCase("stage wrong type", payload: #"{"id":"j","config":{"install":{"a":1}}}"#, "payload.config.install: expected a string or an array of strings"),
    MalformedCase("command with NUL", payload: #"{"id":"j","config":{"script":"a\u0000b"}}"#, "payload.config.script: must not contain NUL bytes"),
    MalformedCase(
        "command too long", payload: #"{"id":"j","config":{"after_script":["\#(String(repeating: "x", count: 65_537))"]}}"#,
        "payload.config.after_script[0]: longer than 65536 bytes"
    ),
    MalformedCase("unknown key", payload: #"{"id":"j","extra":1}"#, "payload.extra: unknown key"),
    MalformedCase("unknown key with odd text", payload: #"{"id":"j","a\nb":1}"#, #"payload["a\nb"]: unknown key"#),
    MalformedCase("unknown config key", payload: #"{"id":"j","config":{"language":"ruby"}}"#, "payload.config.language: unknown key"),
    MalformedCase("config not object", payload: #"{"id":"j","config":["x"]}"#, "payload.config: expected an object"),
    MalformedCase("unknown repository key", payload: withSlug("a/b").replacingOccurrences(of: #""slug""#, with: #""private":true,"slug""#), "payload.repository.private: unknown key"),
    MalformedCase("timeouts negative", payload: #"{"id":"j","timeouts":{"hard_limit":-5}}"#, "payload.timeouts.hard_limit: expected a positive integer (seconds)"),
    MalformedCase("timeouts zero", payload: #"{"id":"j","timeouts":{"log_silence":0}}"#, "payload.timeouts.log_silence: expected a positive integer (seconds)"),
    MalformedCase("timeouts fractional", payload: #"{"id":"j","timeouts":{"log_silence":1.5}}"#, "payload.timeouts.log_silence: expected a positive integer (seconds)"),
    MalformedCase("timeouts huge", payload: #"{"id":"j","timeouts":{"hard_limit":99999999999}}"#, "payload.timeouts.hard_limit: must be at most 2147483647"),
    MalformedCase("timeouts unknown key", payload: #"{"id":"j","timeouts":{"total":5}}"#, "payload.timeouts.total: unknown key"),
]

@Suite struct PayloadTests {
    // MARK: Valid entries

    @Test func decodesFullPayload() throws {
        let raw = entry(#"""
            {"id":"build-42",\#(validRepo),
             "config":{"env":["A=1","B_2=x=y","EMPTY="],"before_install":"bi","install":["i1","i2"],
                       "before_script":[],"script":["s1","s2"],"after_success":"ok","after_failure":["bad"],
                       "after_script":"done"},
             "timeouts":{"hard_limit":3000,"log_silence":600}}
            """#)
        let job = try decoded(raw)
        #expect(job.raw == raw)
        #expect(job.attempts == 0)
        #expect(job.queuedAt == nil)
        let p = job.payload
        #expect(p.id == "build-42")
        #expect(p.checkout == JobPayload.Checkout(
            slug: "octo/repo", sourceURL: "https://git.example/octo/repo.git",
            commit: "0123456789abcdef0123456789abcdef01234567", branch: "main"))
        #expect(p.env == [.init(name: "A", value: "1"), .init(name: "B_2", value: "x=y"), .init(name: "EMPTY", value: "")])
        #expect(p.stages == [
            .beforeInstall: ["bi"], .install: ["i1", "i2"], .script: ["s1", "s2"],
            .afterSuccess: ["ok"], .afterFailure: ["bad"], .afterScript: ["done"],
        ])
        #expect(p.stages[.beforeScript] == nil)  // empty list: stage omitted
        #expect(p.hardLimit == 3000)
        #expect(p.logSilence == 600)
    }

    @Test func secureEnvEntriesSitBesidePlainOnes() throws {
        let raw = entry(#"{"id":"x","config":{"env":["A=1",{"name":"API_TOKEN","value":"s3cr3t-value","secure":true},{"name":"B","value":"2"},{"name":"C","value":"3","secure":false}]}}"#)
        #expect(try decoded(raw).payload.env == [
            .init(name: "A", value: "1"), .init(name: "API_TOKEN", value: "s3cr3t-value", secure: true),
            .init(name: "B", value: "2"), .init(name: "C", value: "3"),
        ])
    }

    @Test func integerIDBecomesDecimalString() throws {
        #expect(try decoded(entry(#"{"id":1234567890123}"#)).payload.id == "1234567890123")
        #expect(try decoded(entry(#"{"id":-7}"#)).payload.id == "-7")
    }

    @Test func minimalPayloadHasNoCheckoutAndNothingToRun() throws {
        let p = try decoded(entry(#"{"id":"x"}"#)).payload
        #expect(p == JobPayload(id: "x"))
        #expect(p.checkout == nil)
        #expect(p.stages.isEmpty)
        #expect(p.hardLimit == nil && p.logSilence == nil)
    }

    @Test func nullMeansAbsentForOptionalKeys() throws {
        let p = try decoded(entry(#"{"id":"x","repository":null,"commit":null,"branch":null,"config":{"script":null,"env":null},"timeouts":null}"#)).payload
        #expect(p == JobPayload(id: "x"))
    }

    @Test func stringAndListCommandsKeepExactText() throws {
        let cmd = "echo \"$(date)\" 'a' `b`; \\\n\té ✓"
        let raw = entry(#"{"id":"x","config":{"script":\#(JSONValue.string(cmd).jsonText),"install":[\#(JSONValue.string(cmd).jsonText),""]}}"#)
        let p = try decoded(raw).payload
        #expect(p.stages[.script] == [cmd])
        #expect(p.stages[.install] == [cmd, ""])
    }

    @Test func acceptsValidBranchesAndSlugs() throws {
        for branch in ["main", "feature/x-1", "release/v1.2", "user@host", "ünïcode", "a.b", "v1.0-rc.1"] {
            #expect(JobValidation.branchProblem(branch) == nil, "\(branch)")
        }
        for slug in ["o/r", "my-org/my.repo", "A_b/.github", "a/...", "x/-y"] {
            #expect(JobValidation.isValidSlug(slug), "\(slug)")
        }
        let job = try decoded(entry(withSlug("travis-ci/travis.rb")))
        #expect(job.payload.checkout?.slug == "travis-ci/travis.rb")
    }

    @Test func readsEnvelopeAttemptsAndQueuedAtAndIgnoresOtherKeys() throws {
        let raw = entry(#"{"id":"x"}"#, extra: #","id":"resque-1","attempts":2,"queued_at":"2024-03-05T14:07:09Z","meta":{"a":[1]}"#)
        let job = try decoded(raw)
        #expect(job.attempts == 2)
        #expect(job.queuedAt == "2024-03-05T14:07:09Z")
        #expect(job.envelope["meta"] == .object(["a": .array([.int(1)])]))
        #expect(job.payload.id == "x")
    }

    @Test func withAttemptsRoundTripPreservesEnvelope() throws {
        let raw = entry(#"{"id":7,"config":{"script":["a"]},"timeouts":{"hard_limit":10}}"#, extra: #","queued_at":"2024-01-01T00:00:00Z","custom":{"n":12345678901234567,"f":0.5}"#)
        let job = try decoded(raw)
        let requeued = job.withAttempts(3)
        let again = try decoded(requeued)
        #expect(again.attempts == 3)
        #expect(again.raw == requeued)
        #expect(again.payload == job.payload)
        #expect(again.queuedAt == "2024-01-01T00:00:00Z")
        #expect(again.envelope["custom"] == .object(["n": .int(12_345_678_901_234_567), "f": .double(0.5)]))
        #expect(again.envelope["class"] == .string("Travis::Build"))
        var expected = job.envelope
        expected["attempts"] = .int(3)
        #expect(again.envelope == expected)
        #expect(try decoded(again.withAttempts(4)).attempts == 4)
    }

    // MARK: Malformed entries

    @Test func notJSONIsMalformed() throws {
        let error = try #require(rejection(Array("{not json".utf8)))
        #expect(error.kind == .malformedJSON)
        #expect(error.exception == "MalformedJSON")
        #expect(error.problems.count == 1)
        #expect(error.problems[0].hasPrefix("not valid JSON: "))
        #expect(error.jobID == nil)
        #expect(error.envelope == nil)
    }

    @Test(arguments: malformedCases)
    func rejectsMalformed(_ c: MalformedCase) throws {
        let error = try #require(rejection(c.raw))
        #expect(error.problems == c.problems)
        #expect(error.kind == .invalidPayload)
        #expect(error.exception == "InvalidPayload")
    }

    @Test func collectsAllProblemsAndKeepsReadableID() throws {
        let raw = entry(#"""
            {"id":"job-9","repository":{"slug":"a/b/c","source_url":"-x"},"commit":"zz","branch":"a..b",
             "config":{"env":["1X=1","A-B=2","NOEQ"],"script":["ok",5],"bogus":1},"timeouts":{"hard_limit":-1},"what":true}
            """#)
        let error = try #require(rejection(raw))
        #expect(error.jobID == "job-9")
        #expect(error.problems.count == 11, "\(error.problems)")
        for fragment in [
            "payload.what: unknown key", "payload.repository.slug:", "payload.repository.source_url:", "payload.commit:",
            "payload.branch:", "payload.config.env[0]:", "payload.config.env[1]:", "payload.config.env[2]:",
            "payload.config.script[1]: expected a string", "payload.config.bogus: unknown key", "payload.timeouts.hard_limit:",
        ] {
            #expect(error.problems.contains { $0.hasPrefix(fragment) }, "\(fragment)")
        }
        #expect(error.description.hasPrefix("invalid job payload (job job-9): "))
        #expect(error.envelope != nil)
    }

    @Test func unreadableIDIsNotReported() throws {
        let error = try #require(rejection(entry(#"{"id":"a b","extra":1}"#)))
        #expect(error.jobID == nil)
        #expect(error.problems.count == 2)
    }

    @Test func envelopeAndPayloadProblemsTogether() throws {
        let error = try #require(rejection(Array(#"{"args":[{"id":"j","x":1}],"attempts":"1"}"#.utf8)))
        #expect(error.problems == [
            #"envelope: missing key "class""#, "envelope.attempts: expected a non-negative integer", "payload.x: unknown key",
        ])
        #expect(error.jobID == "j")
    }

    /// Our branch rules must never accept a name git refuses (and match git except for shell metacharacters).
    @Test func branchRulesMatchGitCheckRefFormat() async throws {
        let names = [
            "main", "a/b", "feature/x-1", "a..b", "-x", "/a", "a/", "a.", "a.lock", "a.lock/b", "b/a.lock", "a//b",
            "a@{1}", "a@b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", ".a", "a/.b", "a\u{7F}",
            "a\tb", "ünï", "a/b/c.d", "x.lockx", ".lock", "a/.lock", "{x}", "a.b", String(repeating: "a", count: 255),
        ]
        for name in names {
            let result = try await run(
                .path("/usr/bin/env"), arguments: ["git", "check-ref-format", "--branch", name],
                output: .discarded, error: .discarded)
            let gitAccepts = result.terminationStatus.isSuccess
            #expect((JobValidation.branchProblem(name) == nil) == gitAccepts, "\(name.debugDescription): git accepts = \(gitAccepts)")
        }
        // Stricter than git on purpose: git 2.39 takes "@" as a branch name, the brief's rules don't.
        #expect(JobValidation.branchProblem("@") != nil)
        #expect(JobValidation.branchProblem("a;b") != nil)
        #expect(JobValidation.branchProblem(String(repeating: "a", count: 256)) != nil)
    }

    // MARK: Failure record

    @Test func resqueFailureHasExactlyTheSevenKeys() throws {
        let raw = entry(#"{"id":"j","nope":1}"#, extra: #","queued_at":"q""#)
        let error = try #require(rejection(raw))
        let failure = ResqueFailure(
            rejected: error, raw: raw, worker: "host:123:builds", queue: "builds",
            failedAt: Date(timeIntervalSince1970: 1_709_647_629))
        let json = try JSONValue.parse(failure.json())
        let object = try #require(json.objectValue)
        #expect(Set(object.keys) == ["failed_at", "payload", "exception", "error", "backtrace", "worker", "queue"])
        #expect(object["failed_at"] == .string("2024/03/05 14:07:09 UTC"))
        #expect(object["exception"] == .string("InvalidPayload"))
        #expect(object["payload"] == (try JSONValue.parse(raw)))
        #expect(object["backtrace"] == .array([.string("payload.nope: unknown key")]))
        #expect(object["error"] == .string("invalid job payload (job j): payload.nope: unknown key"))
        #expect(object["worker"] == .string("host:123:builds"))
        #expect(object["queue"] == .string("builds"))
    }

    @Test func resqueFailureForMalformedJSONKeepsRawText() throws {
        let raw = Array("{\"class\": oops\n".utf8) + [0xFF]
        let error = try #require(rejection(raw))
        let failure = ResqueFailure(rejected: error, raw: raw, worker: "w", queue: "q", failedAt: Date(timeIntervalSince1970: 0))
        let object = try #require(try JSONValue.parse(failure.json()).objectValue)
        #expect(object["exception"] == .string("MalformedJSON"))
        #expect(object["payload"] == .string("{\"class\": oops\n\u{FFFD}"))
        #expect(object["failed_at"] == .string("1970/01/01 00:00:00 UTC"))
    }

    @Test func failedAtFormat() {
        #expect(ResqueFailure.format(Date(timeIntervalSince1970: 951_782_400)) == "2000/02/29 00:00:00 UTC")
        #expect(ResqueFailure.format(Date(timeIntervalSince1970: 4_102_444_799.9)) == "2099/12/31 23:59:59 UTC")
        #expect(ResqueFailure.format(Date(timeIntervalSince1970: -1)) == "1969/12/31 23:59:59 UTC")
        let direct = ResqueFailure(failedAt: Date(timeIntervalSince1970: 86_400), payload: nil, exception: "E", error: "e", worker: "w", queue: "q")
        #expect(String(decoding: direct.json(), as: UTF8.self)
            == #"{"backtrace":[],"error":"e","exception":"E","failed_at":"1970/01/02 00:00:00 UTC","payload":null,"queue":"q","worker":"w"}"#)
    }
}
