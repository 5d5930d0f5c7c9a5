import Foundation
import Synchronization

/// Paths of the master's runtime files under `<state_dir>/run/`.
public struct MasterPaths: Sendable, Equatable {
    public var directory: String
    public init(stateDir: String) { directory = (stateDir as NSString).appendingPathComponent("run") }
    public var pidFile: String { directory + "/tworker.pid" }
    public var socket: String { directory + "/tworker.sock" }
}

/// One master per config and host: `<state_dir>/run/tworker.pid`, held for as long as it runs.
public final class MasterLock: Sendable {
    private let lock: PidFileLock
    public var path: String { lock.path }

    public struct Held: Error, CustomStringConvertible {
        public var path: String
        public var pid: String
        public var description: String {
            "a tworker master is already running for this config (pid \(pid), \(path)); stop it first (tworker stop) or send it HUP to reload"
        }
    }

    public init(paths: MasterPaths) throws {
        do {
            lock = try PidFileLock(path: paths.pidFile)
        } catch let held as PidFileLock.Held {
            throw Held(path: held.path, pid: held.pid)
        }
    }

    /// The pid of the running master, nil when none holds the lock.
    public static func runningPID(paths: MasterPaths) -> pid_t? {
        PidFileLock.holder(of: paths.pidFile)
    }

    /// Removes the pidfile and drops the lock.
    public func release() {
        lock.release()
    }
}

enum UnixSocket {
    struct Failure: Error, CustomStringConvertible {
        var description: String
        var code: Int32 = 0
    }

    static func withAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) throws -> T {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else {
            throw Failure(description: "the socket path \(path) is \(bytes.count) bytes, longer than the \(capacity - 1) a unix socket allows; use a shorter state_dir")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: bytes)
            buffer[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    static func setTimeout(_ fd: Int32, _ seconds: Int, option: Int32) {
        var value = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Reads up to the first "\n" (at most `limit` bytes); nil on EOF, error or timeout before one.
    static func readLine(_ fd: Int32, limit: Int) -> [UInt8]? {
        var line: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while line.count <= limit {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return line.isEmpty ? nil : line }
            if let newline = buffer[..<count].firstIndex(of: 0x0A) {
                return line + buffer[..<newline]
            }
            line += buffer[..<count]
        }
        return nil
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return false }
            offset += written
        }
        return true
    }
}

/// The master's end of `<state_dir>/run/tworker.sock`: a unix stream socket (mode 0600)
/// answering one JSON request line per connection with one JSON response line.
public final class ControlServer: Sendable {
    public let path: String
    private let fd: Int32
    private let closed = ClosedFlag()

    final class ClosedFlag: Sendable {
        let value = Atomic<Bool>(false)
        func load() -> Bool { value.load(ordering: .acquiring) }
        func set() -> Bool { value.exchange(true, ordering: .acquiringAndReleasing) }
    }

    public init(path: String, handler: @escaping @Sendable (ControlRequest) async -> ControlResponse) throws {
        self.path = path
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw UnixSocket.Failure(description: "socket(): \(String(cString: strerror(errno)))") }
        // The master holds the pidfile lock: whatever socket file is there is a dead master's.
        unlink(path)
        let previous = umask(0o177)
        let bound = try UnixSocket.withAddress(path) { bind(fd, $0, $1) }
        let bindErrno = errno
        umask(previous)
        guard bound == 0 else {
            Glibc.close(fd)
            throw UnixSocket.Failure(description: "cannot create the control socket \(path): \(String(cString: strerror(bindErrno)))")
        }
        chmod(path, 0o600)
        guard listen(fd, 16) == 0 else {
            Glibc.close(fd)
            throw UnixSocket.Failure(description: "listen(\(path)): \(String(cString: strerror(errno)))")
        }
        self.fd = fd
        let thread = Thread { [fd, closed] in
            while !closed.load() {
                let connection = accept(fd, nil, nil)
                if connection < 0 {
                    if errno == EINTR || errno == ECONNABORTED { continue }
                    if closed.load() { break }
                    usleep(50_000)
                    continue
                }
                _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
                UnixSocket.setTimeout(connection, 2, option: SO_RCVTIMEO)
                UnixSocket.setTimeout(connection, 5, option: SO_SNDTIMEO)
                guard let line = UnixSocket.readLine(connection, limit: ControlCodec.maxRequestBytes) else {
                    _ = UnixSocket.writeAll(connection, ControlCodec.encode(ControlResponse.failure("no request line (or longer than \(ControlCodec.maxRequestBytes) bytes)")))
                    Glibc.close(connection)
                    continue
                }
                Task {
                    let response: ControlResponse
                    do {
                        response = await handler(try ControlCodec.decode(ControlRequest.self, from: line))
                    } catch {
                        response = .failure("\(error)")
                    }
                    _ = UnixSocket.writeAll(connection, ControlCodec.encode(response))
                    Glibc.close(connection)
                }
            }
        }
        thread.name = "tworker-control"
        thread.start()
    }

    /// Stops accepting and removes the socket file.
    public func close() {
        guard !closed.set() else { return }
        unlink(path)
        shutdown(fd, Int32(SHUT_RDWR))
        // The accept thread owns no descriptor but this one; closing it after shutdown is safe.
        Glibc.close(fd)
    }
}

/// The CLI's end of the control socket.
public enum ControlClient {
    public enum Failure: Error, CustomStringConvertible {
        /// No master listens on `path` (no socket file, or nobody accepting).
        case noMaster(path: String)
        case failed(String)

        public var description: String {
            switch self {
            case .noMaster(let path): "no master running on this host (nothing listens on \(path))"
            case .failed(let message): message
            }
        }
    }

    public static func send(_ request: ControlRequest, path: String, timeoutSeconds: Int = 30) throws(Failure) -> ControlResponse {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .failed("socket(): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let connected: Int32
        do {
            connected = try UnixSocket.withAddress(path) { connect(fd, $0, $1) }
        } catch {
            throw .failed("\(error)")
        }
        guard connected == 0 else {
            let code = errno
            if code == ENOENT || code == ECONNREFUSED { throw .noMaster(path: path) }
            throw .failed("cannot connect to \(path): \(String(cString: strerror(code)))")
        }
        UnixSocket.setTimeout(fd, timeoutSeconds, option: SO_RCVTIMEO)
        UnixSocket.setTimeout(fd, 5, option: SO_SNDTIMEO)
        guard UnixSocket.writeAll(fd, ControlCodec.encode(request)) else {
            throw .failed("cannot send the request to \(path): \(String(cString: strerror(errno)))")
        }
        guard let line = UnixSocket.readLine(fd, limit: 16 << 20) else {
            throw .failed("the master did not answer on \(path)")
        }
        do {
            return try ControlCodec.decode(ControlResponse.self, from: line)
        } catch {
            throw .failed("unexpected answer from the master: \(error.description)")
        }
    }
}
