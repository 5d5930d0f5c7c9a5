import Foundation

/// The secret values of one job, and every form of them that must not reach the log: the value
/// itself, its base64 (at each of the three alignments it can have inside a longer encoded
/// text) and its URL-encoded forms. Every occurrence is replaced by `[secure]`.
///
/// One Aho-Corasick automaton over all the forms, as a full transition table: one table
/// lookup per byte of output whatever the number of secrets, and the state after the last
/// byte says how much of the end could still be the start of a secret (`SecretRedactor`).
public struct SecretMask: Sendable {
    /// What a secret is replaced by.
    public static let replacement = "[secure]"
    /// Shortest secret accepted: a shorter one would mask ordinary words all over the log.
    public static let minimumLength = 6

    /// Every byte string masked, longest first.
    public let patterns: [[UInt8]]
    /// `states × 256` transitions.
    private let transitions: [Int32]
    /// Length of the text a state stands for (the longest suffix that is a prefix of a pattern).
    private let depths: [Int32]
    /// Length of the longest pattern ending in a state, 0 for none.
    private let matches: [Int32]

    /// A mask of `values` and their encoded forms; values shorter than `minimumLength` bytes
    /// are left out (`JobSecrets` refuses them before a mask is built).
    public init(values: [String]) {
        var forms = Set<[UInt8]>()
        for value in values where value.utf8.count >= Self.minimumLength {
            for form in Self.forms(of: Array(value.utf8)) where form.count >= Self.minimumLength { forms.insert(form) }
        }
        patterns = forms.sorted { $0.count != $1.count ? $0.count > $1.count : $0.lexicographicallyPrecedes($1) }
        (transitions, depths, matches) = Self.automaton(patterns)
    }

    /// No secrets: output passes unchanged.
    public var isEmpty: Bool { patterns.isEmpty }
    /// The longest form masked, in bytes.
    public var longestPattern: Int { patterns.first?.count ?? 0 }

    /// `text` with every secret masked (a script's `$ command` echo).
    public func redact(_ text: String) -> String {
        guard !isEmpty else { return text }
        let bytes = Array(text.utf8)
        return String(decoding: scan(bytes, final: true).output, as: UTF8.self)
    }

    // MARK: - Forms

    /// The value, its base64 cores and its URL-encoded forms.
    static func forms(of value: [UInt8]) -> [[UInt8]] {
        var forms = [value]
        forms += (0..<3).map { base64Core(value, offset: $0) }
        forms += urlEncoded(value)
        return forms
    }

    private static let base64Alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// The base64 characters that depend only on `value`'s bits when it starts `offset` bytes
    /// into the encoded data: the characters at either end that share bits with neighbouring
    /// bytes (and any `=` padding) are left out, so the core appears whatever surrounds it.
    static func base64Core(_ value: [UInt8], offset: Int) -> [UInt8] {
        let data = [UInt8](repeating: 0, count: offset) + value
        var chars: [UInt8] = []
        chars.reserveCapacity(data.count * 4 / 3 + 4)
        var index = 0
        while index < data.count {
            let b0 = Int(data[index]), b1 = index + 1 < data.count ? Int(data[index + 1]) : 0, b2 = index + 2 < data.count ? Int(data[index + 2]) : 0
            let group = b0 << 16 | b1 << 8 | b2
            for shift in [18, 12, 6, 0] { chars.append(base64Alphabet[(group >> shift) & 63]) }
            index += 3
        }
        // Character j holds bits [6j, 6j + 6) of the data; the value holds bits [8 offset, 8 (offset + count)).
        let first = (8 * offset + 5) / 6
        let end = (8 * (offset + value.count)) / 6
        guard end > first else { return [] }
        return Array(chars[first..<end])
    }

    /// Percent-encoding of everything but RFC 3986's unreserved characters, in upper- and
    /// lower-case hex, and the form encoding (`+` for a space); only forms that differ from the value.
    static func urlEncoded(_ value: [UInt8]) -> [[UInt8]] {
        func encode(lowercase: Bool, plusForSpace: Bool) -> [UInt8] {
            let hex = Array((lowercase ? "0123456789abcdef" : "0123456789ABCDEF").utf8)
            var out: [UInt8] = []
            for byte in value {
                switch byte {
                case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                     UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                    out.append(byte)
                case UInt8(ascii: " ") where plusForSpace:
                    out.append(UInt8(ascii: "+"))
                default:
                    out += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 15)]]
                }
            }
            return out
        }
        let forms = Set([encode(lowercase: false, plusForSpace: false), encode(lowercase: true, plusForSpace: false),
                         encode(lowercase: false, plusForSpace: true), encode(lowercase: true, plusForSpace: true)])
        return forms.filter { $0 != value }.sorted { $0.lexicographicallyPrecedes($1) }
    }

    // MARK: - Matching

    private static func automaton(_ patterns: [[UInt8]]) -> ([Int32], [Int32], [Int32]) {
        var transitions = [Int32](repeating: -1, count: 256)
        var depths: [Int32] = [0]
        var matches: [Int32] = [0]
        // The trie.
        for pattern in patterns {
            var state = 0
            for byte in pattern {
                let slot = state << 8 | Int(byte)
                if transitions[slot] < 0 {
                    transitions[slot] = Int32(depths.count)
                    transitions += [Int32](repeating: -1, count: 256)
                    depths.append(depths[state] + 1)
                    matches.append(0)
                }
                state = Int(transitions[slot])
            }
            matches[state] = Int32(pattern.count)
        }
        // Failure links breadth first, completing the table into a DFA.
        var failure = [Int32](repeating: 0, count: depths.count)
        var queue: [Int] = []
        for byte in 0..<256 {
            if transitions[byte] < 0 { transitions[byte] = 0 } else { queue.append(Int(transitions[byte])) }
        }
        var head = 0
        while head < queue.count {
            let state = queue[head]
            head += 1
            let fail = Int(failure[state])
            // The longest pattern ending here is this state's own, else its failure's.
            if matches[state] == 0 { matches[state] = matches[fail] }
            for byte in 0..<256 {
                let slot = state << 8 | byte
                let next = transitions[slot]
                if next < 0 {
                    transitions[slot] = transitions[fail << 8 | byte]
                } else {
                    failure[Int(next)] = transitions[fail << 8 | byte]
                    queue.append(Int(next))
                }
            }
        }
        return (transitions, depths, matches)
    }

    /// Masks `bytes`. Unless `final`, output stops before the longest end of `bytes` that could
    /// be the start of a secret (and before a match reaching into it): `heldFrom` is where the
    /// caller must start again once more bytes have come.
    func scan(_ bytes: [UInt8], final: Bool) -> (output: [UInt8], heldFrom: Int) {
        let count = bytes.count
        var intervals: [(start: Int, end: Int)] = []
        var state = 0
        transitions.withUnsafeBufferPointer { table in
            matches.withUnsafeBufferPointer { matches in
                bytes.withUnsafeBufferPointer { input in
                    for index in 0..<count {
                        state = Int(table[state << 8 | Int(input[index])])
                        let length = Int(matches[state])
                        if length > 0 {
                            // Overlapping matches merge into one masked span.
                            var start = index + 1 - length
                            while let last = intervals.last, last.end > start {
                                start = min(start, last.start)
                                intervals.removeLast()
                            }
                            intervals.append((start, index + 1))
                        }
                    }
                }
            }
        }
        var cut = final ? count : count - Int(depths[state])
        while let last = intervals.last, last.end > cut {
            cut = min(cut, last.start)
            intervals.removeLast()
        }
        guard !intervals.isEmpty else { return (cut == count ? bytes : Array(bytes[0..<cut]), cut) }
        var output: [UInt8] = []
        output.reserveCapacity(cut)
        var position = 0
        for interval in intervals {
            output += bytes[position..<interval.start]
            output += Self.replacementBytes
            position = interval.end
        }
        output += bytes[position..<cut]
        return (output, cut)
    }

    private static let replacementBytes = Array(replacement.utf8)
}

/// Masks a stream of output read in chunks of any size: what could be the start of a secret
/// split across two reads is held back until the next chunk (or `flush`) decides.
public struct SecretRedactor: Sendable {
    public let mask: SecretMask
    private var held: [UInt8] = []

    public init(mask: SecretMask) { self.mask = mask }

    /// Bytes held back for the next chunk.
    public var heldCount: Int { held.count }

    /// `chunk`'s masked output, without what is held back.
    public mutating func redact(_ chunk: [UInt8]) -> [UInt8] {
        guard !mask.isEmpty else { return chunk }
        let input = held.isEmpty ? chunk : held + chunk
        let (output, heldFrom) = mask.scan(input, final: false)
        held = heldFrom == input.count ? [] : Array(input[heldFrom...])
        return output
    }

    /// Everything still held, masked: the stream ends (or must be written now).
    public mutating func flush() -> [UInt8] {
        guard !held.isEmpty else { return [] }
        defer { held = [] }
        return mask.scan(held, final: true).output
    }
}
