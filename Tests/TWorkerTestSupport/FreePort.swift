import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A test-helper failure with a readable message.
public struct TestSupportError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A TCP port on 127.0.0.1 that is free now, below the kernel's ephemeral range: a port the kernel
/// hands out to outgoing connections (ssh, redis clients) could be taken by one of them between the
/// pick and a fake guest's or server's bind, and that guest then never answers.
public func freeLoopbackPort() throws -> Int {
    let ceiling = min(ephemeralPortFloor(), 65000)
    for _ in 0..<200 {
        let port = Int.random(in: 10000..<ceiling)
        if try loopbackPortIsFree(port) { return port }
    }
    throw TestSupportError("no free port on 127.0.0.1 in 10000..<\(ceiling) after 200 tries")
}

/// True when 127.0.0.1:port can be bound right now.
public func loopbackPortIsFree(_ port: Int) throws -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestSupportError("socket() failed: errno \(errno)") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}

/// The first port of /proc/sys/net/ipv4/ip_local_port_range (Linux's default 32768 when unreadable).
private func ephemeralPortFloor() -> Int {
    guard let range = try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8),
          let first = range.split(whereSeparator: \.isWhitespace).first, let low = Int(first), low > 11000
    else { return 32768 }
    return low
}
