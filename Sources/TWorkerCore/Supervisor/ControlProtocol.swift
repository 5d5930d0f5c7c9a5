import Foundation

/// The control socket's protocol: one JSON request line in, one JSON response line out.
///
/// `{"command":"stop","worker":"worker-2","now":true}` → `{"ok":true,"message":"..."}`;
/// `{"command":"status"}` → `{"ok":true,"status":{...}}`; a refusal is `{"ok":false,"error":"..."}`.
public enum ControlCommand: String, Sendable, Codable, CaseIterable {
    case stop, restart, pause, resume, status
}

public struct ControlRequest: Sendable, Codable, Equatable {
    public var command: ControlCommand
    /// One worker (`worker-N`); nil: the whole master (stop) or every worker.
    public var worker: String?
    /// `stop --now`: TERM instead of QUIT.
    public var now: Bool?

    public init(command: ControlCommand, worker: String? = nil, now: Bool? = nil) {
        self.command = command
        self.worker = worker
        self.now = now
    }
}

public struct ControlResponse: Sendable, Codable, Equatable {
    public var ok: Bool
    public var message: String?
    public var error: String?
    public var status: StatusReport?

    public init(ok: Bool, message: String? = nil, error: String? = nil, status: StatusReport? = nil) {
        self.ok = ok
        self.message = message
        self.error = error
        self.status = status
    }

    public static func failure(_ error: String) -> ControlResponse { ControlResponse(ok: false, error: error) }
}

public enum ControlCodec {
    /// Longest request line accepted; anything longer is refused.
    public static let maxRequestBytes = 4096

    public struct DecodeError: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    /// One line of compact JSON ending in "\n".
    public static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Strings, numbers and bools only: encoding cannot fail.
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return Array(data) + [0x0A]
    }

    /// Decodes one line (with or without its "\n").
    public static func decode<T: Decodable>(_ type: T.Type, from line: [UInt8]) throws(DecodeError) -> T {
        var bytes = line[...]
        while let last = bytes.last, last == 0x0A || last == 0x0D { bytes = bytes.dropLast() }
        guard !bytes.isEmpty else { throw DecodeError(description: "empty request") }
        guard !bytes.contains(0x0A) else { throw DecodeError(description: "more than one line") }
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch {
            throw DecodeError(description: "not a valid \(T.self): \(String(decoding: bytes.prefix(200), as: UTF8.self))")
        }
    }
}
