/// Turns a raw Resque queue entry into a `QueuedJob`, collecting every problem it finds.
public enum JobDecoder {
    /// Largest accepted `timeouts` value, so seconds-to-nanoseconds math elsewhere can't overflow.
    public static let maxTimeoutSeconds = 2_147_483_647
    /// Largest accepted command, in UTF-8 bytes.
    public static let maxCommandBytes = 64 * 1024

    static let payloadKeys: Set<String> = ["id", "repository", "commit", "branch", "config", "timeouts"]
    static let repositoryKeys: Set<String> = ["slug", "source_url"]
    static let configKeys: Set<String> = Set(["env"] + BuildStage.allCases.map(\.rawValue))
    static let timeoutKeys: Set<String> = ["hard_limit", "log_silence"]
    static let envObjectKeys: Set<String> = ["name", "value", "secure"]

    public static func decode(_ raw: [UInt8]) -> Result<QueuedJob, PayloadError> {
        let root: JSONValue
        do {
            root = try JSONValue.parse(raw)
        } catch {
            return .failure(PayloadError(problems: ["not valid JSON: \(error)"], kind: .malformedJSON))
        }
        guard case .object(let envelope) = root else {
            return .failure(PayloadError(problems: ["queue entry: expected a JSON object, got \(root.typeName)"], envelope: root))
        }

        var v = Validator()
        // Envelope: class + args are Resque's; attempts/queued_at are ours. Other keys are ignored.
        switch envelope["class"] {
        case nil: v.problem("envelope: missing key \"class\"")
        case .string?: break
        default: v.problem("envelope.class: expected a string")
        }
        var attempts = 0
        switch envelope["attempts"] {
        case nil, .null?: break
        case .int(let n)? where n >= 0 && n <= Int64(Int32.max): attempts = Int(n)
        default: v.problem("envelope.attempts: expected a non-negative integer")
        }
        var queuedAt: String?
        switch envelope["queued_at"] {
        case nil, .null?: break
        case .string(let s)?: queuedAt = s
        default: v.problem("envelope.queued_at: expected a string")
        }

        var payloadObject: [String: JSONValue]?
        switch envelope["args"] {
        case nil:
            v.problem("envelope: missing key \"args\"")
        case .array(let args)?:
            if args.count != 1 {
                v.problem("envelope.args: expected exactly one element (the payload), got \(args.count)")
            } else if case .object(let o) = args[0] {
                payloadObject = o
            } else {
                v.problem("payload: expected an object, got \(args[0].typeName)")
            }
        default:
            v.problem("envelope.args: expected an array")
        }

        let payload = payloadObject.flatMap { v.payload($0) }
        if let payload, v.problems.isEmpty {
            return .success(QueuedJob(raw: raw, envelope: envelope, payload: payload, attempts: attempts, queuedAt: queuedAt))
        }
        return .failure(PayloadError(problems: v.problems, jobID: v.jobID, kind: .invalidPayload, envelope: root))
    }
}

/// Accumulates problems while reading the payload; each check reports and carries on.
private struct Validator {
    var problems: [String] = []
    var jobID: String?

    mutating func problem(_ text: String) { problems.append(text) }

    /// Renders an object key for a path without letting hostile text (newlines, huge keys) into messages.
    static func keyPath(_ parent: String, _ key: String) -> String {
        let simple = !key.isEmpty && key.utf8.count <= 64 && key.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2D
        }
        if simple { return "\(parent).\(key)" }
        let shown = key.unicodeScalars.count > 64 ? String(String.UnicodeScalarView(key.unicodeScalars.prefix(64))) + "…" : key
        return "\(parent)[\(JSONValue.string(shown).jsonText)]"
    }

    mutating func rejectUnknownKeys(_ object: [String: JSONValue], allowed: Set<String>, path: String) {
        let unknown = object.keys.filter { !allowed.contains($0) }.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        for key in unknown { problem("\(Validator.keyPath(path, key)): unknown key") }
    }

    /// Optional keys may be absent or null.
    static func present(_ value: JSONValue?) -> JSONValue? {
        if let value, value != .null { return value }
        return nil
    }

    mutating func payload(_ p: [String: JSONValue]) -> JobPayload? {
        let before = problems.count
        rejectUnknownKeys(p, allowed: JobDecoder.payloadKeys, path: "payload")

        var id = ""
        switch p["id"] {
        case nil, .null?:
            problem("payload.id: missing (required)")
        case .string(let s)?:
            id = s
            if checkID(s) { jobID = s }
        case .int(let i)?:
            id = String(i)
            if checkID(id) { jobID = id }
        default:
            problem("payload.id: expected a string or an integer")
        }

        let checkout = self.checkout(p)
        var env: [JobPayload.EnvVar] = []
        var stages: [BuildStage: [String]] = [:]
        if let config = Validator.present(p["config"]) {
            if case .object(let c) = config {
                rejectUnknownKeys(c, allowed: JobDecoder.configKeys, path: "payload.config")
                env = self.env(c["env"])
                for stage in BuildStage.allCases {
                    let commands = self.commands(c[stage.rawValue], path: "payload.config.\(stage.rawValue)")
                    if !commands.isEmpty { stages[stage] = commands }
                }
            } else {
                problem("payload.config: expected an object")
            }
        }

        var hardLimit: Int?
        var logSilence: Int?
        if let timeouts = Validator.present(p["timeouts"]) {
            if case .object(let t) = timeouts {
                rejectUnknownKeys(t, allowed: JobDecoder.timeoutKeys, path: "payload.timeouts")
                hardLimit = seconds(t["hard_limit"], path: "payload.timeouts.hard_limit")
                logSilence = seconds(t["log_silence"], path: "payload.timeouts.log_silence")
            } else {
                problem("payload.timeouts: expected an object")
            }
        }

        guard problems.count == before else { return nil }
        return JobPayload(id: id, checkout: checkout, env: env, stages: stages, hardLimit: hardLimit, logSilence: logSilence)
    }

    mutating func checkID(_ id: String) -> Bool {
        let before = problems.count
        let n = id.unicodeScalars.count
        if n < 1 || n > 128 { problem("payload.id: must be 1 to 128 characters long") }
        if id.unicodeScalars.contains(where: { $0.properties.isWhitespace }) {
            problem("payload.id: must not contain whitespace")
        }
        if id.unicodeScalars.contains(where: JobValidation.isControl) {
            problem("payload.id: must not contain control characters")
        }
        return problems.count == before
    }

    mutating func checkout(_ p: [String: JSONValue]) -> JobPayload.Checkout? {
        let repo = Validator.present(p["repository"])
        let commit = Validator.present(p["commit"])
        let branch = Validator.present(p["branch"])
        let given = [("repository", repo), ("commit", commit), ("branch", branch)]
        let missing = given.filter { $0.1 == nil }.map(\.0)
        if missing.count == 3 { return nil }
        if !missing.isEmpty {
            problem("payload: repository, commit and branch must be given together (missing: \(missing.joined(separator: ", ")))")
        }

        var slug: String?
        var sourceURL: String?
        if let repo {
            if case .object(let r) = repo {
                rejectUnknownKeys(r, allowed: JobDecoder.repositoryKeys, path: "payload.repository")
                switch r["slug"] {
                case nil, .null?: problem("payload.repository.slug: missing (required)")
                case .string(let s)?:
                    if JobValidation.isValidSlug(s) {
                        slug = s
                    } else {
                        problem("payload.repository.slug: expected owner/name, each part 1 to 100 characters of [A-Za-z0-9_.-] and not \".\" or \"..\"")
                    }
                default: problem("payload.repository.slug: expected a string")
                }
                switch r["source_url"] {
                case nil, .null?: problem("payload.repository.source_url: missing (required)")
                case .string(let s)?:
                    if let why = JobValidation.sourceURLProblem(s) {
                        problem("payload.repository.source_url: \(why)")
                    } else {
                        sourceURL = s
                    }
                default: problem("payload.repository.source_url: expected a string")
                }
            } else {
                problem("payload.repository: expected an object")
            }
        }

        var commitValue: String?
        if let commit {
            if case .string(let s) = commit {
                if JobValidation.isValidCommit(s) {
                    commitValue = s
                } else {
                    problem("payload.commit: expected 7 to 40 hexadecimal characters")
                }
            } else {
                problem("payload.commit: expected a string")
            }
        }

        var branchValue: String?
        if let branch {
            if case .string(let s) = branch {
                if let why = JobValidation.branchProblem(s) {
                    problem("payload.branch: not a valid branch name (\(why))")
                } else {
                    branchValue = s
                }
            } else {
                problem("payload.branch: expected a string")
            }
        }

        guard let slug, let sourceURL, let commitValue, let branchValue else { return nil }
        return JobPayload.Checkout(slug: slug, sourceURL: sourceURL, commit: commitValue, branch: branchValue)
    }

    mutating func env(_ value: JSONValue?) -> [JobPayload.EnvVar] {
        guard let value = Validator.present(value) else { return [] }
        guard case .array(let items) = value else {
            problem("payload.config.env: expected an array of NAME=value strings or {\"name\", \"value\", \"secure\"} objects")
            return []
        }
        var result: [JobPayload.EnvVar] = []
        for (i, item) in items.enumerated() {
            let path = "payload.config.env[\(i)]"
            let name: String, value: String
            var secure = false
            switch item {
            case .string(let s):
                guard let eq = s.firstIndex(of: "=") else { problem("\(path): expected NAME=value"); continue }
                name = String(s[..<eq])
                value = String(s[s.index(after: eq)...])
            case .object(let o):
                rejectUnknownKeys(o, allowed: JobDecoder.envObjectKeys, path: path)
                guard case .string(let n)? = o["name"] else { problem("\(path).name: expected a string"); continue }
                guard case .string(let v)? = o["value"] else { problem("\(path).value: expected a string"); continue }
                switch Validator.present(o["secure"]) {
                case nil: break
                case .bool(let b)?: secure = b
                default: problem("\(path).secure: expected true or false"); continue
                }
                name = n
                value = v
            default:
                problem("\(path): expected a NAME=value string or a {\"name\", \"value\", \"secure\"} object")
                continue
            }
            var ok = true
            if !JobValidation.isValidEnvName(name) {
                problem("\(path): invalid variable name (must match [A-Za-z_][A-Za-z0-9_]*)")
                ok = false
            }
            if value.utf8.contains(0) {
                problem("\(path): value must not contain NUL bytes")
                ok = false
            }
            if ok { result.append(JobPayload.EnvVar(name: name, value: value, secure: secure)) }
        }
        return result
    }

    mutating func commands(_ value: JSONValue?, path: String) -> [String] {
        guard let value = Validator.present(value) else { return [] }
        switch value {
        case .string(let s):
            return checkCommand(s, path: path) ? [s] : []
        case .array(let items):
            var result: [String] = []
            for (i, item) in items.enumerated() {
                guard case .string(let s) = item else { problem("\(path)[\(i)]: expected a string"); continue }
                if checkCommand(s, path: "\(path)[\(i)]") { result.append(s) }
            }
            return result
        default:
            problem("\(path): expected a string or an array of strings")
            return []
        }
    }

    mutating func checkCommand(_ s: String, path: String) -> Bool {
        if s.utf8.contains(0) {
            problem("\(path): must not contain NUL bytes")
            return false
        }
        if s.utf8.count > JobDecoder.maxCommandBytes {
            problem("\(path): longer than \(JobDecoder.maxCommandBytes) bytes")
            return false
        }
        return true
    }

    mutating func seconds(_ value: JSONValue?, path: String) -> Int? {
        guard let value = Validator.present(value) else { return nil }
        guard case .int(let n) = value, n > 0 else {
            problem("\(path): expected a positive integer (seconds)")
            return nil
        }
        guard n <= Int64(JobDecoder.maxTimeoutSeconds) else {
            problem("\(path): must be at most \(JobDecoder.maxTimeoutSeconds)")
            return nil
        }
        return Int(n)
    }
}

/// Field rules shared by the decoder and anything that builds payloads (e.g. `tworker enqueue`).
public enum JobValidation {
    static func isControl(_ u: Unicode.Scalar) -> Bool {
        u.value < 0x20 || (u.value >= 0x7F && u.value < 0xA0)
    }

    /// `owner/name`, each part 1...100 of `[A-Za-z0-9_.-]`, neither `.` nor `..`.
    public static func isValidSlug(_ slug: String) -> Bool {
        let parts = slug.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return false }
        return parts.allSatisfy { part in
            guard (1...100).contains(part.utf8.count), part != ".", part != ".." else { return false }
            return part.utf8.allSatisfy { b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
                    || b == 0x5F || b == 0x2E || b == 0x2D
            }
        }
    }

    /// 7...40 hexadecimal characters (an abbreviated or full SHA-1).
    public static func isValidCommit(_ commit: String) -> Bool {
        (7...40).contains(commit.utf8.count) && commit.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66)
        }
    }

    /// `[A-Za-z_][A-Za-z0-9_]*`.
    public static func isValidEnvName(_ name: String) -> Bool {
        guard let first = name.utf8.first else { return false }
        let isAlpha = { (b: UInt8) in (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F }
        return isAlpha(first) && name.utf8.allSatisfy { isAlpha($0) || ($0 >= 0x30 && $0 <= 0x39) }
    }

    /// Why `url` can't be handed to `git clone`, or nil if it can.
    public static func sourceURLProblem(_ url: String) -> String? {
        if url.isEmpty { return "must not be empty" }
        if url.utf8.first == UInt8(ascii: "-") { return "must not start with '-'" }
        if url.unicodeScalars.contains(where: isControl) { return "must not contain control characters" }
        return nil
    }

    /// Why `name` fails `git check-ref-format --branch` (plus a few shell metacharacters), or nil if valid.
    ///
    /// Works on UTF-8 bytes like git does: Character-level checks would miss e.g. "." followed by a combining mark.
    public static func branchProblem(_ name: String) -> String? {
        let b = Array(name.utf8)
        func has(_ s: String) -> Bool {
            let n = Array(s.utf8)
            guard b.count >= n.count else { return false }
            return (0...(b.count - n.count)).contains { Array(b[$0..<$0 + n.count]) == n }
        }
        if b.isEmpty { return "empty" }
        if b.count > 255 { return "longer than 255 bytes" }
        if name == "@" { return "is \"@\"" }
        if b.first == UInt8(ascii: "-") { return "starts with '-'" }
        if b.first == UInt8(ascii: "/") { return "starts with '/'" }
        if b.last == UInt8(ascii: "/") { return "ends with '/'" }
        if b.last == UInt8(ascii: ".") { return "ends with '.'" }
        if has("..") { return "contains \"..\"" }
        if has("//") { return "contains \"//\"" }
        if has("@{") { return "contains \"@{\"" }
        let forbidden = Array("~^:?*[\\".utf8)
        let shellMeta = Array("`$;|&<>()'\"!#".utf8)
        for c in b {
            if c < 0x20 || c == 0x7F { return "contains a control character" }
            if c == 0x20 { return "contains a space" }
            if forbidden.contains(c) { return "contains one of ~^:?*[\\" }
            // git allows these, but nothing good comes of a branch named `$(…)` or `a;b`.
            if shellMeta.contains(c) { return "contains a shell metacharacter" }
        }
        for component in b.split(separator: UInt8(ascii: "/")) {
            if component.first == UInt8(ascii: ".") { return "a component starts with '.'" }
            if component.count >= 5, Array(component.suffix(5)) == Array(".lock".utf8) {
                return "a component ends with \".lock\""
            }
        }
        return nil
    }
}
