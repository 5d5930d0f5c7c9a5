import Foundation

/// The image new worker overlays are made on: `vms.base_image`, or the provisioned copy of it
/// that `tworker vms reprovision --strategy base` (or `rebuild --provision`) made.
///
/// Provisioned bases are standalone files under `<state_dir>/qemu/images/`, one per run, never
/// written again once made: a running worker's overlay reads from its base for as long as it
/// runs, so a new base is a new file, and `current.json` says which one new overlays use.
public struct QEMUBaseImage: Sendable {
    /// `vms.base_image`: the operator's file, never written or deleted by tworker.
    public let configured: String
    public let directory: String

    public init(configured: String, stateDir: String) {
        self.configured = configured
        directory = (stateDir as NSString).appendingPathComponent("qemu/images")
    }

    var pointerFile: String { directory + "/current.json" }

    /// What `current.json` holds: the provisioned base, and the `vms.base_image` it was made
    /// from (a different `vms.base_image` in the config makes it stale).
    struct Pointer: Codable, Equatable {
        var image: String
        var from: String
    }

    /// The provisioned base new overlays use, when there is one for this `vms.base_image`.
    public var provisioned: String? {
        guard let data = FileManager.default.contents(atPath: pointerFile),
              let pointer = try? JSONDecoder().decode(Pointer.self, from: data),
              pointer.from == configured, FileManager.default.fileExists(atPath: pointer.image) else { return nil }
        return pointer.image
    }

    /// The image a new worker overlay is made on.
    public var current: String { provisioned ?? configured }

    /// Makes `image` the base of every overlay made from now on; nil goes back to `vms.base_image`.
    public func use(_ image: String?) throws {
        guard let image else {
            try? FileManager.default.removeItem(atPath: pointerFile)
            return
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try JSONEncoder().encode(Pointer(image: image, from: configured)).write(to: URL(fileURLWithPath: pointerFile), options: .atomic)
    }

    /// A path for the next provisioned base: named by the time it was made, never an existing file.
    public func nextImage(now: Date = Date()) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        let stem = directory + "/base-" + formatter.string(from: now)
        var candidate = stem + ".qcow2"
        var suffix = 2
        while FileManager.default.fileExists(atPath: candidate) || FileManager.default.fileExists(atPath: candidate + ".partial") {
            candidate = "\(stem)-\(suffix).qcow2"
            suffix += 1
        }
        return candidate
    }

    /// Every provisioned base on disk, by name.
    public var images: [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix("base-") && $0.hasSuffix(".qcow2") }.sorted().map { directory + "/" + $0 }
    }
}
