import Foundation
import Yams

/// A place in a config file.
struct ConfigLocation: Sendable, Equatable {
    var file: String
    var line: Int
}

/// A problem found while loading; sorted by source (command line, files in load order, environment), then line.
struct ConfigProblem: Sendable, Equatable {
    /// Sort rank of the source: 0 = command line, 1... = files in load order, Int.max = environment.
    var rank: Int
    var line: Int
    var text: String
}

/// A YAML document reduced to what configuration needs, every node knowing its file and line,
/// so that the files can be merged before their values are read.
indirect enum ConfigTree: Sendable, Equatable {
    case scalar(Scalar)
    case list([ConfigTree], ConfigLocation)
    case mapping([Entry], ConfigLocation)

    struct Scalar: Sendable, Equatable {
        enum ScalarType: Sendable, Equatable { case string, int, float, bool, null, other }
        var text: String
        var type: ScalarType
        var location: ConfigLocation
    }

    struct Entry: Sendable, Equatable {
        var key: String
        /// Where the key is written; the origin of the value it sets.
        var location: ConfigLocation
        var value: ConfigTree
    }

    /// "a mapping", "a string (\"x\")"... for messages.
    var typeDescription: String {
        switch self {
        case .list: return "a list"
        case .mapping: return "a mapping"
        case .scalar(let s):
            switch s.type {
            case .string: return "a string (\"\(s.text)\")"
            case .int: return "an integer (\(s.text))"
            case .float: return "a number (\(s.text))"
            case .bool: return "a boolean (\(s.text))"
            case .null: return "null"
            case .other: return "\"\(s.text)\""
            }
        }
    }

    var isNull: Bool {
        if case .scalar(let s) = self, s.type == .null { return true }
        return false
    }

    /// Deep merge: mappings merge key by key, anything else in `overlay` replaces. A null overlay
    /// over a mapping changes nothing, so an uncommented but empty section (`redis:`) is harmless.
    func merging(_ overlay: ConfigTree) -> ConfigTree {
        switch (self, overlay) {
        case (.mapping(var entries, let location), .mapping(let overEntries, _)):
            for over in overEntries {
                if let i = entries.firstIndex(where: { $0.key == over.key }) {
                    entries[i].value = entries[i].value.merging(over.value)
                    entries[i].location = over.location
                } else {
                    entries.append(over)
                }
            }
            return .mapping(entries, location)
        case (.mapping, _) where overlay.isNull:
            return self
        default:
            return overlay
        }
    }

    /// The entry at a dotted path, if every step is a mapping that has the key.
    func entry(at path: String) -> Entry? {
        var node = self
        var found: Entry?
        for part in path.split(separator: ".") {
            guard case .mapping(let entries, _) = node,
                  let entry = entries.last(where: { $0.key == part }) else { return nil }
            found = entry
            node = entry.value
        }
        return found
    }

    /// Parses one file's text. An empty document is an empty mapping.
    static func parse(yaml: String, file: String) -> Result<ConfigTree, ConfigProblemLine> {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            return .failure(syntaxProblem(error, yaml: yaml))
        } catch {
            return .failure(ConfigProblemLine(line: 1, text: "\(error)"))
        }
        guard let root else { return .success(.mapping([], ConfigLocation(file: file, line: 1))) }
        return convert(root, file: file)
    }

    private static func convert(_ node: Node, file: String) -> Result<ConfigTree, ConfigProblemLine> {
        let location = ConfigLocation(file: file, line: node.mark?.line ?? 1)
        switch node {
        case .scalar(let scalar):
            let type: Scalar.ScalarType = switch Tag.Name(rawValue: node.tag.rawValue) {
            case .str: .string
            case .int: .int
            case .float: .float
            case .bool: .bool
            case .null: .null
            default: .other
            }
            return .success(.scalar(Scalar(text: scalar.string, type: type, location: location)))
        case .sequence(let sequence):
            var items: [ConfigTree] = []
            for item in sequence {
                switch convert(item, file: file) {
                case .success(let tree): items.append(tree)
                case .failure(let problem): return .failure(problem)
                }
            }
            return .success(.list(items, location))
        case .mapping(let mapping):
            var entries: [Entry] = []
            for (keyNode, valueNode) in mapping {
                let keyLine = keyNode.mark?.line ?? location.line
                guard case .scalar(let key) = keyNode else {
                    return .failure(ConfigProblemLine(line: keyLine, text: "keys must be plain strings"))
                }
                switch convert(valueNode, file: file) {
                case .success(let value):
                    entries.append(Entry(key: key.string, location: ConfigLocation(file: file, line: keyLine),
                                         value: value))
                case .failure(let problem): return .failure(problem)
                }
            }
            return .success(.mapping(entries, location))
        case .alias:
            // compose(yaml:) resolves aliases; kept for exhaustiveness.
            return .failure(ConfigProblemLine(line: location.line, text: "aliases are not supported"))
        }
    }

    /// `<what Yams says>` and the line it points at.
    private static func syntaxProblem(_ error: YamlError, yaml: String) -> ConfigProblemLine {
        func text(_ context: YamlError.Context?, _ problem: String) -> String {
            guard let context, !context.text.isEmpty else { return problem }
            return "\(context.text), \(problem)"
        }
        switch error {
        case let .scanner(context, problem, mark, _),
             let .parser(context, problem, mark, _),
             let .composer(context, problem, mark, _):
            return ConfigProblemLine(line: mark.line, text: text(context, problem))
        case let .reader(problem, offset, _, _):
            let line = offset.map { yaml.prefix($0).filter { $0 == "\n" }.count + 1 } ?? 1
            return ConfigProblemLine(line: line, text: problem)
        case let .duplicatedKeysInMapping(duplicates, context):
            let keys = duplicates.map { "'\($0)'" }.joined(separator: ", ")
            return ConfigProblemLine(line: context.mark.line, text: "duplicate key \(keys)")
        default:
            return ConfigProblemLine(line: 1, text: "\(error)")
        }
    }
}

/// A problem inside one file, before the file name is attached.
struct ConfigProblemLine: Error, Equatable {
    var line: Int
    var text: String
}
