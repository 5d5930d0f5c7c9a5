import Foundation

/// Builds and reads Vagrant `.box` files for tests, in the format the fake `VBoxManage import` and the
/// fake `vagrant` understand: a tar (optionally gzip) of `metadata.json` (`{"provider":"virtualbox"}`),
/// `box.ovf` (whose `<References><File ovf:href="box-disk001.vmdk"/>` names the disk) and
/// `box-disk001.vmdk`, the "disk image": a tar archive of the guest's filesystem.
public enum BoxBuilder {
    /// The disk image's name inside a box.
    public static let diskName = "box-disk001.vmdk"

    /// What a box holds: its members' names, the text of its small members (metadata.json, box.ovf,
    /// Vagrantfile) and its disk's files.
    public struct Contents: Sendable {
        public let members: [String]
        public let texts: [String: String]
        public let disk: [String: String]
    }

    /// Writes a `.box` at `path` whose guest filesystem holds `files` (relative path -> content).
    /// Returns the size of the disk image (what a full `VBoxManage import` copies).
    @discardableResult
    public static func makeBox(at path: String, files: [String: String], gzip: Bool = false) throws -> Int {
        let scratch = try TempDirectory(prefix: "tworker-boxbuilder")
        defer { scratch.remove() }
        let root = scratch.path + "/root", stage = scratch.path + "/stage"
        let fm = FileManager.default
        try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
        try fm.createDirectory(atPath: stage, withIntermediateDirectories: true)
        for (relative, content) in files {
            guard !relative.hasPrefix("/"), !relative.split(separator: "/").contains("..") else {
                throw TestSupportError("BoxBuilder: '\(relative)' is not a relative path inside the guest")
            }
            let file = root + "/" + relative
            try fm.createDirectory(atPath: (file as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try Data(content.utf8).write(to: URL(fileURLWithPath: file))
        }
        let disk = stage + "/" + diskName
        try tar(["-cf", disk, "-C", root, "."])
        let diskSize = try (fm.attributesOfItem(atPath: disk)[.size] as? NSNumber)?.intValue ?? 0
        try #"{"provider":"virtualbox"}"#.appending("\n").write(toFile: stage + "/metadata.json", atomically: true, encoding: .utf8)
        try ovf(diskSize: diskSize).write(toFile: stage + "/box.ovf", atomically: true, encoding: .utf8)
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        try tar([gzip ? "-czf" : "-cf", absolute, "-C", stage, "metadata.json", "box.ovf", diskName])
        return diskSize
    }

    /// The files of a disk image (a tar of the guest's filesystem): relative path -> content
    /// (invalid UTF-8 is replaced). Directories are left out.
    public static func readDisk(_ vmdk: String) throws -> [String: String] {
        let scratch = try TempDirectory(prefix: "tworker-readdisk")
        defer { scratch.remove() }
        try tar(["-xf", vmdk, "-C", scratch.path])
        return try readTree(scratch.path)
    }

    /// Extracts a `.box` (tar or tar.gz) and reads it, disk included.
    public static func readBox(_ box: String) throws -> Contents {
        let scratch = try TempDirectory(prefix: "tworker-readbox")
        defer { scratch.remove() }
        try tar(["-xf", box, "-C", scratch.path])
        let members = try FileManager.default.contentsOfDirectory(atPath: scratch.path).sorted()
        var texts: [String: String] = [:]
        for name in ["metadata.json", "box.ovf", "Vagrantfile"] where members.contains(name) {
            texts[name] = try String(contentsOfFile: scratch.path + "/" + name, encoding: .utf8)
        }
        let disk = members.contains(diskName) ? try readDisk(scratch.path + "/" + diskName) : [:]
        return Contents(members: members, texts: texts, disk: disk)
    }

    /// A minimal but plausible OVF 1.0 envelope, as `VBoxManage export` writes for a Vagrant box.
    public static func ovf(diskSize: Int, vmName: String = "tworker-box") -> String {
        """
        <?xml version="1.0"?>
        <Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
          <References>
            <File ovf:id="file1" ovf:href="\(diskName)" ovf:size="\(diskSize)"/>
          </References>
          <DiskSection>
            <Info>List of the virtual disks used in the package</Info>
            <Disk ovf:capacity="68719476736" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
          </DiskSection>
          <NetworkSection>
            <Info>Logical networks used in the package</Info>
            <Network ovf:name="NAT">
              <Description>Logical network used by this appliance.</Description>
            </Network>
          </NetworkSection>
          <VirtualSystem ovf:id="\(vmName)">
            <Info>A virtual machine</Info>
            <OperatingSystemSection ovf:id="94">
              <Info>The kind of installed guest operating system</Info>
              <Description>Ubuntu_64</Description>
              <vbox:OSType ovf:required="false">Ubuntu_64</vbox:OSType>
            </OperatingSystemSection>
            <VirtualHardwareSection>
              <Info>Virtual hardware requirements for a virtual machine</Info>
              <System>
                <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
                <vssd:InstanceID>0</vssd:InstanceID>
                <vssd:VirtualSystemIdentifier>\(vmName)</vssd:VirtualSystemIdentifier>
                <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
              </System>
              <Item>
                <rasd:Caption>1 virtual CPU</rasd:Caption>
                <rasd:ElementName>1 virtual CPU</rasd:ElementName>
                <rasd:InstanceID>1</rasd:InstanceID>
                <rasd:ResourceType>3</rasd:ResourceType>
                <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
              </Item>
              <Item>
                <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
                <rasd:Caption>1024 MB of memory</rasd:Caption>
                <rasd:ElementName>1024 MB of memory</rasd:ElementName>
                <rasd:InstanceID>2</rasd:InstanceID>
                <rasd:ResourceType>4</rasd:ResourceType>
                <rasd:VirtualQuantity>1024</rasd:VirtualQuantity>
              </Item>
              <Item>
                <rasd:AddressOnParent>0</rasd:AddressOnParent>
                <rasd:Caption>disk1</rasd:Caption>
                <rasd:ElementName>disk1</rasd:ElementName>
                <rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
                <rasd:InstanceID>3</rasd:InstanceID>
                <rasd:ResourceType>17</rasd:ResourceType>
              </Item>
            </VirtualHardwareSection>
          </VirtualSystem>
        </Envelope>

        """
    }

    // MARK: - Helpers

    static func readTree(_ root: String) throws -> [String: String] {
        var result: [String: String] = [:]
        let fm = FileManager.default
        guard let walker = fm.enumerator(atPath: root) else { return result }
        while let relative = walker.nextObject() as? String {
            let full = root + "/" + relative
            var isDirectory: ObjCBool = false
            guard fm.fileExists(atPath: full, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
            let data = try Data(contentsOf: URL(fileURLWithPath: full))
            let key = relative.hasPrefix("./") ? String(relative.dropFirst(2)) : relative
            result[key] = String(decoding: data, as: UTF8.self)
        }
        return result
    }

    static func tar(_ args: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: FileManager.default.isExecutableFile(atPath: "/usr/bin/tar") ? "/usr/bin/tar" : "/bin/tar")
        process.arguments = args
        process.standardInput = FileHandle.nullDevice
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let message = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestSupportError("tar \(args.joined(separator: " ")) failed with status \(process.terminationStatus): "
                                   + String(decoding: message, as: UTF8.self))
        }
    }
}
