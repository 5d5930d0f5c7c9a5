import Foundation
import Synchronization
import Testing
import TWorkerCore
import TWorkerTestSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A one-connection QMP peer on a unix socket, speaking from a thread of its own: it sends the
/// greeting, then answers each command line with what `respond` returns (lines to send, or nil to
/// hang up). Every command it received is kept in `received`.
final class FakeQMPPeer: Sendable {
    let path: String
    private let listener: Int32
    private let log = LockedLog()

    /// Written by the peer's thread, read by the test.
    final class LockedLog: Sendable {
        private let items = Mutex<[[String: JSONValue]]>([])
        private let hungUp = Mutex(false)
        func append(_ item: [String: JSONValue]) { items.withLock { $0.append(item) } }
        var all: [[String: JSONValue]] { items.withLock { $0 } }
        func hangUp() { hungUp.withLock { $0 = true } }
        var clientHungUp: Bool { hungUp.withLock { $0 } }
    }

    var received: [[String: JSONValue]] { log.all }
    /// True once the peer read end-of-file: every copy of the client's socket is closed.
    var clientHungUp: Bool { log.clientHungUp }

    init(path: String, respond: @escaping @Sendable (_ command: String, _ id: JSONValue, _ message: [String: JSONValue]) -> [String]?) throws {
        self.path = path
        // Close-on-exec, so processes other tests spawn meanwhile do not keep the peer's end open.
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.listener = listener
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(listener, 1) == 0 else { throw TestSupportError("fake QMP peer: bind/listen \(path) failed: errno \(errno)") }
        let log = log
        Thread.detachNewThread {
            let fd = accept(listener, nil, nil)  // accept4 is not visible from Swift's Glibc
            guard fd >= 0 else { return }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            defer { close(fd) }
            func write(_ line: String) {
                let bytes = Array((line + "\r\n").utf8)
                _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            }
            write(#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": []}}"#)
            var buffer: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                guard count > 0 else {
                    log.hangUp()
                    return
                }
                buffer += chunk[..<count]
                while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = Data(buffer[..<newline])
                    buffer.removeSubrange(...newline)
                    guard let message = try? JSONDecoder().decode(JSONValue.self, from: line).objectValue,
                          let command = message["execute"]?.stringValue else { return }
                    log.append(message)
                    guard let lines = respond(command, message["id"] ?? .null, message) else { return }
                    lines.forEach(write)
                }
            }
        }
    }

    deinit {
        close(listener)
        unlink(path)
    }
}

@Suite struct QMPClientTests {
    /// Runs `body` against a fake peer in a fresh temp dir.
    func withPeer(_ respond: @escaping @Sendable (String, JSONValue, [String: JSONValue]) -> [String]?,
                  _ body: (FakeQMPPeer) async throws -> Void) async throws {
        let directory = try TempDirectory(prefix: "tworker-qmp")
        defer { directory.remove() }
        let peer = try FakeQMPPeer(path: directory.path + "/qmp.sock", respond: respond)
        try await body(peer)
    }

    /// The usual answer: `{"return": {}}` with the command's id.
    static func ok(_ id: JSONValue, _ value: String = "{}") -> String { #"{"return": \#(value), "id": \#(id.jsonText)}"# }

    @Test func negotiatesThenSkipsEventsAndStaleRepliesToFindItsOwn() async throws {
        try await withPeer({ command, id, _ in
            switch command {
            case "query-status":
                return [
                    #"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#,
                    #"{"return": {"status": "paused", "running": false}, "id": 999}"#,
                    Self.ok(id, #"{"status": "running", "singlestep": false, "running": true}"#),
                ]
            default: return [Self.ok(id)]
            }
        }) { peer in
            let client = try await QMPClient.connect(path: peer.path, timeout: .seconds(5))
            #expect(try await client.status() == QMPClient.Status(status: "running", running: true))
            #expect(peer.received.map { $0["execute"]?.stringValue } == ["qmp_capabilities", "query-status"])
            #expect(peer.received.map { $0["id"] } == [.int(1), .int(2)], "every command carries a fresh id")
            await client.close()
        }
    }

    @Test func argumentsAreSentAndErrorRepliesThrowQemusClassAndMessage() async throws {
        try await withPeer({ command, id, _ in
            command == "human-monitor-command"
                ? [Self.ok(id, #""Error: Device 'vda' does not have the requested snapshot 'nosuch'\r\n""#)]
                : command == "bogus"
                ? [#"{"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": \#(id.jsonText)}"#]
                : [Self.ok(id)]
        }) { peer in
            let client = try await QMPClient.connect(path: peer.path)
            let error = await #expect(throws: QMPError.self) { try await client.execute("bogus") }
            #expect(error == .command("bogus", errorClass: "CommandNotFound", desc: "The command bogus has not been found"))
            let hmp = await #expect(throws: QMPError.self) { try await client.humanMonitor("loadvm nosuch") }
            #expect(hmp == .humanMonitor(commandLine: "loadvm nosuch", message: "Error: Device 'vda' does not have the requested snapshot 'nosuch'"))
            #expect(peer.received.last?["arguments"] == .object(["command-line": .string("loadvm nosuch")]))
        }
    }

    @Test func aSilentPeerTimesOutAndAClosedOneIsReported() async throws {
        try await withPeer({ command, id, _ in
            switch command {
            case "stop": return []  // never answers
            case "cont": return nil  // hangs up
            default: return [Self.ok(id)]
            }
        }) { peer in
            let client = try await QMPClient.connect(path: peer.path)
            let started = ContinuousClock.now
            let timeout = await #expect(throws: QMPError.self) { try await client.stop(timeout: .milliseconds(300)) }
            #expect(timeout == .timeout(command: "stop", after: .milliseconds(300)))
            #expect(ContinuousClock.now - started < .seconds(3))
            let closed = await #expect(throws: QMPError.self) { try await client.cont() }
            #expect(closed == .connectionClosed(command: "cont"))
        }
    }

    @Test func aChildProcessDoesNotKeepTheConnectionOpen() async throws {
        try await withPeer({ _, id, _ in [Self.ok(id)] }) { peer in
            let client = try await QMPClient.connect(path: peer.path)
            let directory = try TempDirectory(prefix: "tworker-qmp-child")
            defer { directory.remove() }
            let child = try SpawnedProcess.spawn("/bin/sleep", ["30"], environment: [:], log: directory.path + "/sleep.log")
            defer { kill(child.pid, SIGKILL); _ = waitpid(child.pid, nil, 0) }
            await client.close()
            #expect(await eventually(timeout: .seconds(3)) { peer.clientHungUp }, "the socket was inherited by the child")
        }
    }

    @Test func connectingToNothingFailsWithinTheTimeout() async throws {
        let started = ContinuousClock.now
        let error = await #expect(throws: QMPError.self) {
            try await QMPClient.connect(path: "/tmp/tworker-no-such-qmp-\(getpid()).sock", timeout: .milliseconds(300))
        }
        #expect(error?.command == "connect")
        #expect(ContinuousClock.now - started < .seconds(3))
    }

    @Test func anHMPFailureCountsAsAnErrorInTheVMCommandMetric() {
        #expect(QMPClient.outcome(of: "human-monitor-command", reply: .string("Error: Snapshot 'x' does not exist\r\n")) == "error")
        #expect(QMPClient.outcome(of: "human-monitor-command", reply: .string("")) == "ok")
        #expect(QMPClient.outcome(of: "stop", reply: .object([:])) == "ok")
    }

    @Test func humanMonitorTextIsAnErrorOnlyWhenItSaysSo() {
        #expect(QMPClient.humanMonitorFailure("") == nil)
        #expect(QMPClient.humanMonitorFailure("VM status: running\r\n") == nil)
        #expect(QMPClient.humanMonitorFailure("Error: Snapshot 'x' does not exist\r\n") == "Error: Snapshot 'x' does not exist")
    }
}
