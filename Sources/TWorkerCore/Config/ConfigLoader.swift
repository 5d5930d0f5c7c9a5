import Foundation
import RedisClient

/// Where an effective configuration value came from.
public struct ConfigOrigin: Sendable, Equatable, Hashable, CustomStringConvertible {
    /// The kinds of source.
    public enum Kind: Sendable, Equatable, Hashable {
        case file(path: String, line: Int)
        case environment(name: String)
        case commandLine(flag: String)
        case `default`
    }

    public var kind: Kind

    public init(_ kind: Kind) { self.kind = kind }

    /// A config file, at the line of the key.
    public static func file(_ path: String, line: Int) -> ConfigOrigin { ConfigOrigin(.file(path: path, line: line)) }
    /// An environment variable such as `REDIS_URL`.
    public static func environment(_ name: String) -> ConfigOrigin { ConfigOrigin(.environment(name: name)) }
    /// A command-line option such as `--env`.
    public static func commandLine(_ flag: String) -> ConfigOrigin { ConfigOrigin(.commandLine(flag: flag)) }
    /// The built-in default.
    public static let `default` = ConfigOrigin(.default)

    public var description: String {
        switch kind {
        case .file(let path, let line): "\(path):\(line)"
        case .environment(let name): "environment variable \(name)"
        case .commandLine(let flag): "command-line option \(flag)"
        case .default: "default"
        }
    }
}

/// The effective configuration with the origin of each value.
public struct LoadedConfig: Sendable {
    public var config: WorkerConfig
    /// Origin per dotted key path, e.g. `timeouts.script`.
    public var origins: [String: ConfigOrigin]
    /// The config files actually read, in merge order.
    public var files: [String]

    public init(config: WorkerConfig, origins: [String: ConfigOrigin], files: [String]) {
        self.config = config
        self.origins = origins
        self.files = files
    }

    /// `tworker config` output: text = one line per key "key.path: value    (origin)" sorted by key;
    /// json = {"key.path": {"value": ..., "origin": "..."}} pretty, sorted keys. No trailing newline (print adds one).
    public func render(json: Bool) -> String {
        let keys = ConfigSchema.keys.sorted { $0.path < $1.path }
        let rows = keys.map { key in
            (key.path, key.get(config), (origins[key.path] ?? .default).description)
        }
        guard json else {
            return rows.map { "\($0.0): \($0.1.text)    (\($0.2))" }.joined(separator: "\n")
        }
        let object = Dictionary(uniqueKeysWithValues: rows.map { ($0.0, RenderedValue(value: $0.1, origin: $0.2)) })
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        // Encoding strings, ints, bools and nulls cannot fail.
        let data = (try? encoder.encode(object)) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    private struct RenderedValue: Encodable {
        var value: ConfigValue
        var origin: String
    }
}

extension ConfigValue: Encodable {
    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let s): try container.encode(s)
        case .int(let i): try container.encode(i)
        case .bool(let b): try container.encode(b)
        case .list(let items): try container.encode(items)
        case .null: try container.encodeNil()
        }
    }
}

/// Every problem found in the config files and environment, one formatted line each.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    /// Lines like `config/worker.yml:3: timeouts.script: must be between 1 and 86400, got 0`.
    public var problems: [String]

    public init(problems: [String]) { self.problems = problems }

    public var description: String { problems.joined(separator: "\n") }
}

/// Reads `worker.<env>.yml` and `worker.yml`, merges them, applies environment overrides and defaults.
public struct ConfigLoader: Sendable {
    public var configDir: String?
    public var env: String?
    public var environment: [String: String]
    public var currentDirectory: String
    /// `--vm`; beats `VM`.
    public var vm: String?
    /// `--verbose`; beats `VERBOSE`.
    public var verbose: Bool?
    /// Replaces gethostname(2) for the `host` default (tests).
    var hostname: String?
    /// Reads `secrets.env` from the config directory: only the commands that run jobs need it,
    /// and only the workers' account may read it.
    public var readsSecrets = false

    public init(configDir: String? = nil, env: String? = nil,
                environment: [String: String] = ProcessInfo.processInfo.environment,
                currentDirectory: String = FileManager.default.currentDirectoryPath,
                vm: String? = nil, verbose: Bool? = nil) {
        self.configDir = configDir
        self.env = env
        self.environment = environment
        self.currentDirectory = currentDirectory
        self.vm = vm
        self.verbose = verbose
    }

    /// Problems sort: command line, then files in load order, then environment.
    private static let commandLineRank = 0
    private static let environmentRank = Int.max

    public func load() throws(ConfigError) -> LoadedConfig {
        var problems: [ConfigProblem] = []

        let (envName, envOrigin) = selectEnv()
        let envNameValid = Self.isValidEnvName(envName)
        if !envNameValid {
            let message = "invalid environment name \"\(envName)\" (use letters, digits, '-' and '_')"
            switch envOrigin.kind {
            case .environment(let name):
                problems.append(ConfigProblem(rank: Self.environmentRank, line: -1,
                                              text: "environment: \(name): \(message)"))
            default:
                problems.append(ConfigProblem(rank: Self.commandLineRank, line: 0,
                                              text: "command line: --env: \(message)"))
            }
        }

        // Config dir: flag, TWORKER_CONFIG_DIR, ./config. A dir someone named must exist.
        let explicitDir = configDir ?? nonEmpty("TWORKER_CONFIG_DIR")
        let dir = explicitDir ?? "./config"
        let absoluteDir = absolutePath(dir, relativeTo: currentDirectory)
        if explicitDir != nil, !Self.isDirectory(absoluteDir) {
            problems.append(ConfigProblem(rank: Self.commandLineRank, line: 1,
                                          text: "\(dir): config directory not found"))
        }

        // Env file first, the operator's local file merged over it.
        var names = envNameValid ? ["worker.\(envName).yml"] : []
        names.append("worker.yml")
        var merged = ConfigTree.mapping([], ConfigLocation(file: "", line: 0))
        var files: [String] = []
        for (index, name) in names.enumerated() {
            let display = Self.displayPath(dir, name)
            let rank = index + 1
            switch Self.readTree(display: display, absolute: absoluteDir + "/" + name) {
            case .absent:
                continue
            case .unreadable(let message):
                files.append(display)
                problems.append(ConfigProblem(rank: rank, line: 0, text: "\(display): \(message)"))
            case .parsed(.failure(let problem)):
                files.append(display)
                problems.append(ConfigProblem(rank: rank, line: problem.line,
                                              text: "\(display):\(problem.line): \(problem.text)"))
            case .parsed(.success(let tree)):
                files.append(display)
                let found = Self.validate(tree)
                problems += found.map {
                    ConfigProblem(rank: rank, line: $0.line, text: "\(display):\($0.line): \($0.text)")
                }
                if found.isEmpty { merged = merged.merging(tree) }
            }
        }

        // Environment overrides, then command-line flags over them.
        var overrides: [String: (ConfigValue, ConfigOrigin)] = [:]
        for (index, key) in ConfigSchema.keys.enumerated() {
            guard let name = key.envVar, let text = nonEmpty(name) else { continue }
            switch key.kind.parse(text) {
            case .success(let value): overrides[key.path] = (value, .environment(name))
            case .failure(let message):
                problems.append(ConfigProblem(rank: Self.environmentRank, line: index,
                                              text: "environment: \(name): \(message.text)"))
            }
        }
        for alias in ConfigSchema.environmentAliases {
            guard let text = nonEmpty(alias.name), let key = ConfigSchema.keys.first(where: { $0.path == alias.key }) else { continue }
            switch key.kind.parse(text) {
            case .success(let value): overrides[key.path] = (value, .environment(alias.name))
            case .failure(let message):
                problems.append(ConfigProblem(rank: Self.environmentRank, line: ConfigSchema.keys.count,
                                              text: "environment: \(alias.name): \(message.text)"))
            }
        }
        if let vm, !vm.isEmpty { overrides["vm"] = (.string(vm), .commandLine("--vm")) }
        if let verbose { overrides["verbose"] = (.bool(verbose), .commandLine("--verbose")) }

        guard problems.isEmpty else {
            // Stable sort keeps discovery order within a line.
            let sorted = problems.enumerated().sorted {
                ($0.element.rank, $0.element.line, $0.offset) < ($1.element.rank, $1.element.line, $1.offset)
            }
            throw ConfigError(problems: sorted.map(\.element.text))
        }

        overrides["env"] = (.string(envName), envOrigin)
        let context = ConfigKey.Context(currentDirectory: currentDirectory, hostname: hostname ?? currentHostname())
        var (config, origins) = Self.resolve(env: envName, tree: merged, overrides: overrides, context: context)
        let missing = Self.providerRequirements(config, origins: origins) + Self.listenerRequirements(config, origins: origins)
            + Self.workloadRequirements(config, origins: origins) + Self.sentinelRequirements(config, origins: origins)
        guard missing.isEmpty else { throw ConfigError(problems: missing) }
        if readsSecrets {
            config.secrets.variables = try SecretsFile.load(path: absoluteDir + "/" + SecretsFile.name,
                                                            display: Self.displayPath(dir, SecretsFile.name))
        }
        return LoadedConfig(config: config, origins: origins, files: files)
    }

    /// Keys a provider cannot run without, named at the line that chose the provider.
    static func providerRequirements(_ config: WorkerConfig, origins: [String: ConfigOrigin]) -> [String] {
        guard config.provider == .qemu else { return [] }
        let origin = origins["provider"].map { "\($0): " } ?? ""
        var problems: [String] = []
        if config.vms.baseImage == nil {
            problems.append("\(origin)vms.base_image: must be set for provider: qemu (a qcow2 disk; boxes/qemu/build-test-image DIR makes one)")
        }
        if config.qemu.initrd != nil || config.qemu.append != nil, config.qemu.kernel == nil {
            problems.append("\(origin)qemu.kernel: must be set when qemu.initrd or qemu.append is (they belong to a direct kernel boot)")
        }
        return problems
    }

    /// `redis.sentinels` must be `host:port` items and comes with `redis.master_name` (and the
    /// other way round); `redis.url` may then only add credentials (a `redis://` URL).
    static func sentinelRequirements(_ config: WorkerConfig, origins: [String: ConfigOrigin]) -> [String] {
        let redis = config.redis
        let sentinelsAt = origins["redis.sentinels"].map { "\($0): " } ?? ""
        if redis.sentinels.isEmpty {
            guard redis.masterName != nil else { return [] }
            let at = origins["redis.master_name"].map { "\($0): " } ?? ""
            return ["\(at)redis.master_name: needs redis.sentinels (the host:port of each sentinel)"]
        }
        var problems: [String] = []
        for (index, item) in redis.sentinels.enumerated() {
            do {
                _ = try RedisEndpoint.HostPort(parsing: item)
            } catch {
                problems.append("\(sentinelsAt)redis.sentinels: item \(index + 1): \(error.message)")
            }
        }
        if redis.masterName == nil {
            problems.append("\(sentinelsAt)redis.master_name: must be set with redis.sentinels (the name in the sentinels' `sentinel monitor <name> ...`)")
        }
        if redis.url.hasPrefix("unix://") {
            let at = origins["redis.url"].map { "\($0): " } ?? ""
            problems.append("\(at)redis.url: a unix:// URL cannot go with redis.sentinels (Sentinel names a TCP master); give redis:// for credentials only, or leave redis.url out")
        }
        return problems
    }

    /// `http.listen` must be `host:port`, and a listener others can reach needs `http.token`.
    static func listenerRequirements(_ config: WorkerConfig, origins: [String: ConfigOrigin]) -> [String] {
        guard !config.http.listen.isEmpty else { return [] }
        let origin = origins["http.listen"].map { "\($0): " } ?? ""
        let address: ListenAddress
        do {
            address = try ListenAddress(config.http.listen)
        } catch {
            return ["\(origin)http.listen: \(error)"]
        }
        if !address.isLoopback, (config.http.token ?? "").isEmpty {
            return ["\(origin)http.listen: \(config.http.listen) is reachable from other machines: set http.token (every request but /health then needs it) or listen on 127.0.0.1"]
        }
        return []
    }

    /// Applies the key table in order: override, else merged file value, else default.
    static func resolve(env: String, tree: ConfigTree?, overrides: [String: (ConfigValue, ConfigOrigin)],
                        context: ConfigKey.Context) -> (WorkerConfig, [String: ConfigOrigin]) {
        var config = WorkerConfig.blank(env: env)
        var origins: [String: ConfigOrigin] = [:]
        for key in ConfigSchema.keys {
            var value = key.defaultValue(config, context)
            var origin = ConfigOrigin.default
            if let (v, o) = overrides[key.path] {
                (value, origin) = (v, o)
            } else if key.inFile, let entry = tree?.entry(at: key.path),
                      case .success(let v) = key.kind.convert(entry.value) {
                (value, origin) = (v, .file(entry.location.file, line: entry.location.line))
            }
            key.set(&config, key.kind.finalized(value, context))
            origins[key.path] = origin
        }
        return (config, origins)
    }

    private func selectEnv() -> (String, ConfigOrigin) {
        if let env, !env.isEmpty { return (env, .commandLine("--env")) }
        for name in ["TWORKER_ENV", "TRAVIS_ENV"] {
            if let value = nonEmpty(name) { return (value, .environment(name)) }
        }
        return ("development", .default)
    }

    /// An empty variable counts as unset, as in most shells' `VAR= command` idiom.
    private func nonEmpty(_ name: String) -> String? {
        guard let value = environment[name], !value.isEmpty else { return nil }
        return value
    }

    /// The env name becomes part of a file name, so keep it to a safe alphabet.
    static func isValidEnvName(_ name: String) -> Bool {
        !name.isEmpty && name.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_"
        }
    }

    private static func displayPath(_ dir: String, _ name: String) -> String {
        var path = dir.hasSuffix("/") ? dir + name : dir + "/" + name
        while path.hasPrefix("./") { path.removeFirst(2) }
        return path
    }

    private static func isDirectory(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
    }

    private enum ReadResult {
        case absent
        case unreadable(String)
        case parsed(Result<ConfigTree, ConfigProblemLine>)
    }

    private static func readTree(display: String, absolute: String) -> ReadResult {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: absolute, isDirectory: &isDir) else { return .absent }
        if isDir.boolValue { return .unreadable("is a directory, not a file") }
        guard let data = FileManager.default.contents(atPath: absolute) else {
            return .unreadable("cannot read the file")
        }
        guard let text = String(data: data, encoding: .utf8) else { return .unreadable("not valid UTF-8") }
        return .parsed(ConfigTree.parse(yaml: text, file: display))
    }

    /// Checks one file against the key table; every problem, in document order.
    static func validate(_ tree: ConfigTree) -> [ConfigProblemLine] {
        switch tree {
        case .mapping(let entries, _):
            var problems: [ConfigProblemLine] = []
            validate(entries, prefix: "", into: &problems)
            return problems
        case .scalar(let s) where s.type == .null:
            return []  // a document of only `~` has no keys
        case .scalar(let s):
            return [ConfigProblemLine(line: s.location.line,
                                      text: "top level: expected a mapping of keys, got \(tree.typeDescription)")]
        case .list(_, let location):
            return [ConfigProblemLine(line: location.line, text: "top level: expected a mapping of keys, got a list")]
        }
    }

    private static func validate(_ entries: [ConfigTree.Entry], prefix: String, into problems: inout [ConfigProblemLine]) {
        for entry in entries {
            let path = prefix.isEmpty ? entry.key : prefix + "." + entry.key
            let line = entry.location.line
            if entry.key.contains(".") {
                // `timeouts.script: 5` would be read nowhere; nesting is written as mappings.
                problems.append(ConfigProblemLine(
                    line: line, text: "\(path): unknown key (write nested keys as mappings, not dotted)"))
            } else if let key = ConfigSchema.fileKeys[path] {
                if case .failure(let message) = key.kind.convert(entry.value) {
                    problems.append(ConfigProblemLine(line: line, text: "\(path): \(message.text)"))
                }
            } else if ConfigSchema.groups.contains(path) {
                switch entry.value {
                case .mapping(let children, _):
                    validate(children, prefix: path, into: &problems)
                case let value where value.isNull:
                    break  // `timeouts:` with every child commented out
                case let value:
                    problems.append(ConfigProblemLine(
                        line: line, text: "\(path): expected a mapping, got \(value.typeDescription)"))
                }
            } else if let key = ConfigSchema.keys.first(where: { $0.path == path }) {
                let instead = key.envVar.map { " (use the \($0) environment variable)" } ?? ""
                problems.append(ConfigProblemLine(line: line, text: "\(path): cannot be set in a config file" + instead))
            } else {
                problems.append(ConfigProblemLine(line: line, text: "\(path): unknown key" + hint(entry.key, prefix)))
            }
        }
    }

    /// " (did you mean 'script'?)" for a near miss, else "".
    private static func hint(_ key: String, _ prefix: String) -> String {
        let candidates = ConfigSchema.children(of: prefix)
            .map { ($0, editDistance($0, key)) }
            .filter { $0.1 <= 2 && $0.1 < $0.0.count }
            .sorted { ($0.1, $0.0) < ($1.1, $1.0) }
        guard let best = candidates.first else { return "" }
        return " (did you mean '\(best.0)'?)"
    }

    private static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var row = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
    }
}
