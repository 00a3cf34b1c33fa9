//! In a cluster the contact policies are the cluster's: they are the entry `policies` of the
//! admin bucket (see `cluster::plugins`), written before a `PUT /api/policies` takes effect on
//! the instance that took it, and adopted by every other instance as it is written.
//!
//! The config file seeds them only when the cluster has none yet: after that an instance that
//! starts takes the cluster's, whatever its file says, so restarting an instance with an old
//! file cannot undo a change made over the API.

use super::plugins::{SharedError, local, nats};
use crate::arbiter::{Policies, PolicyStore};
use async_nats::jetstream::kv;
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const KEY: &str = "policies";
const WHAT: &str = "the contact policies";

/// The cluster's contact policies, and the revision of them this instance last saw.
pub struct SharedPolicies {
    bucket: kv::Store,
    seen: AtomicU64,
}

impl SharedPolicies {
    pub fn new(bucket: kv::Store) -> SharedPolicies {
        SharedPolicies {
            bucket,
            seen: AtomicU64::new(0),
        }
    }

    /// At start: take the cluster's policies, or bring this instance's when it has none (if
    /// another instance starting at the same moment brings its own first, take those).
    pub async fn join(&self, store: &PolicyStore) -> Result<(), SharedError> {
        if self.held().await?.is_none() {
            match self.write(&store.load()).await {
                Ok(()) => return Ok(()),
                Err(SharedError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some((revision, policies)) = self.held().await? {
            self.seen.fetch_max(revision, Ordering::AcqRel);
            if **store.load() != policies {
                tracing::info!("contact policies: taking the cluster's");
                adopt(store, policies).await?;
            }
        }
        Ok(())
    }

    /// The cluster's policies and their revision, if it has any.
    async fn held(&self) -> Result<Option<(u64, Policies)>, SharedError> {
        match self.bucket.entry(KEY).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => Ok(Some((entry.revision, decode(&entry)?))),
            Ok(_) => Ok(None),
            Err(e) => Err(nats("read the contact policies")(e.to_string())),
        }
    }

    /// Write `policies` as the cluster's, replacing the revision this instance last saw.
    pub async fn write(&self, policies: &Policies) -> Result<(), SharedError> {
        let value = serde_json::to_vec(policies).map_err(|e| local("contact policies")(e.to_string()))?;
        match self
            .bucket
            .update(KEY, value.into(), self.seen.load(Ordering::Acquire))
            .await
        {
            Ok(revision) => {
                self.seen.fetch_max(revision, Ordering::AcqRel);
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(SharedError::Conflict(WHAT.into())),
            Err(e) => Err(nats("write the contact policies")(e.to_string())),
        }
    }

    /// Adopt, until the hub stops, the policies other instances write.
    pub fn follow(self: &Arc<Self>, store: PolicyStore) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.follow_once(&store).await {
                    tracing::warn!(error = %e, "following the cluster's contact policies; again in a second");
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        })
    }

    async fn follow_once(&self, store: &PolicyStore) -> Result<(), SharedError> {
        // From the latest entry on, so one written while this watch was down is not missed.
        let mut entries = self
            .bucket
            .watch_with_history(KEY)
            .await
            .map_err(|e| nats("watch the contact policies")(e.to_string()))?;
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| nats("watch the contact policies")(e.to_string()))?;
            if entry.operation != kv::Operation::Put || entry.revision <= self.seen.load(Ordering::Acquire) {
                continue;
            }
            match decode(&entry) {
                Ok(policies) => {
                    if **store.load() != policies {
                        adopt(store, policies).await?;
                        tracing::info!(
                            revision = entry.revision,
                            "adopted contact policies set on another instance"
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "contact policies from the cluster were not adopted"),
            }
            self.seen.fetch_max(entry.revision, Ordering::AcqRel);
        }
        Ok(())
    }
}

fn decode(entry: &kv::Entry) -> Result<Policies, SharedError> {
    serde_json::from_slice(&entry.value).map_err(|e| SharedError::Unreadable {
        name: WHAT.into(),
        detail: e.to_string(),
    })
}

/// Make `policies` this instance's (validated and durable first, as over the API).
async fn adopt(store: &PolicyStore, policies: Policies) -> Result<(), SharedError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.adopt(policies))
        .await
        .map_err(|e| local("contact policies")(e.to_string()))?
        .map_err(|e| local("contact policies")(e.to_string()))
}
