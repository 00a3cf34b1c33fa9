//! Where the live policies are kept: an immutable value behind `arc-swap` (one atomic load per
//! decision on the shards) and its record in sled, so a change made through the API outlives a
//! restart.
//!
//! At start the config file's policies win only when they changed since they were last seeded:
//! an admin who edits the file gets the file; an admin who used the API keeps the API's version
//! across restarts of an unchanged file (the same rule as plugins seeded from a folder).

use super::Policies;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

const RECORD_KEY: &[u8] = b"policies";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid policies: {0}")]
    Invalid(String),
    #[error("policy storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("the stored policies are unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// The stored record: the live policies, and the config file's policies they were last seeded
/// from (to tell an edited file from an unchanged one).
#[derive(Serialize, Deserialize)]
struct Record {
    live: Policies,
    seeded_from: Policies,
    /// `config` or `api`.
    source: String,
}

/// The live policies; cheap to clone.
#[derive(Clone)]
pub struct PolicyStore {
    live: Arc<ArcSwap<Policies>>,
    tree: sled::Tree,
}

impl PolicyStore {
    /// Open the stored policies, seeding them from the config file's as described above.
    pub fn open(db: &sled::Db, from_config: &Policies) -> Result<PolicyStore, PolicyError> {
        from_config.validate().map_err(PolicyError::Invalid)?;
        let tree = db.open_tree("policies")?;
        let stored: Option<Record> = match tree.get(RECORD_KEY)? {
            Some(bytes) => Some(serde_json::from_slice(&bytes)?),
            None => None,
        };
        let live = match stored {
            Some(record) if record.seeded_from == *from_config => {
                if record.source == "api" {
                    tracing::info!("contact policies: keeping the ones last set through the API");
                }
                record.live
            }
            _ => {
                let record = Record {
                    live: from_config.clone(),
                    seeded_from: from_config.clone(),
                    source: "config".to_owned(),
                };
                tree.insert(RECORD_KEY, serde_json::to_vec(&record)?)?;
                tree.flush()?;
                record.live
            }
        };
        Ok(PolicyStore {
            live: Arc::new(ArcSwap::from_pointee(live)),
            tree,
        })
    }

    /// The policies in force now.
    pub fn load(&self) -> arc_swap::Guard<Arc<Policies>> {
        self.live.load()
    }

    /// Replace the policies after validating them; durable before they take effect.
    pub fn replace(&self, policies: Policies) -> Result<(), PolicyError> {
        policies.validate().map_err(PolicyError::Invalid)?;
        let seeded_from = match self.tree.get(RECORD_KEY)? {
            Some(bytes) => serde_json::from_slice::<Record>(&bytes)?.seeded_from,
            None => Policies::default(),
        };
        let record = Record {
            live: policies,
            seeded_from,
            source: "api".to_owned(),
        };
        self.tree.insert(RECORD_KEY, serde_json::to_vec(&record)?)?;
        self.tree.flush()?;
        self.live.store(Arc::new(record.live));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Reopen as a restarted hub would (waiting for the lock the last handle releases late).
    fn open(dir: &std::path::Path) -> sled::Db {
        crate::state::open_when_unlocked(&sled::Config::new().path(dir)).expect("db")
    }

    #[test]
    fn api_changes_outlive_a_restart_until_the_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = Policies::example();
        let mut api = file.clone();
        api.conflict_window = Duration::from_secs(5);
        {
            let db = open(dir.path());
            let store = PolicyStore::open(&db, &file).expect("open");
            store.replace(api.clone()).expect("replace");
            assert_eq!(**store.load(), api);
            let mut bad = api.clone();
            bad.dedup_window = Duration::ZERO;
            bad.max_actions = Some(super::super::Limit {
                count: 1000,
                window: Duration::from_secs(1),
            });
            let err = store.replace(bad).expect_err("refused");
            assert!(err.to_string().contains("count must be between 1 and 100"), "{err}");
            assert_eq!(**store.load(), api, "a refused change leaves the live policies");
        }
        {
            let db = open(dir.path());
            let store = PolicyStore::open(&db, &file).expect("open");
            assert_eq!(**store.load(), api, "unchanged file: the API's version stays");
        }
        let db = open(dir.path());
        let edited = Policies::default();
        let store = PolicyStore::open(&db, &edited).expect("open");
        assert_eq!(**store.load(), edited, "an edited file wins");
    }
}
