import Foundation
import Testing
import TWorkerCore

@Suite struct JSONValueTests {
    private func parse(_ text: String) throws -> JSONValue { try JSONValue.parse(Array(text.utf8)) }
    private func text(_ value: JSONValue) -> String { String(decoding: value.serialized(), as: UTF8.self) }

    @Test func parsesScalarsKeepingIntegersExact() throws {
        #expect(try parse("null") == .null)
        #expect(try parse(" true ") == .bool(true))
        #expect(try parse("false") == .bool(false))
        #expect(try parse("9007199254740993") == .int(9_007_199_254_740_993))  // not representable as Double
        #expect(try parse("-9223372036854775808") == .int(.min))
        #expect(try parse("-0") == .int(0))
        #expect(try parse("1.0") == .double(1.0))
        #expect(try parse("1e2") == .double(100))
        #expect(try parse("-2.5E-3") == .double(-0.0025))
        #expect(try parse("18446744073709551616") == .double(18_446_744_073_709_551_616))
        #expect(try parse("\"h\\u00e9\\ud83d\\ude00\\n\\/\"") == .string("hé😀\n/"))
    }

    @Test func parsesNestedStructures() throws {
        let v = try parse(#"{"a": [1, {"b": null}, "x"], "c": {}}"#)
        #expect(v == .object(["a": .array([.int(1), .object(["b": .null]), .string("x")]), "c": .object([:])]))
    }

    @Test(arguments: [
        "", "   ", "{", "[1,]", "{\"a\":1,}", "01", "1.", ".5", "-", "+1", "1e", "NaN", "Infinity", "1e400",
        "\"abc", "\"\\x\"", "\"\\ud800\"", "\"\\udc00x\"", "\"\\u12\"", "tru", "nul", "[1 2]", "{\"a\" 1}",
        "{1:2}", "1 2", "{\"a\":1,\"a\":2}", "'a'", "[\"a\"]x",
    ])
    func rejectsInvalidJSON(_ input: String) {
        #expect(throws: JSONParseError.self) { try JSONValue.parse(Array(input.utf8)) }
    }

    @Test func rejectsRawControlCharactersAndBadUTF8() {
        #expect(throws: JSONParseError.self) { try JSONValue.parse([0x22, 0x61, 0x0A, 0x22]) }
        #expect(throws: JSONParseError.self) { try JSONValue.parse([0x22, 0xFF, 0x22]) }
        #expect(throws: JSONParseError.self) { try JSONValue.parse([0x22, 0xC3, 0x22]) }  // truncated sequence
    }

    @Test func rejectsExcessiveNesting() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: JSONParseError.self) { try JSONValue.parse(Array(deep.utf8)) }
        let ok = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect((try? JSONValue.parse(Array(ok.utf8))) != nil)
    }

    @Test func errorNamesOffset() {
        do {
            _ = try JSONValue.parse(Array("[1, x]".utf8))
            Issue.record("expected an error")
        } catch let error as JSONParseError {
            #expect(error.offset == 4)
        } catch {
            Issue.record("wrong error \(error)")
        }
    }

    @Test func serializesCompactWithSortedKeys() {
        let v = JSONValue.object([
            "b": .int(2), "a": .array([.null, .bool(true), .double(1.5)]), "B": .string("x"), "é": .int(1),
        ])
        #expect(text(v) == #"{"B":"x","a":[null,true,1.5],"b":2,"é":1}"#)
        #expect(text(.int(-42)) == "-42")
        #expect(text(.double(.infinity)) == "null")
    }

    @Test func escapesStrings() {
        let s = "q\"b\\s/\n\r\t\u{8}\u{C}\u{0}\u{1F}\u{7F}é😀\u{2028}"
        #expect(text(.string(s)) == "\"q\\\"b\\\\s/\\n\\r\\t\\b\\f\\u0000\\u001f\\u007fé😀\u{2028}\"")
    }

    @Test(arguments: [
        "", "plain", "quote\" backslash\\ slash/", "\u{0}\u{1}\u{2}\u{1B}[31m\u{7F}", "line\nbreak\r\n\ttab",
        "unicode é ñ 中文 😀 \u{2028}\u{2029} e\u{301}", String(repeating: "x", count: 10_000),
    ])
    func stringsRoundTripThroughOurParserAndFoundations(_ s: String) throws {
        let bytes = JSONValue.string(s).serialized()
        #expect(try JSONValue.parse(bytes) == .string(s))
        // An independent decoder must agree, so the output is valid JSON and not just self-consistent.
        #expect(try JSONDecoder().decode(String.self, from: Data(bytes)) == s)
    }

    @Test func documentsRoundTrip() throws {
        let source = #"{"args":[{"id":12,"n":[1,2.25,-3,true,false,null],"s":"a\"b"}],"class":"Build","x":{"y":{}}}"#
        let v = try parse(source)
        #expect(text(v) == source)
        #expect(try JSONValue.parse(v.serialized()) == v)
    }

    @Test func codableInteropWithFoundation() throws {
        let v = JSONValue.object(["i": .int(7), "d": .double(0.5), "s": .string("x"), "a": .array([.null, .bool(false)])])
        let data = try JSONEncoder().encode(v)
        #expect(try JSONDecoder().decode(JSONValue.self, from: data) == v)
        #expect(try JSONValue.parse(Array(data)) == v)
    }
}
