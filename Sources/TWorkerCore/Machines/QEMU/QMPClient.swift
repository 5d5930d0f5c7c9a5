import Dispatch
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A client of qemu's QMP socket (`-qmp unix:PATH,server,nowait`).
///
/// One command is in flight at a time. The socket is non-blocking and every wait is a `poll` on
/// this client's own serial queue, so a slow or silent qemu never holds a thread of Swift's
/// cooperative pool. Each command carries an `id`, so a late reply to a command that timed out is
/// recognised and dropped instead of being taken for the next command's reply.
public final class QMPClient: Sendable {
    /// The connection's mutable part; touched only from `queue`, the lock makes that provable.
    fileprivate struct Channel {
        var fd: Int32
        var buffer: [UInt8] = []
        var nextID = 1
    }

    public let path: String
    private let queue: DispatchQueue
    private let channel: Mutex<Channel>

    private init(path: String, fd: Int32, queue: DispatchQueue) {
        self.path = path
        self.queue = queue
        channel = Mutex(Channel(fd: fd))
    }

    deinit {
        channel.withLock { if $0.fd >= 0 { _ = posixClose($0.fd) } }
    }

    /// Connects to `path`, retrying while qemu has not created or is not yet accepting on the socket,
    /// reads the greeting and negotiates capabilities; all within `timeout`.
    public static func connect(path: String, timeout: Duration = .seconds(10)) async throws -> QMPClient {
        let queue = DispatchQueue(label: "tworker.qmp")
        let deadline = ContinuousClock.now + timeout
        let fd = try await run(on: queue) { try openSocket(path: path, deadline: deadline) }
        let client = QMPClient(path: path, fd: fd, queue: queue)
        try await client.perform("qmp_capabilities") { channel in
            let greeting = try channel.readMessage(command: "qmp_capabilities", deadline: deadline, timeout: timeout)
            guard greeting["QMP"] != nil else {
                throw QMPError.protocolViolation(command: "qmp_capabilities", detail: "no QMP greeting: \(JSONValue.object(greeting).jsonText)")
            }
            _ = try channel.roundTrip("qmp_capabilities", arguments: nil, deadline: deadline, timeout: timeout)
        }
        return client
    }

    /// Runs a QMP command and returns its `return` value; throws `QMPError` for an `error` reply,
    /// a timeout or a closed connection. Events arriving meanwhile are skipped.
    @discardableResult
    public func execute(_ command: String, arguments: [String: JSONValue]? = nil,
                        timeout: Duration = .seconds(30)) async throws -> JSONValue {
        let started = ContinuousClock.now
        let deadline = started + timeout
        // HMP lines are named by their verb (savevm, loadvm): that is the VM command an operator knows.
        let name = command == "human-monitor-command"
            ? (arguments?["command-line"]?.stringValue?.split(separator: " ").first.map(String.init) ?? command) : command
        do {
            let reply = try await perform(command) { channel in
                try channel.roundTrip(command, arguments: arguments, deadline: deadline, timeout: timeout)
            }
            WorkerObservations.record(.vmCommand, labels: ["command": name, "outcome": Self.outcome(of: command, reply: reply)],
                                      duration: ContinuousClock.now - started)
            return reply
        } catch {
            let outcome = ContinuousClock.now >= deadline ? "timeout" : "error"
            WorkerObservations.record(.vmCommand, labels: ["command": name, "outcome": outcome], duration: ContinuousClock.now - started)
            throw error
        }
    }

    /// Runs an HMP command line (`savevm sandbox`, `loadvm sandbox`, `info status`) and returns its
    /// text. HMP reports failures as text, so a text starting with `Error` throws `.humanMonitor`.
    @discardableResult
    public func humanMonitor(_ commandLine: String, timeout: Duration = .seconds(60)) async throws -> String {
        let reply = try await execute("human-monitor-command", arguments: ["command-line": .string(commandLine)], timeout: timeout)
        guard let text = reply.stringValue else {
            throw QMPError.protocolViolation(command: "human-monitor-command", detail: "return is not a string: \(reply.jsonText)")
        }
        if let message = Self.humanMonitorFailure(text) {
            throw QMPError.humanMonitor(commandLine: commandLine, message: message)
        }
        return text
    }

    /// A reply's outcome for `tworker_vm_commands_total`: HMP answers its own failures as text in
    /// a successful QMP reply (`humanMonitor` throws on it), so that text counts as an error.
    public static func outcome(of command: String, reply: JSONValue) -> String {
        command == "human-monitor-command" && reply.stringValue.flatMap(humanMonitorFailure) != nil ? "error" : "ok"
    }

    /// The failure message in an HMP command's output, or nil when the output is not an error.
    /// qemu's hmp_handle_error prints `Error: <message>`; a few older paths print `error: ...`.
    public static func humanMonitorFailure(_ text: String) -> String? {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.lowercased().hasPrefix("error") else { return nil }
        return trimmed
    }

    /// Pauses the guest's CPUs (it then costs no CPU on the host).
    public func stop(timeout: Duration = .seconds(30)) async throws { try await execute("stop", timeout: timeout) }

    /// Resumes the guest's CPUs.
    public func cont(timeout: Duration = .seconds(30)) async throws { try await execute("cont", timeout: timeout) }

    /// `query-status`: the VM's run state.
    public struct Status: Sendable, Equatable {
        /// `running`, `paused`, `restore-vm`, `shutdown`...
        public var status: String
        public var running: Bool
        public init(status: String, running: Bool) {
            self.status = status
            self.running = running
        }
    }

    public func status(timeout: Duration = .seconds(30)) async throws -> Status {
        let reply = try await execute("query-status", timeout: timeout)
        guard let status = reply.objectValue?["status"]?.stringValue, case .bool(let running)? = reply.objectValue?["running"] else {
            throw QMPError.protocolViolation(command: "query-status", detail: reply.jsonText)
        }
        return Status(status: status, running: running)
    }

    /// Asks qemu to exit. qemu may close the socket before its reply arrives: that counts as done.
    public func quit(timeout: Duration = .seconds(30)) async throws {
        do {
            try await execute("quit", timeout: timeout)
        } catch QMPError.connectionClosed {
            return
        }
    }

    /// Closes the socket (also done when the client is released).
    public func close() async {
        try? await perform("close") { channel in
            if channel.fd >= 0 { _ = posixClose(channel.fd) }
            channel.fd = -1
        }
    }

    // MARK: - Plumbing

    private func perform<T: Sendable>(_ command: String,
                                      _ body: @escaping @Sendable (inout Channel) throws -> T) async throws -> T {
        try await Self.run(on: queue) {
            try self.channel.withLock { state in
                guard state.fd >= 0 else { throw QMPError.connectionClosed(command: command) }
                return try body(&state)
            }
        }
    }

    private static func run<T: Sendable>(on queue: DispatchQueue, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try body() }) }
        }
    }

    private static func openSocket(path: String, deadline: ContinuousClock.Instant) throws -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else {
            throw QMPError.connect(path: path, reason: "a unix socket path must be 1-\(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        while true {
            // Close-on-exec: a build or ssh the worker spawns must not inherit the socket, or qemu
            // would not see this client hang up (and accepts only one QMP client at a time).
            #if os(Linux)
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            #else
            let fd = socket(AF_UNIX, SOCK_STREAM, 0)
            if fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            #endif
            guard fd >= 0 else { throw QMPError.connect(path: path, reason: "socket: \(String(cString: strerror(errno)))") }
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    posixConnect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if result == 0 {
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                #if canImport(Darwin)
                var one: Int32 = 1
                setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
                #endif
                return fd
            }
            let error = errno
            _ = posixClose(fd)
            // qemu creates the socket a moment after it starts: not there yet, or not listening yet.
            let transient = error == ENOENT || error == ECONNREFUSED || error == EAGAIN || error == EINTR
            guard transient, ContinuousClock.now < deadline else {
                throw QMPError.connect(path: path, reason: String(cString: strerror(error)))
            }
            usleep(50_000)
        }
    }
}

extension QMPClient.Channel {
    /// Sends `command` with a fresh id and reads until its reply, skipping events and stale replies.
    mutating func roundTrip(_ command: String, arguments: [String: JSONValue]?, deadline: ContinuousClock.Instant,
                            timeout: Duration) throws -> JSONValue {
        let id = nextID
        nextID += 1
        var message: [String: JSONValue] = ["execute": .string(command), "id": .int(Int64(id))]
        if let arguments { message["arguments"] = .object(arguments) }
        var line = try JSONEncoder().encode(JSONValue.object(message))
        line.append(UInt8(ascii: "\n"))
        try send(Array(line), command: command, deadline: deadline, timeout: timeout)
        while true {
            let reply = try readMessage(command: command, deadline: deadline, timeout: timeout)
            if reply["event"] != nil { continue }
            if let replyID = reply["id"], replyID != .int(Int64(id)) { continue }
            if let value = reply["return"] { return value }
            if let error = reply["error"]?.objectValue {
                throw QMPError.command(command, errorClass: error["class"]?.stringValue ?? "",
                                       desc: error["desc"]?.stringValue ?? JSONValue.object(error).jsonText)
            }
            throw QMPError.protocolViolation(command: command, detail: JSONValue.object(reply).jsonText)
        }
    }

    /// The next JSON object from qemu (one per line).
    mutating func readMessage(command: String, deadline: ContinuousClock.Instant, timeout: Duration) throws -> [String: JSONValue] {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = buffer[..<newline]
                buffer.removeSubrange(...newline)
                guard line.contains(where: { $0 != UInt8(ascii: "\r") && $0 != UInt8(ascii: " ") }) else { continue }
                let value: JSONValue
                do {
                    value = try JSONDecoder().decode(JSONValue.self, from: Data(line))
                } catch {
                    throw QMPError.protocolViolation(command: command, detail: "not JSON: \(String(decoding: line, as: UTF8.self))")
                }
                guard let object = value.objectValue else {
                    throw QMPError.protocolViolation(command: command, detail: value.jsonText)
                }
                return object
            }
            try wait(for: Int16(POLLIN), command: command, deadline: deadline, timeout: timeout)
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count > 0 {
                buffer.append(contentsOf: chunk[..<count])
            } else if count == 0 {
                throw QMPError.connectionClosed(command: command)
            } else if errno != EAGAIN && errno != EINTR {
                throw QMPError.connectionClosed(command: command)
            }
        }
    }

    private func send(_ bytes: [UInt8], command: String, deadline: ContinuousClock.Instant, timeout: Duration) throws {
        var offset = 0
        while offset < bytes.count {
            #if os(Linux)
            let flags = Int32(MSG_NOSIGNAL)  // a closed socket is an error, not a SIGPIPE
            #else
            let flags: Int32 = 0
            #endif
            let sent = bytes[offset...].withUnsafeBytes { posixSend(fd, $0.baseAddress, $0.count, flags) }
            if sent >= 0 {
                offset += sent
            } else if errno == EAGAIN || errno == EINTR {
                try wait(for: Int16(POLLOUT), command: command, deadline: deadline, timeout: timeout)
            } else {
                throw QMPError.connectionClosed(command: command)
            }
        }
    }

    /// Polls until the socket is ready for `events`, or throws `.timeout` at `deadline`.
    private func wait(for events: Int16, command: String, deadline: ContinuousClock.Instant, timeout: Duration) throws {
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw QMPError.timeout(command: command, after: timeout) }
            let milliseconds = Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            var descriptor = pollfd(fd: fd, events: events, revents: 0)
            let ready = poll(&descriptor, 1, milliseconds)
            if ready > 0 { return }  // readable, writable, or hung up: the read/send says which
            if ready < 0 && errno != EINTR { throw QMPError.connectionClosed(command: command) }
        }
    }
}

// The POSIX calls whose names the client's own methods (close, connect, send) shadow.
private func posixClose(_ fd: Int32) -> Int32 { close(fd) }
private func posixConnect(_ fd: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Int32 { connect(fd, address, length) }
private func posixSend(_ fd: Int32, _ bytes: UnsafeRawPointer?, _ count: Int, _ flags: Int32) -> Int { send(fd, bytes, count, flags) }
