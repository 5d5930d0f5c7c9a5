import Foundation

/// Where the base VM comes from: a `.box` file unpacked under `<state_dir>/boxes/`, or a box
/// added to vagrant (`vagrant box add`), read from vagrant's own box directory.
public enum BaseBox {
    public struct Problem: Error, CustomStringConvertible {
        public var description: String
    }

    /// The `.ovf` to import for `vms.base_box`.
    public static func ovf(for box: String, stateDir: String, environment: [String: String] = ProcessInfo.processInfo.environment) async throws -> String {
        if isFile(box) {
            return try await unpack(box, stateDir: stateDir)
        }
        if box.contains("/") && box.hasSuffix(".box") {
            throw Problem(description: "vms.base_box: \(box) does not exist (build it with `tworker vagrant rebuild --provision`, or name a box added with `vagrant box add`)")
        }
        return try vagrantBox(named: box, environment: environment)
    }

    /// True when `box` is a file to unpack (with tar), not a box added to vagrant.
    public static func isFile(_ box: String) -> Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: box, isDirectory: &isDirectory) && !isDirectory.boolValue
    }

    /// Unpacks a `.box` (a tar, usually gzipped) into its own directory, keyed by the file's
    /// size and modification time so a changed box is unpacked again.
    static func unpack(_ box: String, stateDir: String) async throws -> String {
        let attributes = try FileManager.default.attributesOfItem(atPath: box)
        let size = (attributes[.size] as? NSNumber)?.intValue ?? 0
        let modified = Int((attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)
        let name = ((box as NSString).lastPathComponent as NSString).deletingPathExtension
        let directory = (stateDir as NSString).appendingPathComponent("boxes/\(name)-\(size)-\(modified)")
        if let ovf = findOVF(in: directory) { return ovf }
        let partial = directory + ".partial"
        try? FileManager.default.removeItem(atPath: partial)
        try FileManager.default.createDirectory(atPath: partial, withIntermediateDirectories: true)
        do {
            try await ProgramRunner().run(.tarExtract(box, into: partial))
        } catch let failure as ProgramFailure {
            throw Problem(description: "cannot unpack \(box): tar: \(failure.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        try FileManager.default.moveItem(atPath: partial, toPath: directory)
        guard let ovf = findOVF(in: directory) else { throw Problem(description: "\(box) holds no .ovf file: not a VirtualBox box") }
        return ovf
    }

    /// A box added with `vagrant box add NAME`: `$VAGRANT_HOME/boxes/<NAME>/<version>/virtualbox/`.
    static func vagrantBox(named name: String, environment: [String: String]) throws -> String {
        let home = environment["VAGRANT_HOME"] ?? ((environment["HOME"] ?? NSHomeDirectory()) + "/.vagrant.d")
        let escaped = name.replacingOccurrences(of: "/", with: "-VAGRANTSLASH-")
        let root = "\(home)/boxes/\(escaped)"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).filter { !$0.hasPrefix(".") && $0 != "metadata_url" }
        for version in versions.sorted(by: { $0.compare($1, options: .numeric) == .orderedDescending }) {
            if let ovf = findOVF(in: "\(root)/\(version)/virtualbox") { return ovf }
        }
        throw Problem(description: "vms.base_box: '\(name)' is neither a .box file nor a box added with `vagrant box add` (looked in \(root))")
    }

    static func findOVF(in directory: String) -> String? {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return nil }
        return entries.sorted().first { $0.hasSuffix(".ovf") }.map { "\(directory)/\($0)" }
    }
}
