import Foundation

/// The queues a worker serves, highest priority first, as Resque takes them: names, and `*`
/// for every queue in `<namespace>:queues` (sorted, as Resque sorts them), each once.
///
/// Written as `a,b` (`QUEUE`, `QUEUES`, `--queue`, a `workload` entry) or as a YAML list.
public struct QueueList: Sendable, Equatable, CustomStringConvertible {
    /// Every queue in `<namespace>:queues`.
    public static let everyQueue = "*"

    /// In priority order, without duplicates; `*` may stand anywhere.
    public let names: [String]

    /// Why a queue list cannot be used.
    public struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
    }

    public init(_ names: [String]) throws(Problem) {
        if names == [""] { throw Problem(description: "must not be empty") }
        var unique: [String] = []
        for (index, name) in names.enumerated() {
            let position = names.count > 1 ? "queue \(index + 1) " : ""
            if name.isEmpty { throw Problem(description: "\(position)is empty (a list is written a,b)") }
            if name.contains(",") { throw Problem(description: "\(position)\"\(name)\": a queue name cannot contain a comma") }
            if name.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 }) {
                throw Problem(description: "\(position)\"\(name)\": a queue name cannot contain whitespace")
            }
            if !unique.contains(name) { unique.append(name) }
        }
        guard !unique.isEmpty else { throw Problem(description: "no queue given") }
        self.names = unique
    }

    /// `a,b` (spaces around the commas are ignored, as Resque's `split(',')` callers strip them).
    public init(parsing text: String) throws(Problem) {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        try self.init(parts)
    }

    /// Resque's spelling, also the `queues` part of a Resque worker id (`host:pid:a,b`).
    public var description: String { names.joined(separator: ",") }

    /// Whether `queue` is one of these (a `*` list serves every queue).
    public func serves(_ queue: String) -> Bool { names.contains(queue) || names.contains(Self.everyQueue) }

    /// Where a job goes back to when nothing says which queue it came from: the first named queue.
    public var fallback: String? { names.first { $0 != Self.everyQueue } }
}

extension WorkerConfig {
    /// `queue` as a list (validated when the config was loaded).
    public var queueList: QueueList { (try? QueueList(parsing: queue)) ?? QueueList(unchecked: queue) }

    /// The queue list of worker `number` (1-based): its `workload` entry, else `queue`.
    public func queueList(forWorker number: Int) -> QueueList {
        guard number >= 1, number <= workload.count, let list = try? QueueList(parsing: workload[number - 1]) else { return queueList }
        return list
    }
}

extension QueueList {
    /// For text already validated.
    init(unchecked text: String) {
        names = [text]
    }
}

// MARK: - Configuration

extension ConfigKind {
    /// `queue`: a name, `a,b`, or a YAML list of names; stored as `a,b`.
    static func queueListValue(_ tree: ConfigTree) -> Result<ConfigValue, ConfigMessage> {
        var names: [String] = []
        switch tree {
        case .scalar(let scalar) where scalar.type != .null:
            names = scalar.text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        case .list(let items, _):
            for (index, item) in items.enumerated() {
                guard case .scalar(let scalar) = item, scalar.type != .null else {
                    return .failure(ConfigMessage("item \(index + 1): expected a queue name, got \(item.typeDescription)"))
                }
                names.append(scalar.text)
            }
        default:
            return .failure(ConfigMessage("expected a queue name or a list of queue names, got \(tree.typeDescription)"))
        }
        return queueListValue(names)
    }

    static func queueListValue(_ names: [String]) -> Result<ConfigValue, ConfigMessage> {
        do {
            return .success(.string(try QueueList(names).description))
        } catch {
            return .failure(ConfigMessage(error.description))
        }
    }
}

extension ConfigLoader {
    /// `workload`: every entry a queue list; `vms.count`, when set, as many workers as entries.
    static func workloadRequirements(_ config: WorkerConfig, origins: [String: ConfigOrigin]) -> [String] {
        guard !config.workload.isEmpty else { return [] }
        let origin = origins["workload"].map { "\($0): " } ?? ""
        var problems: [String] = []
        for (index, entry) in config.workload.enumerated() {
            do {
                _ = try QueueList(parsing: entry)
            } catch {
                problems.append("\(origin)workload: item \(index + 1) (\"\(entry)\"): \(error)")
            }
        }
        if let count = origins["vms.count"], count != .default, config.vms.count != config.workload.count {
            problems.append("\(count): vms.count: \(config.vms.count) workers, but workload (\(origins["workload"] ?? .default)) "
                + "has \(config.workload.count) entries, one per worker; leave vms.count out (it defaults to workload's length) or make them agree")
        }
        return problems
    }
}
