import Foundation

/// Network namespaces a test makes for itself (`ip netns` + veth pairs, Debian's iproute2), so
/// several "hosts" on this machine each get a network of their own. Every name carries a
/// prefix unique to this test process, and `removeAll()` kills what still runs in them (by the
/// PIDs `ip netns pids` lists) and deletes them.
public final class TestNetwork: @unchecked Sendable {
    public static let ip = "/usr/sbin/ip"
    /// Why namespaces cannot be made here; nil when they can (root with iproute2).
    public static let unavailableReason: String? = {
        guard geteuid() == 0 else { return "network namespaces need root" }
        guard FileManager.default.isExecutableFile(atPath: ip) else { return "\(ip) is missing (install iproute2)" }
        let probe = "twprobe\(getpid() % 100_000)"
        guard (try? run([ip, "netns", "add", probe])) != nil else { return "`ip netns add` failed here" }
        defer { _ = try? run([ip, "netns", "delete", probe]) }
        guard (try? run([ip, "link", "add", probe + "a", "type", "veth", "peer", "name", probe + "b"])) != nil else {
            return "`ip link add ... type veth` failed here"
        }
        _ = try? run([ip, "link", "delete", probe + "a"])
        return nil
    }()
    public static var available: Bool { unavailableReason == nil }

    private let prefix: String
    private let lock = NSLock()
    private var made: [String] = []
    private var links = 0

    public init() {
        // Interface names are at most 15 bytes: prefix (7) + role + index.
        prefix = "tw" + String(format: "%05d", Int(getpid()) % 100_000)
    }

    deinit { removeAll() }

    /// Creates a namespace with its loopback up; returns its full name.
    public func addNamespace(_ name: String) throws -> String {
        let full = "\(prefix)-\(name)"
        _ = try? Self.run([Self.ip, "netns", "delete", full])
        try Self.run([Self.ip, "netns", "add", full])
        lock.withLock { made.append(full) }
        try exec(in: full, [Self.ip, "link", "set", "lo", "up"])
        return full
    }

    /// Joins namespaces `a` and `b` by a veth pair on subnet 10.`subnet`.0.0/24: `a` gets .1 and
    /// `b` gets .2; returns those addresses.
    public func link(_ a: String, _ b: String, subnet: Int) throws -> (a: String, b: String) {
        let index = lock.withLock { links += 1; return links }
        let (endA, endB) = ("\(prefix)a\(index)", "\(prefix)b\(index)")
        try Self.run([Self.ip, "link", "add", endA, "type", "veth", "peer", "name", endB])
        try Self.run([Self.ip, "link", "set", endA, "netns", a])
        try Self.run([Self.ip, "link", "set", endB, "netns", b])
        let addresses = ("10.\(subnet).0.1", "10.\(subnet).0.2")
        try exec(in: a, [Self.ip, "addr", "add", addresses.0 + "/24", "dev", endA])
        try exec(in: b, [Self.ip, "addr", "add", addresses.1 + "/24", "dev", endB])
        try exec(in: a, [Self.ip, "link", "set", endA, "up"])
        try exec(in: b, [Self.ip, "link", "set", endB, "up"])
        return addresses
    }

    /// Runs a command inside `namespace` to its end; throws on a non-zero exit.
    @discardableResult
    public func exec(in namespace: String, _ command: [String]) throws -> String {
        try Self.run([Self.ip, "netns", "exec", namespace] + command)
    }

    /// The argv that starts `command` inside `namespace` (for `SpawnedProcess.spawn`; `ip netns
    /// exec` execs the command, so the spawned PID is the command's own).
    public func command(in namespace: String, _ command: [String]) -> (executable: String, arguments: [String]) {
        (Self.ip, ["netns", "exec", namespace] + command)
    }

    /// Every process in `namespace`.
    public func pids(in namespace: String) -> [pid_t] {
        ((try? Self.run([Self.ip, "netns", "pids", namespace])) ?? "").split(separator: "\n").compactMap { pid_t($0) }
    }

    /// The host dies: SIGKILL to everything in it until nothing is left, then the namespace goes.
    public func tearDown(_ namespace: String) {
        for _ in 0..<50 {
            let left = pids(in: namespace)
            if left.isEmpty { break }
            for pid in left { kill(pid, SIGKILL) }
            usleep(100_000)
        }
        _ = try? Self.run([Self.ip, "netns", "delete", namespace])
        lock.withLock { made.removeAll { $0 == namespace } }
    }

    public func removeAll() {
        for namespace in lock.withLock({ made }) { tearDown(namespace) }
    }

    @discardableResult
    static func run(_ argv: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw TestSupportError("\(argv.joined(separator: " ")) exited \(process.terminationStatus): \(text)")
        }
        return text
    }
}
