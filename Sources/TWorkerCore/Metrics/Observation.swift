import Foundation

/// One measurement a worker makes for its master's `/metrics`, as it travels through
/// `tworker:observations:<host>`: what, for which VM, with which labels, how much.
public struct Observation: Sendable, Equatable {
    public enum Kind: String, Sendable {
        /// A VBoxManage subcommand or QMP command: `command`, `outcome` (ok, error, timeout), seconds.
        case vmCommand = "vm_command"
        /// One step of a job: `stage` (prepare, build, release), seconds.
        case stage
        /// The VM's reset after a job, seconds.
        case vmReset = "vm_reset"
        /// Bytes of build output a job wrote to its log.
        case logBytes = "log_bytes"
        /// Redis connections the worker had to open again.
        case redisReconnects = "redis_reconnects"
    }

    public var kind: Kind
    public var vm: String
    public var labels: [String: String]
    public var value: Double

    public init(_ kind: Kind, vm: String, labels: [String: String] = [:], value: Double) {
        self.kind = kind
        self.vm = vm
        self.labels = labels
        self.value = value
    }

    /// `XADD` fields: kind, vm, value, then the labels.
    var fields: [String] {
        ["kind", kind.rawValue, "vm", vm, "value", String(value)] + labels.sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] }
    }

    /// Back from a stream entry's fields; nil for anything else.
    init?(fields: [String: String]) {
        guard let kind = fields["kind"].flatMap(Kind.init(rawValue:)), let vm = fields["vm"],
              let value = fields["value"].flatMap(Double.init), value.isFinite, value >= 0 else { return nil }
        self.kind = kind
        self.vm = vm
        self.value = value
        labels = fields.filter { !["kind", "vm", "value"].contains($0.key) }
    }
}
