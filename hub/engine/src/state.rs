//! Where state lives: one sled database in the data folder, fronted per shard by a write-behind
//! cache ([`StateCache`]) and a timer wheel ([`TimerWheel`]).
//!
//! sled takes ~110–170 k single writes/s on a 2-core machine, fewer than the events
//! we aim for, so plugins never write to sled directly: writes mark cache entries dirty and each
//! shard commits its dirty entries in one batch per commit interval, coalescing repeated writes
//! to the same key. sled's own flusher makes each commit durable within the same interval.
//!
//! Trees:
//! - `state/<plugin>`: key = actor ‖ user key (see [`keys`]);
//! - `timer-log`: the pending timers as a log of changes per shard (see [`timer_log`]);
//!   `timers` (key = plugin ‖ actor ‖ timer id, value = due ‖ payload) is where versions before
//!   the log kept them, read once at start and emptied;
//! - `profiles`: key = actor, value = MessagePack map;
//! - `unreadable`: records no reader could decode, kept aside (see [`unreadable`]).

mod cache;
mod committer;
pub mod keys;
mod profiles;
mod timer_log;
mod timers;
pub mod unreadable;

pub use cache::{PluginSlot, StateCache};
pub use committer::{Applied, Commit, CommitQueue, Committer, Durability, ShardCommits, WriteChanges};
pub use profiles::{ProfileCache, ProfileError, Profiles};
pub use timers::{DueTimer, TimerWheel};

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the state database in {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("state database: {0}")]
    Sled(#[from] sled::Error),
}

/// sled's error when another handle (or process) still holds the database's file lock; sled
/// says so only in the message.
fn is_lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// Open a sled database, waiting up to 5 s for its file lock. sled releases the lock from its
/// flusher thread, a moment after the last handle is dropped: a hub restarted at once (in the
/// same process, or by a supervisor) waits for that instead of failing.
pub(crate) fn open_when_unlocked(config: &sled::Config) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + crate::limits::SLED_LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e)) if is_lock_held(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// Whether a tree's keys begin with an actor and hold what the actor stores as it is: plugin
/// state (`state/<plugin>`) and the arbiter's ledgers (`actions`).
pub fn holds_actor_state(tree: &str) -> bool {
    tree.starts_with("state/") || tree == "actions"
}

/// The hub's database and its fixed trees.
#[derive(Clone)]
pub struct Db {
    db: sled::Db,
    timer_log: sled::Tree,
    /// Timers as earlier versions kept them; emptied at start.
    legacy_timers: sled::Tree,
    pub profiles: Profiles,
    /// The recent actions of each actor (written behind like plugin state).
    pub actions: sled::Tree,
}

impl Db {
    /// Open (or create) the database under `dir/state`.
    pub fn open(dir: &Path, flush_every_ms: u64) -> Result<Db, StateError> {
        let path = dir.join("state");
        let config = sled::Config::new()
            .path(&path)
            .flush_every_ms(Some(flush_every_ms.max(1)))
            .cache_capacity(256 << 20);
        let db = open_when_unlocked(&config).map_err(|source| StateError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Db {
            timer_log: db.open_tree("timer-log")?,
            legacy_timers: db.open_tree("timers")?,
            profiles: Profiles::new(db.open_tree("profiles")?),
            actions: db.open_tree("actions")?,
            db,
        })
    }

    /// The underlying database, for other parts of the hub that keep their own trees.
    pub fn sled(&self) -> &sled::Db {
        &self.db
    }

    /// Names of every plugin that has a state tree (loaded or not).
    pub fn state_plugins(&self) -> Vec<String> {
        self.db
            .tree_names()
            .iter()
            .filter_map(|n| std::str::from_utf8(n).ok()?.strip_prefix("state/").map(str::to_owned))
            .collect()
    }

    /// The state tree of one plugin (by name, so state outlives plugin versions).
    pub fn state_tree(&self, plugin: &str) -> Result<sled::Tree, StateError> {
        Ok(self.db.open_tree(format!("state/{plugin}"))?)
    }

    /// Every actor whose key starts with `prefix` (a tenant's) that has plugin state, an action
    /// ledger or a profile in sled. A scan of every state tree: for tenant-wide operations.
    pub fn actors_with_prefix(&self, prefix: &str) -> Result<std::collections::BTreeSet<String>, StateError> {
        let mut found = std::collections::BTreeSet::new();
        let mut trees = vec![self.actions.clone()];
        for plugin in self.state_plugins() {
            trees.push(self.state_tree(&plugin)?);
        }
        for tree in trees {
            for key in tree.iter().keys() {
                if let Some(actor) = keys::state_actor(&key?).filter(|a| a.starts_with(prefix)) {
                    found.insert(actor.to_owned());
                }
            }
        }
        found.extend(self.profiles.actors_with_prefix(prefix)?);
        Ok(found)
    }

    /// Make everything committed so far durable.
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush()?;
        Ok(())
    }

    /// One timer wheel per shard, holding every pending timer of the actors it owns; the log
    /// is rewritten for this shard count (see [`timer_log::restore`]). Also returns
    /// how many timers were restored.
    pub fn load_timers(
        &self,
        shards: usize,
        shard_of: impl Fn(&str) -> usize,
    ) -> Result<(Vec<TimerWheel>, usize), StateError> {
        let (logs, owned) = timer_log::restore(&self.db, &self.timer_log, &self.legacy_timers, shards, shard_of)?;
        let mut count = 0;
        let wheels = logs
            .into_iter()
            .zip(owned)
            .map(|(log, timers)| {
                let mut wheel = TimerWheel::new(log);
                count += timers.len();
                for (key, due, payload) in timers {
                    wheel.restore(key, due, payload);
                }
                wheel
            })
            .collect();
        Ok((wheels, count))
    }
}
