import Foundation

/// Which machine provider runs the build jobs.
public enum ProviderKind: String, Sendable, CaseIterable {
    case local
    case virtualbox
    case qemu
}

/// `qemu.accel`: which accelerator qemu runs the worker VMs with.
public enum QEMUAccel: String, Sendable, CaseIterable {
    /// `kvm` where the host has working hardware virtualization, else `tcg`.
    case auto
    case kvm
    /// Software emulation: slow, but works everywhere.
    case tcg
}

/// The effective worker configuration, after files, environment and defaults are combined.
public struct WorkerConfig: Sendable, Equatable {
    /// Environment name (selects `worker.<env>.yml`).
    public var env: String
    /// The Resque queues a worker pulls jobs from, highest priority first: `a,b` (see `queueList`).
    public var queue: String
    /// One queue list (`a,b`) per worker, as Resque::Forker's `workload`; empty: every worker serves `queue`.
    public var workload: [String] = []
    /// Machine provider.
    public var provider: ProviderKind
    /// This machine's name, used in Redis keys.
    public var host: String
    public var redis: Redis
    public var vms: VMs
    public var timeouts: Timeouts
    public var limits: Limits
    public var heartbeat: Heartbeat
    public var reporting: Reporting
    /// Directory for worker state; always absolute.
    public var stateDir: String
    public var local: Local
    public var ssh: SSH
    public var virtualbox: VirtualBox
    public var vagrant: Vagrant
    public var qemu: QEMU
    public var http: HTTP
    public var secrets: Secrets
    public var hooks: Hooks
    /// The user (and group) the master runs its workers as when started as root.
    public var user: String?
    public var group: String?
    /// Lets a root master run workers as root (never the default: builds must not run as root).
    public var allowRoot: Bool
    /// The selected VM (from `VM` or `--vm`); not a file key.
    public var vm: String?
    /// Verbose logging (from `VERBOSE` or a flag); not a file key.
    public var verbose: Bool

    /// Redis connection settings.
    public struct Redis: Sendable, Equatable {
        /// `embedded`, `redis://...` or `unix://...`. With `sentinels`, only a `redis://` URL's
        /// credentials and database count (Sentinel says where the master is).
        public var url: String
        public var namespace: String
        /// `host:port` of Redis Sentinels; when set, the master is found through them.
        public var sentinels: [String] = []
        /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
        public var masterName: String? = nil
        /// Replicas that must confirm the fetch's move and a job's final state (`WAIT`); 0: no WAIT.
        public var waitReplicas: Int = 0
        /// Milliseconds one `WAIT` waits for them.
        public var waitTimeout: Int = 1000

        /// `redis.url: embedded` and no sentinels: tworker's own redis-server under `state_dir`.
        public var usesEmbedded: Bool { url == "embedded" && sentinels.isEmpty }
    }

    /// Settings of the worker's VM pool.
    public struct VMs: Sendable, Equatable {
        public var count: Int
        public var namePrefix: String
        /// MiB.
        public var memory: Int
        public var cpus: Int
        public var maxConsecutiveFailures: Int
        /// Worker VMs taken out of service at once by rolling rebuilds and reprovisions.
        public var maxUnavailable: Int
        /// A `.box` file (absolute) or, when no such file exists, a vagrant box name.
        public var baseBox: String
        /// Provision scripts under `<vagrant.directory>/provision/`, run in this order.
        public var provision: [String]
        /// `provider: qemu`: the qcow2 disk every worker's overlay is based on (absolute).
        public var baseImage: String? = nil
    }

    /// Timeouts, all in seconds.
    public struct Timeouts: Sendable, Equatable {
        public var hardLimit: Int
        public var logSilence: Int
        public var beforeInstall: Int
        public var install: Int
        public var beforeScript: Int
        public var script: Int
        public var afterScript: Int
        public var vmBoot: Int
        public var vboxmanage: Int
        /// A qemu-img run or one QMP command (`loadvm`, `savevm`, `stop`...).
        public var qemu: Int = 60

        /// The timeout of a build stage by its `.travis.yml` name, or nil for a stage without one.
        public func stageTimeout(_ stage: String) -> Int? {
            switch stage {
            case "before_install": beforeInstall
            case "install": install
            case "before_script": beforeScript
            case "script": script
            case "after_script", "after_success", "after_failure": afterScript
            default: nil
            }
        }
    }

    /// Size limits of a job.
    public struct Limits: Sendable, Equatable {
        /// Bytes of build log kept before the job is stopped.
        public var logLength: Int
        public var maxAttempts: Int
        /// MiB of resident memory a worker may hold; above it for two checks, the master restarts it.
        public var workerMemory: Int
    }

    /// The master's HTTP listener: metrics, health, the API and the dashboard.
    public struct HTTP: Sendable, Equatable {
        /// `host:port`; empty turns the listener off.
        public var listen: String
        /// Required for a listener that is not on loopback; every request but `/health` then needs it.
        public var token: String?
    }

    /// What the log must never show.
    public struct Secrets: Sendable, Equatable {
        /// Name patterns (`*_TOKEN`) that make a job's variable secret.
        public var redact: [String]
        /// `secrets.env`'s variables, added to every job; read only by the commands that run
        /// jobs (`ConfigLoader.readsSecrets`), never shown by `tworker config`.
        public var variables: [JobPayload.EnvVar] = []
    }

    /// Executables the worker runs on the host around each job (`JobHooks`).
    public struct Hooks: Sendable, Equatable {
        public var beforeJob: String?
        public var afterJob: String?
        /// Seconds each may take.
        public var timeout: Int
    }

    /// Worker heartbeat settings.
    public struct Heartbeat: Sendable, Equatable {
        /// Seconds between heartbeats.
        public var interval: Int
    }

    /// Job-report settings.
    public struct Reporting: Sendable, Equatable {
        /// Seconds a report is kept.
        public var retention: Int
    }

    /// Settings of the `local` provider.
    public struct Local: Sendable, Equatable {
        /// Absolute directory where local builds run.
        public var workspace: String
    }

    /// How the worker reaches a VM over SSH.
    public struct SSH: Sendable, Equatable {
        public var user: String
        /// Private key path, if any.
        public var key: String?
        public var host: String
        /// VM number n is reached on port `portBase + n`.
        public var portBase: Int
    }

    /// Settings of the `virtualbox` provider.
    public struct VirtualBox: Sendable, Equatable {
        /// The VBoxManage executable.
        public var vboxmanage: String
        /// `headless`, `gui`, `sdl` or `separate`.
        public var startType: String
    }

    /// Settings of the `qemu` provider.
    public struct QEMU: Sendable, Equatable {
        /// The qemu-system executable (a bare name is looked up on PATH).
        public var binary: String
        /// The qemu-img executable.
        public var img: String
        public var accel: QEMUAccel
        /// Appended to every qemu command line.
        public var extraArgs: [String]
        /// Direct kernel boot: `-kernel`, `-initrd`, `-append` (absolute paths).
        public var kernel: String?
        public var initrd: String?
        public var append: String?
    }

    /// Settings of `tworker vagrant ...` (building the VMs).
    public struct Vagrant: Sendable, Equatable {
        /// The vagrant executable.
        public var vagrant: String
        /// Holds the base VM's `Vagrantfile` and `provision/*.sh`; always absolute.
        public var directory: String
    }

    /// The built-in defaults for `env`, relative paths resolved against the current directory.
    public static func defaults(env: String) -> WorkerConfig {
        defaults(env: env, currentDirectory: FileManager.default.currentDirectoryPath, hostname: currentHostname())
    }

    static func defaults(env: String, currentDirectory: String, hostname: String) -> WorkerConfig {
        let context = ConfigKey.Context(currentDirectory: currentDirectory, hostname: hostname)
        return ConfigLoader.resolve(env: env, tree: nil, overrides: ["env": (.string(env), .default)],
                                    context: context).0
    }

    /// Placeholder values, every one overwritten by the key table.
    static func blank(env: String) -> WorkerConfig {
        WorkerConfig(
            env: env, queue: "", provider: .local, host: "",
            redis: Redis(url: "", namespace: ""),
            vms: VMs(count: 0, namePrefix: "", memory: 0, cpus: 0, maxConsecutiveFailures: 0, maxUnavailable: 0, baseBox: "", provision: []),
            timeouts: Timeouts(hardLimit: 0, logSilence: 0, beforeInstall: 0, install: 0, beforeScript: 0,
                               script: 0, afterScript: 0, vmBoot: 0, vboxmanage: 0),
            limits: Limits(logLength: 0, maxAttempts: 0, workerMemory: 0),
            heartbeat: Heartbeat(interval: 0),
            reporting: Reporting(retention: 0),
            stateDir: "",
            local: Local(workspace: ""),
            ssh: SSH(user: "", key: nil, host: "", portBase: 0),
            virtualbox: VirtualBox(vboxmanage: "", startType: ""),
            vagrant: Vagrant(vagrant: "", directory: ""),
            qemu: QEMU(binary: "", img: "", accel: .auto, extraArgs: [], kernel: nil, initrd: nil, append: nil),
            http: HTTP(listen: "", token: nil),
            secrets: Secrets(redact: []),
            hooks: Hooks(beforeJob: nil, afterJob: nil, timeout: 0),
            user: nil, group: nil, allowRoot: false,
            vm: nil,
            verbose: false
        )
    }
}

/// The machine's hostname as gethostname(2) reports it.
func currentHostname() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
    let name = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    return name.isEmpty ? "localhost" : name
}
