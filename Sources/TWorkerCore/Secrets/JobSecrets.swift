import Foundation

/// Which of a job's variables are secret: those marked `secure` (a payload's
/// `{"name", "value", "secure": true}` and every line of `secrets.env`) and those whose name
/// matches one of `secrets.redact`'s patterns.
public enum JobSecrets {
    /// `secrets.redact`'s default.
    public static let defaultRedact = ["*_TOKEN", "*_PASSWORD", "*_SECRET", "*_KEY", "*_API_KEY"]

    /// Whether `name` matches one of `patterns` (shell globs, case-insensitive: `*_TOKEN` also
    /// hides `github_token`).
    public static func matches(_ name: String, patterns: [String]) -> Bool {
        patterns.contains { fnmatch($0.uppercased(), name.uppercased(), 0) == 0 }
    }

    /// The mask of `variables`' secret values; throws for a secret shorter than
    /// `SecretMask.minimumLength`. An empty value hides nothing and is no secret.
    public static func mask(for variables: [JobPayload.EnvVar], redact patterns: [String]) throws(SecretTooShort) -> SecretMask {
        var values: [String] = []
        for variable in variables where variable.secure || matches(variable.name, patterns: patterns) {
            guard !variable.value.isEmpty else { continue }
            guard variable.value.utf8.count >= SecretMask.minimumLength else {
                throw SecretTooShort(name: variable.name, length: variable.value.utf8.count)
            }
            values.append(variable.value)
        }
        return SecretMask(values: values)
    }
}

/// A secret too short to mask: it would hide ordinary text all over the log.
public struct SecretTooShort: Error, Sendable, Equatable, CustomStringConvertible {
    public var name: String
    /// Bytes.
    public var length: Int

    public var description: String {
        "The secret variable \(name) is \(length) characters long; secrets must be at least \(SecretMask.minimumLength) characters "
            + "(a shorter value would mask ordinary text all over the log). Use a longer value, or a name secrets.redact does not match."
    }
}
