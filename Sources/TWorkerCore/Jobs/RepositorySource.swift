import Foundation

/// Turns what an operator passes to `tworker enqueue --repo` into a payload's repository.
public enum RepositorySource {
    /// Local paths become absolute: the build clones from its own workspace, elsewhere.
    public static func absolute(_ repo: String, currentDirectory: String = FileManager.default.currentDirectoryPath) -> String {
        guard !repo.contains("://"), FileManager.default.fileExists(atPath: repo) else { return repo }
        let base = URL(fileURLWithPath: currentDirectory, isDirectory: true)
        return URL(fileURLWithPath: repo, relativeTo: base).standardizedFileURL.path
    }

    /// `owner/name` from the URL's last two path components (`.git` dropped), with characters
    /// outside the slug alphabet replaced by `-`.
    public static func slug(from url: String) -> String {
        let parts = url.split(whereSeparator: { $0 == "/" || $0 == ":" }).map { part -> String in
            var name = String(part)
            if name.hasSuffix(".git") { name.removeLast(4) }
            let cleaned = String(name.map { $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) ? $0 : "-" })
            return cleaned == "." || cleaned == ".." ? "-" : cleaned
        }.filter { !$0.isEmpty }
        let name = parts.last ?? "repo"
        let owner = parts.count >= 2 ? parts[parts.count - 2] : "local"
        return "\(owner.prefix(100))/\(name.prefix(100))"
    }
}
