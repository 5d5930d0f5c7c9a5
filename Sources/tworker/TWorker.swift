import ArgumentParser
import TWorkerCore

@main
struct TWorker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tworker",
        abstract: "A CI build-worker host: takes build jobs off a Redis queue and runs each on its own machine.",
        discussion: """
        Exit codes: 0 success; 1 failure (job not found, Redis unreachable, build machine error); \
        64 usage error; 78 configuration error.
        """,
        version: TWorkerVersion.current,
        subcommands: [Work.self, Start.self, Stop.self, Restart.self, Pause.self, Resume.self, Status.self, Enqueue.self, JobCommand.self, Logs.self, ConfigCommand.self, Cancel.self, VMs.self, Vagrant.self, Service.self, Hosts.self, Drain.self, Undrain.self, Host.self, Setup.self, DoctorCommand.self]
    )
}
