import RedisClient
import Testing

@Suite("RedisEndpoint URL parsing")
struct RedisEndpointTests {
    @Test func tcpWithPortNoPassword() throws {
        let endpoint = try RedisEndpoint(url: "redis://127.0.0.1:6380")
        #expect(endpoint.address == .tcp(host: "127.0.0.1", port: 6380))
        #expect(endpoint.password == nil)
        #expect(endpoint.username == nil)
        #expect(endpoint.database == 0)
    }

    @Test func tcpDefaultPort() throws {
        let endpoint = try RedisEndpoint(url: "redis://redis.internal")
        #expect(endpoint.address == .tcp(host: "redis.internal", port: 6379))
        #expect(try RedisEndpoint(url: "redis://redis.internal/").database == 0)
    }

    @Test func tcpWithPercentEncodedPasswordAndDatabase() throws {
        let endpoint = try RedisEndpoint(url: "redis://:s3cr%40t%3A%2F@redis.internal:6390/2")
        #expect(endpoint.address == .tcp(host: "redis.internal", port: 6390))
        #expect(endpoint.password == "s3cr@t:/")
        #expect(endpoint.username == nil)
        #expect(endpoint.database == 2)
    }

    @Test func tcpWithAclUser() throws {
        let endpoint = try RedisEndpoint(url: "redis://worker:pw@10.1.2.3/3")
        #expect(endpoint.address == .tcp(host: "10.1.2.3", port: 6379))
        #expect(endpoint.username == "worker")
        #expect(endpoint.password == "pw")
        #expect(endpoint.database == 3)
    }

    @Test func tcpIPv6AndDatabaseQuery() throws {
        let endpoint = try RedisEndpoint(url: "redis://[::1]:7000?db=5")
        #expect(endpoint.address == .tcp(host: "::1", port: 7000))
        #expect(endpoint.database == 5)
    }

    @Test func unixWithoutDatabase() throws {
        let endpoint = try RedisEndpoint(url: "unix:///run/redis/redis.sock")
        #expect(endpoint.address == .unix(path: "/run/redis/redis.sock"))
        #expect(endpoint.database == 0)
        #expect(endpoint.password == nil)
    }

    @Test func unixWithDatabaseAndPassword() throws {
        let endpoint = try RedisEndpoint(url: "unix:///tmp/r.sock?db=4&password=a%20b")
        #expect(endpoint.address == .unix(path: "/tmp/r.sock"))
        #expect(endpoint.database == 4)
        #expect(endpoint.password == "a b")
        let userinfo = try RedisEndpoint(url: "unix://:pw@/tmp/r.sock?db=1")
        #expect(userinfo.password == "pw")
        #expect(userinfo.database == 1)
    }

    @Test func descriptionMasksPassword() throws {
        let tcp = try RedisEndpoint(url: "redis://:hunter2@host:1234/1")
        #expect(tcp.description == "redis://:***@host:1234/1")
        let unix = try RedisEndpoint(url: "unix:///tmp/r.sock?db=2&password=hunter2")
        #expect(unix.description == "unix://:***@/tmp/r.sock?db=2")
        #expect(try RedisEndpoint(url: "redis://h").description == "redis://h:6379/0")
    }

    @Test(arguments: [
        ("foo", "redis.url: 'foo' is not a redis:// or unix:// URL"),
        ("http://host:6379", "redis.url: 'http://host:6379' is not a redis:// or unix:// URL"),
        ("", "redis.url: '' is not a redis:// or unix:// URL"),
        ("rediss://host", "redis.url: 'rediss://host' uses TLS (rediss://), which hiredis 0.14 cannot speak; put Redis behind spiped or stunnel and use redis:// to the local end (README: \"Redis across hosts: spiped or stunnel\")"),
        ("redis://", "redis.url: 'redis://' has no host"),
        ("redis://:6379/1", "redis.url: 'redis://:6379/1' has no host"),
        ("redis://host:0", "redis.url: 'redis://host:0' has port '0', which is not in 1-65535"),
        ("redis://host:65536", "redis.url: 'redis://host:65536' has port '65536', which is not in 1-65535"),
        ("redis://host:abc", "redis.url: 'redis://host:abc' has port 'abc', which is not in 1-65535"),
        ("redis://host:", "redis.url: 'redis://host:' has port '', which is not in 1-65535"),
        ("redis://host/-1", "redis.url: 'redis://host/-1' has database '-1', which is not a non-negative integer"),
        ("redis://host/one", "redis.url: 'redis://host/one' has database 'one', which is not a non-negative integer"),
        ("redis://host/1?db=2", "redis.url: 'redis://host/1?db=2' gives the database twice"),
        ("redis://host?timeout=3", "redis.url: 'redis://host?timeout=3' has unknown query parameter 'timeout' (known: db, password)"),
        ("redis://a:b:c", "redis.url: 'redis://a:b:c' has more than one ':' in host:port (put IPv6 hosts in brackets)"),
        ("redis://user@host", "redis.url: 'redis://user@host' has credentials without a password; write ':password@' or 'user:password@'"),
        ("redis://:pw%zz@host", "redis.url: 'redis://:***@host' has a bad percent-escape in the password"),
        ("unix://", "redis.url: 'unix://' has no socket path; a unix URL looks like unix:///path/to/redis.sock"),
        ("unix://host/tmp/r.sock", "redis.url: 'unix://host/tmp/r.sock' names a host; a unix URL looks like unix:///path/to/redis.sock"),
        ("unix:///tmp/r.sock?db=x", "redis.url: 'unix:///tmp/r.sock?db=x' has database 'x', which is not a non-negative integer"),
    ])
    func invalidURL(url: String, message: String) {
        #expect {
            try RedisEndpoint(url: url)
        } throws: { error in
            (error as? RedisURLError)?.description == message
        }
    }

    @Test func errorsNeverEchoThePassword() {
        for url in ["redis://:topsecret@host:99999", "unix:///tmp/r.sock?password=topsecret&db=x"] {
            do {
                _ = try RedisEndpoint(url: url)
                Issue.record("\(url) should not parse")
            } catch {
                let text = "\(error)"
                #expect(!text.contains("topsecret"), "\(text)")
                #expect(text.hasPrefix("redis.url: "))
            }
        }
    }
}

@Suite("RedisReply accessors")
struct RedisReplyTests {
    @Test func accessors() {
        #expect(RedisReply.bulk(Array("42".utf8)).int == 42)
        #expect(RedisReply.status("OK").string == "OK")
        #expect(RedisReply.integer(7).int == 7)
        #expect(RedisReply.integer(7).string == nil)
        #expect(RedisReply.bulk(Array("x".utf8)).int == nil)
        #expect(RedisReply.error("ERR").string == nil)
        #expect(RedisReply.null.isNull)
        #expect(!RedisReply.bulk([]).isNull)
        #expect(RedisReply.array([.integer(1)]).array == [.integer(1)])
        #expect(RedisReply.status("OK").array == nil)
    }

    @Test func errorClassification() {
        #expect(RedisError.connectionFailed("x").isConnectionError)
        #expect(RedisError.connectionLost("x").isConnectionError)
        #expect(!RedisError.server("WRONGTYPE").isConnectionError)
    }
}
