import Foundation
import Testing
@testable import TWorkerCore

@Suite struct ServiceFilesTests {
    static let sample = ServiceFiles(binary: "/usr/local/bin/tworker", env: "production",
                                     configDir: "/srv/tworker/config", workingDirectory: "/srv/tworker",
                                     stopTimeout: 2460)

    static func unit(serviceAccount: String) -> String {
        """
        # tworker.service: written by `tworker service install --systemd`.
        [Unit]
        Description=tworker CI build-worker host (production)
        After=network-online.target redis-server.service
        Wants=network-online.target
        # Keep restarting every RestartSec however often it fails.
        StartLimitIntervalSec=0

        [Service]
        Type=simple
        WorkingDirectory=/srv/tworker
        Environment=TWORKER_ENV=production
        ExecStart=/usr/local/bin/tworker start --env production --config-dir /srv/tworker/config
        # HUP reloads the configuration; the master keeps its pid.
        ExecReload=/bin/kill -HUP $MAINPID
        # `systemctl stop` (and so every deploy) is graceful: QUIT tells the master to let each running
        # build finish and take no new job. No build outlives timeouts.hard_limit, so after it plus
        # 60 s for reporting (TimeoutStopSec) whatever still runs gets SIGKILL, and the jobs it
        # held are recovered by the next start. KillMode=mixed: QUIT goes to the master only (the builds
        # and an embedded redis-server must not get it), the final SIGKILL to every process left.
        # To hurry a stop in progress (builds stopped now, their jobs requeued at the head of the queue):
        #   systemctl kill --kill-who=main --signal=TERM tworker
        KillMode=mixed
        KillSignal=SIGQUIT
        TimeoutStopSec=2460
        SendSIGKILL=yes
        Restart=always
        RestartSec=2
        # 64: usage error, 78: invalid configuration; restarting cannot fix either.
        RestartPreventExitStatus=64 78
        \(serviceAccount)LimitNOFILE=65536

        [Install]
        WantedBy=multi-user.target

        """
    }

    @Test func systemdUnitWithoutUser() throws {
        try Self.sample.validate(for: .systemd)
        #expect(Self.sample.systemdUnit == Self.unit(serviceAccount: ""))
    }

    @Test func systemdUnitWithUserAndGroup() throws {
        var files = Self.sample
        files.user = "travis"
        #expect(files.systemdUnit == Self.unit(serviceAccount: "User=travis\n"))
        files.group = "vboxusers"
        try files.validate(for: .systemd)
        #expect(files.systemdUnit == Self.unit(serviceAccount: "User=travis\nGroup=vboxusers\n"))
    }

    @Test func stopTimeoutIsTheHardLimitPlusAMinute() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.test.yml", "provider: local\ntimeouts:\n  hard_limit: 100\n")
        let config = try dir.loader(env: "test").load().config
        #expect(config.timeouts.hardLimit == 100)
        let files = ServiceFiles(config: config, binary: "/b/tworker", configDir: "/c", workingDirectory: "/w")
        #expect(files.stopTimeout == 160)
        #expect(files.env == "test")
        #expect(files.systemdUnit.contains("\nTimeoutStopSec=160\n"))
    }

    @Test func runitScriptsWithoutUser() throws {
        try Self.sample.validate(for: .runit)
        #expect(Self.sample.runitRun == """
            #!/bin/sh
            # tworker (runit): written by `tworker service install --runit`.
            # sv down / sv restart send TERM: running builds are stopped, their jobs requeued at the head
            # of the queue. A graceful stop, letting running builds finish: sv once tworker && sv quit tworker
            exec 2>&1
            cd /srv/tworker || exit 1
            exec /usr/local/bin/tworker start --env production --config-dir /srv/tworker/config

            """)
        #expect(Self.sample.runitLogRun == """
            #!/bin/sh
            mkdir -p /var/log/tworker
            exec svlogd -tt /var/log/tworker

            """)
        #expect(Self.sample.runitPrinted == "# run\n" + Self.sample.runitRun + "\n# log/run\n" + Self.sample.runitLogRun)
    }

    @Test func runitScriptsWithUser() {
        var files = Self.sample
        files.user = "travis"
        #expect(files.runitRun.hasSuffix("""
            exec 2>&1
            cd /srv/tworker || exit 1
            exec chpst -u travis /usr/local/bin/tworker start --env production --config-dir /srv/tworker/config

            """))
        #expect(files.runitLogRun == """
            #!/bin/sh
            mkdir -p /var/log/tworker
            chown travis /var/log/tworker
            exec chpst -u travis svlogd -tt /var/log/tworker

            """)
        files.group = "ci"
        #expect(files.runitRun.contains("\nexec chpst -u travis:ci /usr/local/bin/tworker start "))
        #expect(files.runitLogRun.contains("\nexec chpst -u travis:ci svlogd -tt /var/log/tworker\n"))
    }

    @Test func pathsWithQuotesAndSpacesAreQuoted() throws {
        var files = ServiceFiles(binary: "/opt/it's here/tworker", env: "test", configDir: "/srv/o'neil/100% \"cfg\" $HOME",
                                 workingDirectory: "/srv/o'neil dir", stopTimeout: 120)
        try files.validate(for: .runit)
        #expect(files.runitRun.contains("\ncd '/srv/o'\\''neil dir' || exit 1\n"))
        #expect(files.runitRun.contains(
            "\nexec '/opt/it'\\''s here/tworker' start --env test --config-dir '/srv/o'\\''neil/100% \"cfg\" $HOME'\n"))

        // systemd will not run an executable whose path holds a quote; arguments may hold anything.
        #expect(throws: ServiceFilesError.self) { try files.validate(for: .systemd) }
        files.binary = "/opt/my $dir 100%/tworker"
        try files.validate(for: .systemd)
        #expect(files.systemdUnit.contains("\nWorkingDirectory=/srv/o'neil dir\n"))
        #expect(files.systemdUnit.contains(
            "\nExecStart=\"/opt/my $dir 100%%/tworker\" start --env test --config-dir \"/srv/o'neil/100%% \\\"cfg\\\" $$HOME\"\n"))
        files.workingDirectory = "/srv/100%"
        #expect(files.systemdUnit.contains("\nWorkingDirectory=/srv/100%%\n"))
    }

    /// The quoting, checked by the shell itself: the words come back exactly.
    @Test func shellQuotingRoundTripsThroughSh() throws {
        let words = ["plain", "it's", "a b", "$HOME", "back\\slash", "", "'", "\"q\""]
        let script = "printf '%s\\n' " + words.map(ServiceFiles.shellQuote).joined(separator: " ")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(output == words.map { $0 + "\n" }.joined())
    }

    @Test func pathsASystemdUnitCannotHoldAreRefused() {
        var files = Self.sample
        files.configDir = "/srv/line\nbreak"
        #expect(throws: ServiceFilesError.self) { try files.validate(for: .runit) }
        #expect(throws: ServiceFilesError.self) { try files.validate(for: .systemd) }
        files = Self.sample
        files.workingDirectory = "/srv/ends-in-blank "
        #expect(throws: ServiceFilesError.self) { try files.validate(for: .systemd) }
        #expect(throws: Never.self) { try files.validate(for: .runit) }
        files.workingDirectory = "relative/dir"
        #expect(throws: ServiceFilesError.self) { try files.validate(for: .runit) }
    }

    @Test(arguments: ["travis", "_svc", "ci-worker_2", "machine$", String(repeating: "a", count: 32)])
    func validUserNames(_ name: String) throws {
        #expect(ServiceFiles.accountNameProblem(name) == nil)
        var files = Self.sample
        files.user = name
        try files.validate(for: .systemd)
    }

    @Test(arguments: ["", "Travis", "1user", "-user", "us er", "a$b", "user$$", "root;rm", "us/er", "ü",
                      String(repeating: "a", count: 33)])
    func invalidUserNamesAreRejected(_ name: String) {
        #expect(ServiceFiles.accountNameProblem(name)?.contains("invalid user name") == true)
        var files = Self.sample
        files.user = name
        #expect(throws: ServiceFilesError.self) { try files.validate(for: .systemd) }
        files.user = "travis"
        files.group = name
        #expect(throws: ServiceFilesError.self) { try files.validate(for: .runit) }
    }

    @Test func configDirectoryFollowsTheLoadersOrder() {
        let env = ["TWORKER_CONFIG_DIR": "/etc/tworker"]
        #expect(ServiceFiles.configDirectory(flag: "conf/../cfg", environment: env, currentDirectory: "/srv/w") == "/srv/w/cfg")
        #expect(ServiceFiles.configDirectory(flag: nil, environment: env, currentDirectory: "/srv/w") == "/etc/tworker")
        #expect(ServiceFiles.configDirectory(flag: nil, environment: ["TWORKER_CONFIG_DIR": ""], currentDirectory: "/srv/w") == "/srv/w/config")
    }
}
