import Foundation

/// Durations of earlier lifecycle steps, kept under `<state_dir>/lifecycle/durations.json`, so
/// `reprovision` can say beforehand how long each strategy will take.
public struct StepDurations: Sendable {
    public let path: String
    public private(set) var samples: [String: [Double]]
    static let kept = 20

    public init(stateDir: String) {
        path = (stateDir as NSString).appendingPathComponent("lifecycle/durations.json")
        if let data = FileManager.default.contents(atPath: path),
           let decoded = try? JSONDecoder().decode([String: [Double]].self, from: data) {
            samples = decoded
        } else {
            samples = [:]
        }
    }

    public mutating func record(_ step: String, seconds: Double) {
        samples[step, default: []].append(seconds)
        samples[step] = Array(samples[step]!.suffix(Self.kept))
    }

    public func mean(_ step: String) -> Double? {
        guard let values = samples[step], !values.isEmpty else { return nil }
        return values.reduce(0, +) / Double(values.count)
    }

    public func save() throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try encoder.encode(samples).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    /// Estimated seconds of `reprovision --strategy each` and `--strategy base` for `workers`
    /// VMs; nil where no earlier run measured the steps needed.
    public func estimates(workers: Int) -> (each: Double?, base: Double?) {
        let each = mean("provision_worker").map { $0 * Double(workers) }
        var base: Double?
        if let provision = mean("provision_base"), let create = mean("create_worker") {
            base = provision + create * Double(workers)
        }
        return (each, base)
    }
}

/// Seconds since `start`.
func seconds(since start: ContinuousClock.Instant) -> Double {
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
}
