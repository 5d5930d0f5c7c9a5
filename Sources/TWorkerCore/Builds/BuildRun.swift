import Foundation
import Synchronization

/// The limits one build runs under, all host-enforced.
public struct BuildLimits: Sendable {
    public var hardLimit: Duration
    public var logSilence: Duration
    public var logLength: Int
    /// Seconds a named stage may take (`install`, `script`, ...); nil = only the hard limit.
    public var stageTimeout: @Sendable (String) -> Int?

    public init(hardLimit: Duration, logSilence: Duration, logLength: Int, stageTimeout: @escaping @Sendable (String) -> Int?) {
        self.hardLimit = hardLimit
        self.logSilence = logSilence
        self.logLength = logLength
        self.stageTimeout = stageTimeout
    }
}

/// A finished job's result.
public enum BuildResult: String, Sendable {
    case passed, failed, errored
}

/// How a build ended.
public enum BuildOutcome: Sendable, Equatable {
    /// The build ran to a result. `message` is the last line explaining an errored build.
    case finished(BuildResult, exitCode: Int32, message: String?)
    /// The machine failed (not the build): the job should be retried elsewhere.
    case infrastructure(String)
    /// The worker was told to stop now; the job should go back to the queue unchanged.
    case interrupted
}

/// Runs one build on a machine and enforces its limits: hard limit, log silence, each
/// stage's timeout and the log length.
///
/// Stage boundaries come from the `travis_fold` markers the build script prints; the script
/// prints `The script stage exited with N.` once `script` is done, which is how a non-zero
/// exit is told apart: after that line it is `failed`, before it `errored`.
public enum BuildRun {
    /// `lookEvery`: how often the watchdog looks at the limits; when the build exits first they
    /// are looked at once more, so a limit holds whichever wins (tests stretch it to make sure).
    public static func execute(
        machine: any Machine, script: String, jobID: String, limits: BuildLimits, stages: StageTimes? = nil,
        lookEvery: Duration = .milliseconds(100), log: @escaping @Sendable ([UInt8]) async -> Void
    ) async -> BuildOutcome {
        let monitor = OutputMonitor(limits: limits, stages: stages)
        let outcome = await withTaskGroup(of: RunnerEvent.self) { group -> BuildOutcome in
            group.addTask {
                do throws(InfrastructureError) {
                    let exit = try await machine.run(script: script, jobID: jobID) { chunk in
                        if let accepted = monitor.accept(chunk) { await log(accepted) }
                    }
                    return .exited(exit)
                } catch {
                    return .infrastructure(error.message)
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    if let violation = monitor.violation(now: .now) { return .violated(violation) }
                    try? await Task.sleep(for: lookEvery)
                }
                return .watchdogStopped
            }
            var violation: LimitViolation?
            while let event = await group.next() {
                switch event {
                case .violated(let found):
                    violation = found
                    group.cancelAll()
                case .watchdogStopped:
                    continue
                case .exited(let exit):
                    group.cancelAll()
                    // A build that exits before the watchdog's next look still broke the limit
                    // it broke: the log was cut, or the time ran out, whoever won the race.
                    return classify(exit: exit, violation: violation ?? monitor.violation(now: .now), monitor: monitor)
                case .infrastructure(let message):
                    group.cancelAll()
                    if let violation = violation ?? monitor.violation(now: .now) { return BuildRun.outcome(of: violation, exitCode: -1, monitor: monitor) }
                    return .infrastructure(message)
                }
            }
            return .interrupted
        }
        stages?.buildEnded()
        if Task.isCancelled { return .interrupted }
        return outcome
    }

    private enum RunnerEvent: Sendable {
        case exited(BuildExit)
        case infrastructure(String)
        case violated(LimitViolation)
        case watchdogStopped
    }

    static func classify(exit: BuildExit, violation: LimitViolation?, monitor: OutputMonitor) -> BuildOutcome {
        let code: Int32
        switch exit {
        case .exited(let status): code = status
        case .signaled(let signal): code = 128 + signal
        }
        let scriptResult = monitor.scriptResult
        if let violation { return outcome(of: violation, exitCode: code, monitor: monitor) }
        if Task.isCancelled { return .interrupted }
        switch exit {
        case .exited(0): return .finished(.passed, exitCode: 0, message: nil)
        // Reaching `script` makes a non-zero exit the build's own failure, even when a command
        // ended the shell early (`exit 3`) before the script stage could print its result.
        case .exited(let status) where scriptResult != nil || monitor.reachedScript: return .finished(.failed, exitCode: status, message: nil)
        case .exited(let status): return .finished(.errored, exitCode: status, message: nil)
        case .signaled(let signal):
            return .finished(.errored, exitCode: code, message: "The build was killed by signal \(signal).")
        }
    }

    /// The job-level limits (log length, hard limit, log silence) end the job `errored` in any
    /// stage; an `after_*` stage's own timeout keeps the result the script stage gave, as every
    /// other `after_*` failure does.
    static func outcome(of violation: LimitViolation, exitCode: Int32, monitor: OutputMonitor) -> BuildOutcome {
        if case .stageTimeout(let stage) = violation.limit, stage.hasPrefix("after_"), let scriptResult = monitor.scriptResult {
            return .finished(scriptResult == 0 ? .passed : .failed, exitCode: scriptResult, message: violation.message)
        }
        return .finished(.errored, exitCode: exitCode, message: violation.message)
    }
}

/// A limit a build broke, and the log's closing explanation of it.
struct LimitViolation: Sendable, Equatable {
    enum Limit: Sendable, Equatable {
        case logLength, hardLimit, logSilence
        case stageTimeout(String)
    }
    var limit: Limit
    var message: String
}

/// Watches a build's output as it streams: stage markers, silence, log length.
final class OutputMonitor: Sendable {
    private let limits: BuildLimits
    private let stages: StageTimes?
    private let startedAt = ContinuousClock.now
    private let state: Mutex<State>

    private struct State {
        var lastOutputAt: ContinuousClock.Instant
        var stage: (name: String, startedAt: ContinuousClock.Instant)?
        var lastStage: String?
        var scriptResult: Int32?
        var reachedScript = false
        var bytesLogged = 0
        var cut = false
        var line: [UInt8] = []
        var lineOverflowed = false
    }

    /// Longest line inspected for markers; longer lines cannot be markers.
    static let markerLineLimit = 256

    init(limits: BuildLimits, stages: StageTimes? = nil) {
        self.limits = limits
        self.stages = stages
        self.state = Mutex(State(lastOutputAt: .now))
    }

    var scriptResult: Int32? { state.withLock { $0.scriptResult } }
    var reachedScript: Bool { state.withLock { $0.reachedScript } }

    /// Notes `chunk` and returns the part of it that fits in the log (nil once the log is cut).
    func accept(_ chunk: [UInt8]) -> [UInt8]? {
        let now = ContinuousClock.now
        return state.withLock { state -> [UInt8]? in
            state.lastOutputAt = now
            scanMarkers(chunk, state: &state, now: now)
            guard !state.cut else { return nil }
            let room = limits.logLength - state.bytesLogged
            if chunk.count <= room {
                state.bytesLogged += chunk.count
                return chunk
            }
            state.cut = true
            state.bytesLogged = limits.logLength
            return Array(chunk.prefix(max(0, room)))
        }
    }

    /// The limit the build has broken, with the log's closing explanation.
    func violation(now: ContinuousClock.Instant) -> LimitViolation? {
        state.withLock { state in
            if state.cut {
                return LimitViolation(limit: .logLength, message: "The log length has exceeded the limit of \(limits.logLength) bytes (this usually means the build produced excessive output). The build has been terminated.")
            }
            if now - startedAt >= limits.hardLimit {
                return LimitViolation(limit: .hardLimit, message: "The job exceeded the maximum time limit for jobs (\(limits.hardLimit.components.seconds) s), and has been terminated.")
            }
            if now - state.lastOutputAt >= limits.logSilence {
                return LimitViolation(limit: .logSilence, message: "No output has been received in the last \(limits.logSilence.components.seconds) seconds, this potentially indicates a stalled build or something wrong with the build itself. The build has been terminated.")
            }
            if let stage = state.stage, let seconds = limits.stageTimeout(stage.name), now - stage.startedAt >= .seconds(seconds) {
                return LimitViolation(limit: .stageTimeout(stage.name), message: "The \(stage.name) stage exceeded its time limit of \(seconds) s, and the build has been terminated.")
            }
            return nil
        }
    }

    private func scanMarkers(_ chunk: [UInt8], state: inout State, now: ContinuousClock.Instant) {
        var start = chunk.startIndex
        while start < chunk.endIndex {
            let newline = chunk[start...].firstIndex(of: 0x0A)
            let end = newline ?? chunk.endIndex
            if !state.lineOverflowed {
                if state.line.count + (end - start) <= Self.markerLineLimit {
                    state.line.append(contentsOf: chunk[start..<end])
                } else {
                    state.lineOverflowed = true
                    state.line.removeAll(keepingCapacity: true)
                }
            }
            guard newline != nil else { return }
            if !state.lineOverflowed { handleLine(String(decoding: state.line, as: UTF8.self), state: &state, now: now) }
            state.line.removeAll(keepingCapacity: true)
            state.lineOverflowed = false
            start = end + 1
        }
    }

    private func handleLine(_ raw: String, state: inout State, now: ContinuousClock.Instant) {
        let line = raw.hasSuffix("\r") ? String(raw.dropLast()) : raw
        if line.hasPrefix(BuildMarkers.foldStart) {
            let name = String(line.dropFirst(BuildMarkers.foldStart.count))
            state.stage = (name, now)
            if name == "script" { state.reachedScript = true }
            stages?.started(name, at: now)
        } else if line.hasPrefix(BuildMarkers.foldEnd) {
            stages?.ended(String(line.dropFirst(BuildMarkers.foldEnd.count)), at: now)
            state.lastStage = state.stage?.name
            state.stage = nil
        } else if let code = BuildMarkers.parseScriptResult(line), let exact = Int32(exactly: code) {
            state.scriptResult = exact
        }
    }
}

/// When each stage of a build started and how long it took, as the job record keeps them
/// (`stage:<name>:started`, `stage:<name>:duration`). Only the script's own stages count
/// (`checkout` and the `.travis.yml` stages): a fold marker a build prints itself names none.
public final class StageTimes: Sendable {
    /// The stages recorded, in the order a build runs them.
    public static let names = ["checkout"] + BuildStage.allCases.map(\.rawValue)

    public struct Stage: Sendable, Equatable {
        public var name: String
        public var started: Date
        public var duration: Duration?
    }

    private struct Running {
        var name: String
        var at: ContinuousClock.Instant
    }

    private let state = Mutex<(stages: [Stage], running: Running?)>(([], nil))

    public init() {}

    func started(_ name: String, at now: ContinuousClock.Instant) {
        guard Self.names.contains(name) else { return }
        state.withLock { state in
            Self.close(&state, at: now)
            state.stages.append(Stage(name: name, started: Date(), duration: nil))
            state.running = Running(name: name, at: now)
        }
    }

    func ended(_ name: String, at now: ContinuousClock.Instant) {
        state.withLock { state in
            guard state.running?.name == name else { return }
            Self.close(&state, at: now)
        }
    }

    /// A stage still open when the build ended (killed by a limit, or `exit`) ends with it.
    func buildEnded(at now: ContinuousClock.Instant = .now) {
        state.withLock { Self.close(&$0, at: now) }
    }

    private static func close(_ state: inout (stages: [Stage], running: Running?), at now: ContinuousClock.Instant) {
        guard let running = state.running, let index = state.stages.lastIndex(where: { $0.name == running.name }) else { return }
        state.stages[index].duration = now - running.at
        state.running = nil
    }

    /// The stages that ran, in order.
    public var stages: [Stage] { state.withLock { $0.stages } }

    /// The record's fields: `stage:<name>:started` (ISO 8601, as every `*_at` field) and
    /// `stage:<name>:duration` (seconds, to the millisecond).
    public var fields: [String: String] {
        var fields: [String: String] = [:]
        for stage in stages {
            fields["stage:\(stage.name):started"] = Timestamp.format(stage.started)
            if let duration = stage.duration {
                let millis = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
                let fraction = String(millis % 1000)
                fields["stage:\(stage.name):duration"] = "\(millis / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
            }
        }
        return fields
    }

    /// Sets `fields` on the record `key`.
    public func recordCommands(key: String) -> [[String]] {
        let fields = self.fields
        guard !fields.isEmpty else { return [] }
        return [["HSET", key] + fields.sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] }]
    }

    /// Drops every stage field an earlier attempt left on the record `key`.
    public static func resetCommands(key: String) -> [[String]] {
        [["HDEL", key] + names.flatMap { ["stage:\($0):started", "stage:\($0):duration"] }]
    }
}
