import Foundation
import RedisClient
import Yams

/// The key table: one line per configuration key. Order matters where a default reads an
/// earlier key (`local.workspace` follows `state_dir`, `vms.name_prefix` follows `env`).
enum ConfigSchema {
    static let keys: [ConfigKey] = [
        .string("env", "development", \.env, file: false),
        .queueList("queue", "builds", \.queue, env: "QUEUE"),
        .stringList("workload", [], \.workload),
        .choice("provider", ProviderKind.local, \.provider),
        .string("host", { _, context in context.hostname }, \.host),

        .redisURL("redis.url", "embedded", \.redis.url, env: "REDIS_URL"),
        .string("redis.namespace", "resque", \.redis.namespace, env: "TWORKER_REDIS_NAMESPACE"),
        .stringList("redis.sentinels", [], \.redis.sentinels, env: "TWORKER_REDIS_SENTINELS"),
        .optionalString("redis.master_name", \.redis.masterName, env: "TWORKER_REDIS_MASTER_NAME"),
        // With Sentinel there is a replica to confirm writes; without, WAIT would only wait.
        .int("redis.wait_replicas", { config, _ in config.redis.sentinels.isEmpty ? 0 : 1 }, 0...16, \.redis.waitReplicas),
        .int("redis.wait_timeout", 1000, 1...60_000, \.redis.waitTimeout),

        .int("vms.count", { config, _ in config.workload.isEmpty ? 1 : config.workload.count }, 1...64, \.vms.count),
        .string("vms.name_prefix", { config, _ in "tworker-\(config.env)-" }, \.vms.namePrefix, allowEmpty: true),
        .int("vms.memory", 1536, 128...262_144, \.vms.memory),
        .int("vms.cpus", 1, 1...64, \.vms.cpus),
        .int("vms.max_consecutive_failures", 3, 1...100, \.vms.maxConsecutiveFailures),
        .int("vms.max_unavailable", 1, 1...64, \.vms.maxUnavailable),
        .path("vms.base_box", { _, _ in "boxes/base.box" }, \.vms.baseBox),
        .stringList("vms.provision", ["base.sh"], \.vms.provision),
        .optionalPath("vms.base_image", \.vms.baseImage),

        .int("timeouts.hard_limit", 2400, 1...86_400, \.timeouts.hardLimit),
        .int("timeouts.log_silence", 600, 1...86_400, \.timeouts.logSilence),
        .int("timeouts.before_install", 300, 1...86_400, \.timeouts.beforeInstall),
        .int("timeouts.install", 300, 1...86_400, \.timeouts.install),
        .int("timeouts.before_script", 300, 1...86_400, \.timeouts.beforeScript),
        .int("timeouts.script", 600, 1...86_400, \.timeouts.script),
        .int("timeouts.after_script", 120, 1...86_400, \.timeouts.afterScript),
        .int("timeouts.vm_boot", 120, 1...86_400, \.timeouts.vmBoot),
        .int("timeouts.vboxmanage", 120, 1...86_400, \.timeouts.vboxmanage),
        .int("timeouts.qemu", 60, 1...86_400, \.timeouts.qemu),

        .int("limits.log_length", 4_194_304, atLeast: 1024, \.limits.logLength),
        .int("limits.max_attempts", 3, 1...100, \.limits.maxAttempts),
        .int("limits.worker_memory", 256, 16...1_048_576, \.limits.workerMemory),
        .int("heartbeat.interval", 10, 1...3600, \.heartbeat.interval),
        .int("reporting.retention", 604_800, atLeast: 60, \.reporting.retention),

        .path("state_dir", { _, _ in "var" }, \.stateDir, env: "TWORKER_STATE_DIR"),
        .path("local.workspace", { config, _ in config.stateDir + "/local" }, \.local.workspace),

        .string("ssh.user", "travis", \.ssh.user),
        .optionalString("ssh.key", \.ssh.key),
        .string("ssh.host", "127.0.0.1", \.ssh.host),
        .int("ssh.port_base", 2220, 1...65_000, \.ssh.portBase),

        .string("virtualbox.vboxmanage", "VBoxManage", \.virtualbox.vboxmanage),
        .choice("virtualbox.start_type", ["headless", "gui", "sdl", "separate"], "headless", \.virtualbox.startType),
        .string("qemu.binary", "qemu-system-x86_64", \.qemu.binary),
        .string("qemu.img", "qemu-img", \.qemu.img),
        .choice("qemu.accel", QEMUAccel.auto, \.qemu.accel),
        .stringList("qemu.extra_args", [], \.qemu.extraArgs),
        .optionalPath("qemu.kernel", \.qemu.kernel),
        .optionalPath("qemu.initrd", \.qemu.initrd),
        .optionalString("qemu.append", \.qemu.append),
        .string("vagrant.vagrant", "vagrant", \.vagrant.vagrant),
        .string("http.listen", "127.0.0.1:9252", \.http.listen, allowEmpty: true),
        .optionalString("http.token", \.http.token),
        .path("vagrant.directory", { _, _ in "boxes" }, \.vagrant.directory),
        .stringList("secrets.redact", JobSecrets.defaultRedact, \.secrets.redact),
        .optionalPath("hooks.before_job", \.hooks.beforeJob),
        .optionalPath("hooks.after_job", \.hooks.afterJob),
        .int("hooks.timeout", 60, 1...86_400, \.hooks.timeout),

        .optionalString("user", \.user),
        .optionalString("group", \.group),
        .bool("allow_root", false, \.allowRoot),

        .optionalString("vm", \.vm, file: false, env: "VM"),
        .bool("verbose", false, \.verbose, file: false, env: "VERBOSE"),
    ]

    /// Environment variables that set a key and beat its own variable (Resque reads `QUEUES` before `QUEUE`).
    static let environmentAliases: [(name: String, key: String)] = [("QUEUES", "queue")]

    /// File keys by dotted path.
    static let fileKeys: [String: ConfigKey] = Dictionary(
        uniqueKeysWithValues: keys.filter(\.inFile).map { ($0.path, $0) })

    /// Dotted paths that are mappings of keys in a file ("timeouts", ...).
    static let groups: Set<String> = Set(fileKeys.keys.flatMap { path -> [String] in
        let parts = path.split(separator: ".").map(String.init)
        return (1..<max(parts.count, 1)).map { parts[0..<$0].joined(separator: ".") }
    })

    /// The names allowed directly under `prefix` ("" = top level), for "did you mean" hints.
    static func children(of prefix: String) -> [String] {
        let all = Array(fileKeys.keys) + Array(groups)
        return all.compactMap { path in
            if prefix.isEmpty { return path.contains(".") ? nil : path }
            guard path.hasPrefix(prefix + ".") else { return nil }
            let rest = path.dropFirst(prefix.count + 1)
            return rest.contains(".") ? nil : String(rest)
        }
    }
}

/// A typed configuration value, as it comes from a file, the environment or a default.
enum ConfigValue: Sendable, Equatable {
    case string(String)
    case int(Int)
    case bool(Bool)
    case list([String])
    case null

    /// Text for `tworker config`.
    var text: String {
        switch self {
        case .string(let s): s
        case .int(let i): String(i)
        case .bool(let b): String(b)
        case .list(let items): "[" + items.joined(separator: ", ") + "]"
        case .null: "null"
        }
    }
}

/// Type and constraints of one key's value; converts file nodes and environment strings.
enum ConfigKind: Sendable {
    case string(allowEmpty: Bool)
    case optionalString
    case int(min: Int, max: Int?)
    case bool
    case choice([String])
    case redisURL
    /// A directory; relative values are resolved against the current directory.
    case path
    /// A list of non-empty strings (lists replace, never merge).
    case stringList
    /// A file that may be unset; relative values are resolved against the current directory.
    case optionalPath
    /// A queue name, `a,b` or a list of names (`QueueList`), stored as `a,b`.
    case queueList

    /// Checks a value from a file; the message is the part after `key.path: `.
    func convert(_ tree: ConfigTree) -> Result<ConfigValue, ConfigMessage> {
        if case .queueList = self { return Self.queueListValue(tree) }
        if case .stringList = self {
            guard case .list(let items, _) = tree else {
                return .failure(ConfigMessage("expected a list of strings, got \(tree.typeDescription)"))
            }
            var strings: [String] = []
            for (index, item) in items.enumerated() {
                guard case .scalar(let scalar) = item, scalar.type != .null, !scalar.text.isEmpty else {
                    return .failure(ConfigMessage("item \(index + 1): expected a non-empty string, got \(item.typeDescription)"))
                }
                strings.append(scalar.text)
            }
            return .success(.list(strings))
        }
        guard case .scalar(let scalar) = tree else {
            return .failure(ConfigMessage("expected \(expected), got \(tree.typeDescription)"))
        }
        switch self {
        case .int:
            guard scalar.type == .int else {
                return .failure(ConfigMessage("expected \(expected), got \(tree.typeDescription)"))
            }
            guard let value = Int(yamlInteger: scalar.text) else {
                return .failure(ConfigMessage("integer \(scalar.text) is too large"))
            }
            return checked(.int(value))
        case .bool:
            guard scalar.type == .bool, let value = Bool.construct(from: Node.Scalar(scalar.text)) else {
                return .failure(ConfigMessage("expected \(expected), got \(tree.typeDescription)"))
            }
            return .success(.bool(value))
        case .stringList, .queueList:
            return .failure(ConfigMessage("expected \(expected)"))
        case .optionalString, .optionalPath:
            return scalar.type == .null ? .success(.null) : checked(.string(scalar.text))
        case .string, .choice, .redisURL, .path:
            // Any scalar reads as its text (`queue: 2024` is the queue "2024"); null is a mistake.
            guard scalar.type != .null else {
                return .failure(ConfigMessage("expected \(expected), got null"))
            }
            return checked(.string(scalar.text))
        }
    }

    /// Checks a value from an environment variable.
    func parse(_ text: String) -> Result<ConfigValue, ConfigMessage> {
        switch self {
        case .int:
            guard let value = Int(text.trimmingCharacters(in: .whitespaces)) else {
                return .failure(ConfigMessage("expected \(expected), got \"\(text)\""))
            }
            return checked(.int(value))
        case .bool:
            switch text.lowercased() {
            case "true", "1", "yes": return .success(.bool(true))
            case "false", "0", "no": return .success(.bool(false))
            default: return .failure(ConfigMessage("expected true, 1, yes, false, 0 or no, got \"\(text)\""))
            }
        case .string, .optionalString, .optionalPath, .choice, .redisURL, .path:
            return checked(.string(text))
        case .queueList:
            return Self.queueListValue(text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) })
        case .stringList:
            // Comma-separated in the environment.
            return .success(.list(text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }))
        }
    }

    /// Range, enum and format checks shared by files and environment.
    private func checked(_ value: ConfigValue) -> Result<ConfigValue, ConfigMessage> {
        switch (self, value) {
        case (.int(let min, let max?), .int(let i)) where i < min || i > max:
            return .failure(ConfigMessage("must be between \(min) and \(max), got \(i)"))
        case (.int(let min, nil), .int(let i)) where i < min:
            return .failure(ConfigMessage("must be at least \(min), got \(i)"))
        case (.string(allowEmpty: false), .string(let s)) where s.isEmpty,
             (.optionalString, .string(let s)) where s.isEmpty,
             (.optionalPath, .string(let s)) where s.isEmpty,
             (.path, .string(let s)) where s.isEmpty:
            return .failure(ConfigMessage("must not be empty"))
        case (.choice(let choices), .string(let s)) where !choices.contains(s):
            return .failure(ConfigMessage(
                "invalid value \"\(s)\" (expected one of: \(choices.joined(separator: ", ")))"))
        case (.redisURL, .string(let s)) where s.hasPrefix("rediss://"):
            // The parser's own words (which point at the spiped/stunnel README section).
            do {
                _ = try RedisEndpoint(url: s)
                return .success(value)
            } catch {
                return .failure(ConfigMessage((error as? RedisURLError)?.message ?? "\(error)"))
            }
        case (.redisURL, .string(let s))
            where s != "embedded" && !s.hasPrefix("redis://") && !s.hasPrefix("unix://"):
            return .failure(ConfigMessage(
                "invalid Redis URL \"\(s)\" (expected embedded, redis://... or unix://...)"))
        default:
            return .success(value)
        }
    }

    /// Turns a checked value into its effective form (absolute paths).
    func finalized(_ value: ConfigValue, _ context: ConfigKey.Context) -> ConfigValue {
        switch self {
        case .path, .optionalPath: break
        default: return value
        }
        guard case .string(let s) = value else { return value }
        return .string(absolutePath(s, relativeTo: context.currentDirectory))
    }

    private var expected: String {
        switch self {
        case .int: "an integer"
        case .bool: "a boolean"
        case .string, .optionalString, .optionalPath, .redisURL, .path: "a string"
        case .choice: "a string"
        case .stringList: "a list of strings"
        case .queueList: "a queue name or a list of queue names"
        }
    }
}

/// The text after `key.path: ` in a problem line.
struct ConfigMessage: Error, Equatable {
    var text: String
    init(_ text: String) { self.text = text }
}

/// One entry of the key table.
struct ConfigKey: Sendable {
    /// What a default may depend on besides earlier keys.
    struct Context: Sendable {
        var currentDirectory: String
        var hostname: String
    }

    typealias Default = @Sendable (WorkerConfig, Context) -> ConfigValue

    /// Dotted path, also the YAML key path.
    let path: String
    let kind: ConfigKind
    /// Whether the key may appear in a config file.
    let inFile: Bool
    /// Environment variable that overrides it, if any.
    let envVar: String?
    let defaultValue: Default
    let set: @Sendable (inout WorkerConfig, ConfigValue) -> Void
    let get: @Sendable (WorkerConfig) -> ConfigValue

    static func int(_ path: String, _ value: Int, _ range: ClosedRange<Int>,
                    _ field: WritableKeyPath<WorkerConfig, Int> & Sendable,
                    file: Bool = true, env: String? = nil) -> ConfigKey {
        int(path, value, kind: .int(min: range.lowerBound, max: range.upperBound), field, file: file, env: env)
    }

    static func int(_ path: String, _ value: Int, atLeast min: Int,
                    _ field: WritableKeyPath<WorkerConfig, Int> & Sendable,
                    file: Bool = true, env: String? = nil) -> ConfigKey {
        int(path, value, kind: .int(min: min, max: nil), field, file: file, env: env)
    }

    static func int(_ path: String, _ value: @escaping @Sendable (WorkerConfig, Context) -> Int, _ range: ClosedRange<Int>,
                    _ field: WritableKeyPath<WorkerConfig, Int> & Sendable) -> ConfigKey {
        ConfigKey(path: path, kind: .int(min: range.lowerBound, max: range.upperBound), inFile: true, envVar: nil,
                  defaultValue: { config, context in .int(value(config, context)) },
                  set: { config, v in if case .int(let i) = v { config[keyPath: field] = i } },
                  get: { .int($0[keyPath: field]) })
    }

    static func queueList(_ path: String, _ value: String, _ field: WritableKeyPath<WorkerConfig, String> & Sendable,
                          env: String? = nil) -> ConfigKey {
        stringKey(path, .queueList, { _, _ in value }, field, file: true, env: env)
    }

    private static func int(_ path: String, _ value: Int, kind: ConfigKind,
                            _ field: WritableKeyPath<WorkerConfig, Int> & Sendable,
                            file: Bool, env: String?) -> ConfigKey {
        ConfigKey(path: path, kind: kind, inFile: file, envVar: env,
                  defaultValue: { _, _ in .int(value) },
                  set: { config, v in if case .int(let i) = v { config[keyPath: field] = i } },
                  get: { .int($0[keyPath: field]) })
    }

    static func bool(_ path: String, _ value: Bool, _ field: WritableKeyPath<WorkerConfig, Bool> & Sendable,
                     file: Bool = true, env: String? = nil) -> ConfigKey {
        ConfigKey(path: path, kind: .bool, inFile: file, envVar: env,
                  defaultValue: { _, _ in .bool(value) },
                  set: { config, v in if case .bool(let b) = v { config[keyPath: field] = b } },
                  get: { .bool($0[keyPath: field]) })
    }

    static func string(_ path: String, _ value: String, _ field: WritableKeyPath<WorkerConfig, String> & Sendable,
                       file: Bool = true, env: String? = nil, allowEmpty: Bool = false) -> ConfigKey {
        string(path, { _, _ in value }, field, file: file, env: env, allowEmpty: allowEmpty)
    }

    static func string(_ path: String, _ value: @escaping @Sendable (WorkerConfig, Context) -> String,
                       _ field: WritableKeyPath<WorkerConfig, String> & Sendable,
                       file: Bool = true, env: String? = nil, allowEmpty: Bool = false) -> ConfigKey {
        stringKey(path, .string(allowEmpty: allowEmpty), value, field, file: file, env: env)
    }

    static func path(_ path: String, _ value: @escaping @Sendable (WorkerConfig, Context) -> String,
                     _ field: WritableKeyPath<WorkerConfig, String> & Sendable,
                     file: Bool = true, env: String? = nil) -> ConfigKey {
        stringKey(path, .path, value, field, file: file, env: env)
    }

    static func redisURL(_ path: String, _ value: String, _ field: WritableKeyPath<WorkerConfig, String> & Sendable,
                         file: Bool = true, env: String? = nil) -> ConfigKey {
        stringKey(path, .redisURL, { _, _ in value }, field, file: file, env: env)
    }

    static func choice(_ path: String, _ choices: [String], _ value: String,
                       _ field: WritableKeyPath<WorkerConfig, String> & Sendable,
                       file: Bool = true, env: String? = nil) -> ConfigKey {
        stringKey(path, .choice(choices), { _, _ in value }, field, file: file, env: env)
    }

    static func choice<E: RawRepresentable & CaseIterable & Sendable>(
        _ path: String, _ value: E, _ field: WritableKeyPath<WorkerConfig, E> & Sendable,
        file: Bool = true, env: String? = nil
    ) -> ConfigKey where E.RawValue == String {
        ConfigKey(path: path, kind: .choice(E.allCases.map(\.rawValue)), inFile: file, envVar: env,
                  defaultValue: { _, _ in .string(value.rawValue) },
                  set: { config, v in
                      if case .string(let s) = v, let e = E(rawValue: s) { config[keyPath: field] = e }
                  },
                  get: { .string($0[keyPath: field].rawValue) })
    }

    static func stringList(_ path: String, _ value: [String], _ field: WritableKeyPath<WorkerConfig, [String]> & Sendable,
                           file: Bool = true, env: String? = nil) -> ConfigKey {
        ConfigKey(path: path, kind: .stringList, inFile: file, envVar: env,
                  defaultValue: { _, _ in .list(value) },
                  set: { config, v in if case .list(let items) = v { config[keyPath: field] = items } },
                  get: { .list($0[keyPath: field]) })
    }

    static func optionalString(_ path: String, _ field: WritableKeyPath<WorkerConfig, String?> & Sendable,
                               file: Bool = true, env: String? = nil) -> ConfigKey {
        ConfigKey(path: path, kind: .optionalString, inFile: file, envVar: env,
                  defaultValue: { _, _ in .null },
                  set: { config, v in
                      if case .string(let s) = v { config[keyPath: field] = s } else { config[keyPath: field] = nil }
                  },
                  get: { config in config[keyPath: field].map(ConfigValue.string) ?? .null })
    }

    static func optionalPath(_ path: String, _ field: WritableKeyPath<WorkerConfig, String?> & Sendable,
                             file: Bool = true, env: String? = nil) -> ConfigKey {
        var key = optionalString(path, field, file: file, env: env)
        key = ConfigKey(path: key.path, kind: .optionalPath, inFile: key.inFile, envVar: key.envVar,
                        defaultValue: key.defaultValue, set: key.set, get: key.get)
        return key
    }

    private static func stringKey(_ path: String, _ kind: ConfigKind,
                                  _ value: @escaping @Sendable (WorkerConfig, Context) -> String,
                                  _ field: WritableKeyPath<WorkerConfig, String> & Sendable,
                                  file: Bool, env: String?) -> ConfigKey {
        ConfigKey(path: path, kind: kind, inFile: file, envVar: env,
                  defaultValue: { config, context in .string(value(config, context)) },
                  set: { config, v in if case .string(let s) = v { config[keyPath: field] = s } },
                  get: { .string($0[keyPath: field]) })
    }
}

extension Int {
    /// YAML 1.1 integer text (as tagged by Yams: decimal, 0x.., 0o.., underscores, base 60),
    /// without overflow. Not Yams' `Int.construct`: its base-60 arithmetic traps on overflow,
    /// and a config file must never crash tworker.
    init?(yamlInteger text: String) {
        var s = text.replacingOccurrences(of: "_", with: "")
        var sign = 1
        if s.hasPrefix("-") { sign = -1; s.removeFirst() } else if s.hasPrefix("+") { s.removeFirst() }
        if s.contains(":") {
            // Base 60 ("1:30" is 90), which YAML 1.1 tags as an integer.
            var total = 0
            for part in s.split(separator: ":") {
                guard let digit = Int(part) else { return nil }
                let (shifted, o1) = total.multipliedReportingOverflow(by: 60)
                let (sum, o2) = shifted.addingReportingOverflow(digit)
                guard !o1, !o2 else { return nil }
                total = sum
            }
            self = sign * total
            return
        }
        let radix: Int
        if s.hasPrefix("0x") { radix = 16; s.removeFirst(2) }
        else if s.hasPrefix("0o") { radix = 8; s.removeFirst(2) }
        else if s.hasPrefix("0b") { radix = 2; s.removeFirst(2) }
        else if s.count > 1, s.hasPrefix("0") { radix = 8; s.removeFirst() }
        else { radix = 10 }
        guard let magnitude = Int(s, radix: radix) else { return nil }
        self = sign * magnitude
    }
}

/// `path` made absolute against `base` and cleaned of `.` and `..` without touching the disk.
func absolutePath(_ path: String, relativeTo base: String) -> String {
    let joined = path.hasPrefix("/") ? path : base + "/" + path
    var parts: [Substring] = []
    for part in joined.split(separator: "/", omittingEmptySubsequences: true) {
        if part == "." { continue }
        if part == ".." { if !parts.isEmpty { parts.removeLast() }; continue }
        parts.append(part)
    }
    return "/" + parts.joined(separator: "/")
}
