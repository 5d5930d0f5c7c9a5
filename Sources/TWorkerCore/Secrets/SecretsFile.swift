import Foundation

/// The host's `secrets.env` in the config directory: `NAME=value` lines added, as secrets, to
/// every job's environment. Blank lines and lines starting with `#` are skipped; the value is
/// everything after the first `=`, taken as it is (no quotes removed, as Docker's `--env-file`).
/// Only its owner may read it (mode 0600 or 0400): anything else is a config error.
public enum SecretsFile {
    public static let name = "secrets.env"

    /// The variables of the file at `path` (shown as `display` in problems); none when there
    /// is no file. Every problem is one `file:line: ...` line.
    public static func load(path: String, display: String) throws(ConfigError) -> [JobPayload.EnvVar] {
        var info = stat()
        guard stat(path, &info) == 0 else {
            if errno == ENOENT { return [] }
            throw ConfigError(problems: ["\(display): cannot read it: \(String(cString: strerror(errno)))"])
        }
        guard info.st_mode & S_IFMT == S_IFREG else { throw ConfigError(problems: ["\(display): not a regular file"]) }
        let mode = info.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            throw ConfigError(problems: [
                "\(display): mode \(String(mode, radix: 8)) lets other users read the secrets; it must be 0600 (chmod 600 \(display))",
            ])
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(problems: ["\(display): cannot read it (it must belong to the account the workers run as)"])
        }
        guard let text = String(data: data, encoding: .utf8) else { throw ConfigError(problems: ["\(display): not valid UTF-8"]) }
        return try parse(text, display: display)
    }

    /// The variables of `text`; every problem with its line.
    public static func parse(_ text: String, display: String) throws(ConfigError) -> [JobPayload.EnvVar] {
        var variables: [JobPayload.EnvVar] = []
        var problems: [String] = []
        // "\r\n" is one Character in Swift: a CRLF file splits into the same lines.
        for (index, line) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let at = "\(display):\(index + 1)"
            guard let equals = line.firstIndex(of: "=") else {
                problems.append("\(at): expected NAME=value")
                continue
            }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces)
            let value = String(line[line.index(after: equals)...])
            guard JobValidation.isValidEnvName(name) else {
                problems.append("\(at): invalid variable name (must match [A-Za-z_][A-Za-z0-9_]*)")
                continue
            }
            if !value.isEmpty, value.utf8.count < SecretMask.minimumLength {
                problems.append("\(at): \(name): a secret must be at least \(SecretMask.minimumLength) characters, got \(value.utf8.count) (a shorter value would mask ordinary text all over the log)")
                continue
            }
            variables.append(JobPayload.EnvVar(name: name, value: value, secure: true))
        }
        guard problems.isEmpty else { throw ConfigError(problems: problems) }
        return variables
    }
}
