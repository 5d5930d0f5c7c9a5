import Foundation

extension Master {
    /// HUP: loads the config and checks what a running master cannot take; the state machine
    /// then restarts the workers gracefully.
    func reload() {
        let fresh: WorkerConfig
        do {
            fresh = try setup.loadConfig()
        } catch {
            logger.error("HUP: the config is invalid; keeping the old one:")
            for line in "\(error)".split(separator: "\n") { logger.error("  \(line)") }
            return
        }
        let freshSettings = setup.settings(fresh)
        let freshAccount: WorkerAccount?
        do {
            freshAccount = try WorkerAccount.resolve(freshSettings)
        } catch {
            logger.error("HUP: \(error.description); keeping the old config")
            return
        }
        if let change = Self.restartOnlyChange(from: config, to: fresh) {
            // Workers on another Redis or state_dir than their master's would be beyond its
            // reaper, its status and its embedded server: refuse rather than split the pool.
            logger.error("HUP: \(change) changed: that needs a restart of the master (tworker stop, then tworker start); keeping the old config")
            return
        }
        if let freshAccount, freshAccount != account, geteuid() == 0 {
            do {
                try WorkerFileAccess.prepare(fresh, for: freshAccount)
            } catch {
                logger.error("HUP: \(error.description); keeping the old config")
                return
            }
        }
        config = fresh
        settings = freshSettings
        account = freshAccount
        apply(.configReloaded(count: fresh.vms.count, limits: Self.limits(fresh, freshSettings)))
    }

    /// The keys only a restart may change, named as in the config file; nil when none changed.
    static func restartOnlyChange(from old: WorkerConfig, to new: WorkerConfig) -> String? {
        var changed: [String] = []
        if old.redis.url != new.redis.url { changed.append("redis.url") }
        if old.redis.namespace != new.redis.namespace { changed.append("redis.namespace") }
        if old.redis.sentinels != new.redis.sentinels { changed.append("redis.sentinels") }
        if old.redis.masterName != new.redis.masterName { changed.append("redis.master_name") }
        if old.stateDir != new.stateDir { changed.append("state_dir") }
        return changed.isEmpty ? nil : changed.joined(separator: ", ")
    }
}
