//! Where state lives: one sled database in the data folder, fronted per shard by a write-behind
//! cache ([`StateCache`]) and a timer wheel ([`TimerWheel`]).
//!
//! sled takes ~110–170 k single writes/s on this hardware (PLATFORM.md), fewer than the events
//! we aim for, so plugins never write to sled directly: writes mark cache entries dirty and each
//! shard commits its dirty entries in one batch per commit interval, coalescing repeated writes
//! to the same key. sled's own flusher makes each commit durable within the same interval.
//!
//! Trees:
//! - `state/<plugin>`: key = actor ‖ user key (see [`keys`]);
//! - `timers`: key = plugin ‖ actor ‖ timer id, value = due ‖ payload;
//! - `profiles`: key = actor, value = MessagePack map.

mod cache;
mod committer;
pub mod keys;
mod profiles;
mod timers;

pub use cache::{PluginSlot, StateCache};
pub use committer::{Applied, Commit, CommitQueue, Committer};
pub use profiles::{ProfileError, Profiles};
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

/// The hub's database and its fixed trees.
#[derive(Clone)]
pub struct Db {
    db: sled::Db,
    pub timers: sled::Tree,
    pub profiles: sled::Tree,
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
        // sled releases its file lock from its flusher thread, a moment after the last handle
        // is dropped: a hub restarted at once (in the same process, or by a supervisor) waits
        // for that instead of failing.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e)) if is_lock_held(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => {
                    break opened.map_err(|source| StateError::Open {
                        path: path.display().to_string(),
                        source,
                    })?;
                }
            }
        };
        Ok(Db {
            timers: db.open_tree("timers")?,
            profiles: db.open_tree("profiles")?,
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

    /// Make everything committed so far durable.
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush()?;
        Ok(())
    }

    /// Every pending timer, handed to the wheel of the shard that owns its actor.
    pub fn load_timers(
        &self,
        wheels: &mut [TimerWheel],
        shard_of: impl Fn(&str) -> usize,
    ) -> Result<usize, StateError> {
        let mut count = 0;
        for entry in self.timers.iter() {
            let (key, value) = entry?;
            let Some(actor) = keys::timer_actor(&key) else {
                tracing::warn!("skipping a timer with an unreadable key");
                continue;
            };
            let Some((due, payload)) = keys::split_timer_value(&value) else {
                tracing::warn!(actor, "skipping a timer with an unreadable value");
                continue;
            };
            let shard = shard_of(actor);
            if let Some(wheel) = wheels.get_mut(shard) {
                wheel.restore(key.to_vec(), due, payload.to_vec());
                count += 1;
            }
        }
        Ok(count)
    }
}
