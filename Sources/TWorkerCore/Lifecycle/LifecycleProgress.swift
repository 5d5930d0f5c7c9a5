import Foundation

/// What long lifecycle operations print: one line per VM step with its duration, and on a
/// terminal a progress bar under them.
public final class LifecycleProgress: @unchecked Sendable {
    private let lock = NSLock()
    private let write: @Sendable (String) -> Void
    private let terminal: Bool
    private var total: Int
    private var done = 0

    public init(totalSteps: Int = 0, terminal: Bool = isatty(STDOUT_FILENO) == 1,
                write: @escaping @Sendable (String) -> Void = { FileHandle.standardOutput.write(Data($0.utf8)) }) {
        self.total = totalSteps
        self.terminal = terminal
        self.write = write
    }

    /// Adds steps to the bar's total (a plan is known only as it unfolds).
    public func expect(_ steps: Int) {
        lock.withLock { total += steps }
    }

    /// A line that is not a step.
    public func note(_ text: String) {
        lock.withLock { emit(text) }
    }

    /// Runs one step of `vm`, printing `vm  step  1.23 s` (or `FAILED`) when it ends.
    @discardableResult
    public func step<T>(_ vm: String, _ name: String, _ body: () async throws -> T) async throws -> T {
        let started = ContinuousClock.now
        do {
            let result = try await body()
            finish(vm, name, started, failed: false)
            return result
        } catch {
            finish(vm, name, started, failed: true)
            throw LifecycleStepError(vm: vm, step: name, underlying: error)
        }
    }

    private func finish(_ vm: String, _ name: String, _ started: ContinuousClock.Instant, failed: Bool) {
        let elapsed = ContinuousClock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        lock.withLock {
            done += 1
            let status = failed ? "FAILED after \(String(format: "%.2f", seconds)) s" : String(format: "%.2f s", seconds)
            emit("\(vm.padding(toLength: max(vm.count, 28), withPad: " ", startingAt: 0))  \(name.padding(toLength: max(name.count, 34), withPad: " ", startingAt: 0))  \(status)")
        }
    }

    /// Call with the lock held.
    private func emit(_ line: String) {
        if terminal {
            let width = 30
            let filled = total > 0 ? min(width, done * width / total) : 0
            let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            write("\r\u{1B}[2K" + line + "\n" + "[\(bar)] \(done)/\(max(total, done)) steps")
        } else {
            write(line + "\n")
        }
    }

    /// Ends the bar's line on a terminal.
    public func close() {
        lock.withLock { if terminal { write("\n") } }
    }
}

/// A lifecycle step that failed: which VM, which step, and the tool's own words.
public struct LifecycleStepError: Error, CustomStringConvertible {
    public var vm: String
    public var step: String
    public var underlying: any Error

    public var description: String {
        var detail = "\(underlying)"
        // VBoxManage's one-line message leaves out the rest of its error block; the other
        // tools' failures already carry their output.
        if let vbox = underlying as? VBoxManageError, vbox.wording == .vboxManage, !vbox.stderr.isEmpty {
            detail += "\n" + vbox.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return "step '\(step)' failed for \(vm): \(detail)"
    }
}
