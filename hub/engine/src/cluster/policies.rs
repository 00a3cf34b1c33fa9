//! In a cluster the contact policies are the cluster's. The hub's are the entry `policies` of
//! the admin bucket (see `cluster::plugins`); a tenant's own are the entry
//! `policies.tenant.<name>` (`null` once its actors are judged by the hub's again, so a
//! forgotten set stays forgotten). Each is written before a change takes effect on the instance
//! that took it, and adopted by every other instance as it is written.
//!
//! What an instance brings when it starts counts only where the cluster has nothing yet: its
//! config file's policies when the cluster has none, a tenant's own kept in its data folder
//! (set while it ran alone) when the cluster has no entry for that tenant. Otherwise it takes
//! the cluster's, so restarting an instance with an old file or folder cannot undo a change
//! made over the API.

use super::plugins::{SharedError, local, nats};
use crate::arbiter::{Policies, PolicyStore};
use async_nats::jetstream::kv;
use futures::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

const KEY: &str = "policies";
const WHAT: &str = "the contact policies";
/// A tenant's own policies are the entry of this prefix and its name.
const TENANT_PREFIX: &str = "policies.tenant.";

fn tenant_key(tenant: &str) -> String {
    format!("{TENANT_PREFIX}{tenant}")
}

/// What one entry of the bucket says.
#[derive(Debug, PartialEq)]
enum Held {
    /// The hub's policies.
    Hub(Policies),
    /// A tenant's own policies (none: it is judged by the hub's).
    Tenant(String, Option<Policies>),
}

impl Held {
    /// The entry that holds it.
    fn key(&self) -> String {
        match self {
            Held::Hub(_) => KEY.to_owned(),
            Held::Tenant(tenant, _) => tenant_key(tenant),
        }
    }

    /// Whether `store` holds it already.
    fn is_in(&self, store: &PolicyStore) -> bool {
        match self {
            Held::Hub(policies) => **store.load() == *policies,
            Held::Tenant(tenant, policies) => store.of_tenant(tenant).as_deref() == policies.as_ref(),
        }
    }
}

/// The cluster's contact policies, and the revision of each entry this instance last saw.
pub struct SharedPolicies {
    bucket: kv::Store,
    /// Per entry, the revision this instance last wrote or adopted: the one a change must
    /// replace.
    seen: Mutex<HashMap<String, u64>>,
}

impl SharedPolicies {
    pub fn new(bucket: kv::Store) -> SharedPolicies {
        SharedPolicies {
            bucket,
            seen: Mutex::default(),
        }
    }

    /// At start: take the cluster's policies, or bring this instance's where the cluster has
    /// none: the hub's, and each tenant's the cluster or this instance holds.
    pub async fn join(&self, store: &PolicyStore) -> Result<(), SharedError> {
        self.join_entry(store, Held::Hub(Policies::clone(&store.load())))
            .await?;
        let mut tenants = self.tenants_held().await?;
        tenants.extend(store.tenants_own().keys().cloned());
        for tenant in tenants {
            let own = store.of_tenant(&tenant).map(|own| Policies::clone(&own));
            match self.join_entry(store, Held::Tenant(tenant, own)).await {
                // Left in the bucket for a version that reads it; the tenant is judged as this
                // instance judged it so far.
                Err(e @ SharedError::Unreadable { .. }) => {
                    tracing::error!(error = %e, "contact policies from the cluster were not adopted")
                }
                joined => joined?,
            }
        }
        Ok(())
    }

    /// One entry at start: the cluster's, taken; where it has none, `brought` (this instance's)
    /// written up, or, should another instance starting at the same moment write first, its.
    async fn join_entry(&self, store: &PolicyStore, brought: Held) -> Result<(), SharedError> {
        let key = brought.key();
        let (revision, held) = match self.entry(&key).await? {
            Some(held) => held,
            None => match self.write_held(&brought).await {
                Ok(()) => return Ok(()),
                Err(SharedError::Conflict(_)) => match self.entry(&key).await? {
                    Some(held) => held,
                    None => return Ok(()),
                },
                Err(e) => return Err(e),
            },
        };
        self.saw(&key, revision);
        if !held.is_in(store) {
            tracing::info!(entry = key, "contact policies: taking the cluster's");
            adopt(store, held).await?;
        }
        Ok(())
    }

    /// The entry `key` and its revision, if the cluster has it.
    async fn entry(&self, key: &str) -> Result<Option<(u64, Held)>, SharedError> {
        match self.bucket.entry(key).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                Ok(decode(&entry)?.map(|held| (entry.revision, held)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(nats("read the contact policies")(e.to_string())),
        }
    }

    /// The tenants the cluster has an entry for.
    async fn tenants_held(&self) -> Result<BTreeSet<String>, SharedError> {
        let mut keys = self
            .bucket
            .keys()
            .await
            .map_err(|e| nats("list the contact policies")(e.to_string()))?;
        let mut held = BTreeSet::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| nats("list the contact policies")(e.to_string()))?;
            if let Some(tenant) = key.strip_prefix(TENANT_PREFIX) {
                held.insert(tenant.to_owned());
            }
        }
        Ok(held)
    }

    async fn write_held(&self, held: &Held) -> Result<(), SharedError> {
        match held {
            Held::Hub(policies) => self.write(policies).await,
            Held::Tenant(tenant, policies) => self.write_tenant(tenant, policies.as_ref()).await,
        }
    }

    /// Write `policies` as the hub's, replacing the revision this instance last saw.
    pub async fn write(&self, policies: &Policies) -> Result<(), SharedError> {
        let value = serde_json::to_vec(policies).map_err(|e| local("contact policies")(e.to_string()))?;
        self.put(KEY, value, WHAT.to_owned()).await
    }

    /// Write `policies` as `tenant`'s own (`None`: it is judged by the hub's), replacing the
    /// revision this instance last saw.
    pub async fn write_tenant(&self, tenant: &str, policies: Option<&Policies>) -> Result<(), SharedError> {
        let value = serde_json::to_vec(&policies).map_err(|e| local("contact policies")(e.to_string()))?;
        self.put(&tenant_key(tenant), value, format!("{tenant}'s contact policies"))
            .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, what: String) -> Result<(), SharedError> {
        // Revision 0 for an entry never seen: written only if no one wrote it first.
        let last = self.seen_of(key);
        match self.bucket.update(key, value.into(), last).await {
            Ok(revision) => {
                self.saw(key, revision);
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(SharedError::Conflict(what)),
            Err(e) => Err(nats("write the contact policies")(e.to_string())),
        }
    }

    fn seen_of(&self, key: &str) -> u64 {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(key).copied().unwrap_or(0)
    }

    fn saw(&self, key: &str, revision: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let last = seen.entry(key.to_owned()).or_default();
        *last = (*last).max(revision);
    }

    /// Adopt, until the hub stops, the policies other instances write: the hub's and the
    /// tenants', each watched on its own (nats-server before 2.10 watches one filter at a time).
    pub fn follow(self: &Arc<Self>, store: PolicyStore) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let tenants = format!("{TENANT_PREFIX}*");
            futures::join!(this.keep_following(&store, KEY), this.keep_following(&store, &tenants));
        })
    }

    async fn keep_following(&self, store: &PolicyStore, filter: &str) {
        loop {
            if let Err(e) = self.follow_once(store, filter).await {
                tracing::warn!(error = %e, "following the cluster's contact policies; again in a second");
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    async fn follow_once(&self, store: &PolicyStore, filter: &str) -> Result<(), SharedError> {
        // From the latest entries on, so one written while this watch was down is not missed.
        let mut entries = self
            .bucket
            .watch_with_history(filter)
            .await
            .map_err(|e| nats("watch the contact policies")(e.to_string()))?;
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| nats("watch the contact policies")(e.to_string()))?;
            if entry.revision <= self.seen_of(&entry.key) {
                continue;
            }
            match decode(&entry) {
                Ok(Some(held)) => {
                    if !held.is_in(store) {
                        adopt(store, held).await?;
                        tracing::info!(
                            entry = entry.key,
                            revision = entry.revision,
                            "adopted contact policies set on another instance"
                        );
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "contact policies from the cluster were not adopted"),
            }
            self.saw(&entry.key, entry.revision);
        }
        Ok(())
    }
}

/// What `entry` says; `None` for an entry that is not the policies' (or a deleted hub's one).
/// A tenant's entry deleted by hand judges it by the hub's policies, as `null` does.
fn decode(entry: &kv::Entry) -> Result<Option<Held>, SharedError> {
    let written = entry.operation == kv::Operation::Put;
    if entry.key == KEY {
        if !written {
            return Ok(None);
        }
        return serde_json::from_slice(&entry.value)
            .map(|policies| Some(Held::Hub(policies)))
            .map_err(|e| unreadable(WHAT.to_owned(), e));
    }
    let Some(tenant) = entry.key.strip_prefix(TENANT_PREFIX) else {
        return Ok(None);
    };
    if let Err(e) = crate::tenant::check_name(tenant) {
        return Err(SharedError::Unreadable {
            name: format!("entry {:?}", entry.key),
            detail: e,
        });
    }
    let policies = match written {
        true => {
            serde_json::from_slice(&entry.value).map_err(|e| unreadable(format!("{tenant}'s contact policies"), e))?
        }
        false => None,
    };
    Ok(Some(Held::Tenant(tenant.to_owned(), policies)))
}

fn unreadable(name: String, e: serde_json::Error) -> SharedError {
    SharedError::Unreadable {
        name,
        detail: e.to_string(),
    }
}

/// Make `held` this instance's (validated and durable first, as over the API).
async fn adopt(store: &PolicyStore, held: Held) -> Result<(), SharedError> {
    let store = store.clone();
    let adopted = tokio::task::spawn_blocking(move || match held {
        Held::Hub(policies) => store.adopt(policies),
        Held::Tenant(tenant, policies) => store.set_tenant(&tenant, policies).map(drop),
    });
    adopted
        .await
        .map_err(|e| local("contact policies")(e.to_string()))?
        .map_err(|e| local("contact policies")(e.to_string()))
}
