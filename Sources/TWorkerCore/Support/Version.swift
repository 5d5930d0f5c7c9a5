/// tworker's version: `tworker --version`, `tworker_build_info{version}`.
public enum TWorkerVersion {
    public static let current = "0.5.0"
}
