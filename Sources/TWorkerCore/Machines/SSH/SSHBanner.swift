import Foundation

/// Readiness test for a VM's SSH: a server that is up greets first with `SSH-2.0-...`.
///
/// VirtualBox's NAT engine accepts connections on the forwarded port before the guest's sshd
/// runs, so an open port proves nothing; the banner does, and checking it costs no ssh
/// process and no handshake.
enum SSHBanner {
    /// True when `host:port` greets with an SSH banner within `timeout`.
    static func answers(host: String, port: Int, timeout: Duration = .milliseconds(500)) async -> Bool {
        await withCheckedContinuation { continuation in
            // Blocking socket calls stay off Swift's cooperative pool.
            Thread.detachNewThread {
                continuation.resume(returning: probe(host: host, port: port, timeoutMilliseconds: Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)))
            }
        }
    }

    private static func probe(host: String, port: Int, timeoutMilliseconds: Int32) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { return false }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if connected != 0 && errno != EINPROGRESS { return false }
        var received: [UInt8] = []
        let deadline = ContinuousClock.now + .milliseconds(Int(timeoutMilliseconds))
        while received.count < 4, ContinuousClock.now < deadline {
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let left = deadline - ContinuousClock.now
            let wait = Int32(max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            guard poll(&descriptor, 1, wait) > 0 else { return false }
            var buffer = [UInt8](repeating: 0, count: 64)
            let count = read(fd, &buffer, buffer.count)
            if count <= 0 { return false }
            received += buffer[0..<count]
        }
        return received.starts(with: Array("SSH-".utf8))
    }
}
