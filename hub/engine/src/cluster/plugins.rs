//! Every instance of a cluster runs the same plugins: the plugin registry is shared through
//! NATS, so an admin change made on any instance (upload, config, rollback, enable, disable,
//! shadow, promote, delete) reaches all of them, and an instance that joins with an empty data
//! folder runs what the others run.
//!
//! - Each plugin's whole record (its versions, the active one, enabled, shadow) is the entry
//!   `plugin.<name>` of the KV bucket `<bucket>_ADMIN`; a deleted plugin is a delete marker.
//! - The wasm of every version is in the object store `<bucket>_WASM` under its sha256, stored
//!   before the record that names it.
//! - An admin change is written to the bucket with the entry's revision this instance last saw
//!   *before* it is stored and run here: of two admins changing one plugin on two instances at
//!   once, the second is refused (409) rather than silently overwriting the first.
//! - Every instance watches the bucket and adopts what another one wrote: missing wasm is fetched,
//!   the record stored, and the change made live in one switch, as a local change is.
//! - At start an instance first takes the cluster's records, then seeds `--plugins DIR` over them
//!   (a file already among a plugin's versions changes nothing, so an instance restarted with an
//!   older folder does not roll the cluster back), then writes up what only it has (the first
//!   instance of a cluster brings its plugins).

use crate::registry::{PluginRecord, Registry};
use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::AsyncReadExt;

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("the cluster's admin records ({what}): {detail}")]
    Nats { what: &'static str, detail: String },
    /// What (a plugin, the contact policies) was changed elsewhere first.
    #[error("{0} was changed on another instance of the cluster at the same time; look at it again and retry")]
    Conflict(String),
    /// What (a plugin, the contact policies) the cluster holds in a form this version cannot read.
    #[error("the cluster's record of {name} is unreadable: {detail}")]
    Unreadable { name: String, detail: String },
    #[error("keeping the cluster's {what} here: {detail}")]
    Local { what: &'static str, detail: String },
}

/// Plugin records' keys begin with this.
const PREFIX: &str = "plugin.";

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

pub(super) fn nats(what: &'static str) -> impl Fn(String) -> SharedError {
    move |detail| SharedError::Nats { what, detail }
}

pub(super) fn local(what: &'static str) -> impl Fn(String) -> SharedError {
    move |detail| SharedError::Local { what, detail }
}

/// The cluster's plugin records and wasm, and what this instance last saw of them.
pub struct SharedPlugins {
    records: kv::Store,
    wasm: object_store::ObjectStore,
    /// Per plugin, the revision of its entry this instance last wrote or adopted: the one a
    /// change must replace.
    seen: Mutex<HashMap<String, u64>>,
    /// Wasm known to be in the object store.
    stored: Mutex<HashSet<String>>,
}

/// What the cluster holds of one plugin at start.
enum Held {
    Record(u64, Box<PluginRecord>),
    Deleted(u64),
}

impl SharedPlugins {
    /// Open (or create) the bucket and the object store of `config.bucket`.
    pub async fn open(client: &async_nats::Client, config: &crate::config::ClusterConfig) -> Result<Self, SharedError> {
        let js = jetstream::new(client.clone());
        let bucket = format!("{}_ADMIN", config.bucket);
        let records = super::open_bucket(
            &js,
            &bucket,
            "hub cluster: what admins changed (plugin records)",
            Duration::ZERO,
        )
        .await
        .map_err(nats("open the bucket"))?;
        let store = format!("{}_WASM", config.bucket);
        let wasm = match js.get_object_store(&store).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: store.clone(),
                    description: Some("hub cluster: plugin wasm by sha256".into()),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats("create the wasm store")(e.to_string()))?,
        };
        Ok(SharedPlugins {
            records,
            wasm,
            seen: Mutex::default(),
            stored: Mutex::default(),
        })
    }

    /// The bucket of admin changes (the contact policies are kept there too).
    pub fn bucket(&self) -> kv::Store {
        self.records.clone()
    }

    /// Before seeding: take the cluster's records (and the wasm they name) into this instance's
    /// registry; forget plugins the cluster deleted while this instance was away.
    pub async fn pull(&self, registry: &Registry) -> Result<(), SharedError> {
        let held = self.held().await?;
        for (name, held) in held {
            match held {
                Held::Record(revision, record) => {
                    self.fetch_wasm(registry, &record).await?;
                    registry
                        .store_adopted(&name, Some(&record))
                        .map_err(|e| local("plugin records")(e.to_string()))?;
                    self.saw(&name, revision);
                }
                Held::Deleted(revision) => {
                    registry
                        .store_adopted(&name, None)
                        .map_err(|e| local("plugin records")(e.to_string()))?;
                    self.saw(&name, revision);
                }
            }
        }
        Ok(())
    }

    /// After seeding: write up the records that differ from the cluster's (plugins only this
    /// instance has, or versions its plugin folder added). Another instance writing the same
    /// plugin meanwhile wins; this one adopts its record.
    pub async fn push(&self, registry: &Registry) -> Result<(), SharedError> {
        let held = self.held().await?;
        let local = registry.plugins().map_err(|e| local("plugin records")(e.to_string()))?;
        for record in local {
            let same = matches!(held.get(&record.name), Some(Held::Record(_, theirs)) if **theirs == record);
            if same {
                continue;
            }
            match self.write(registry, &record).await {
                Ok(()) => {}
                Err(SharedError::Conflict(_)) => {
                    tracing::info!(
                        plugin = record.name,
                        "another instance wrote this plugin first; adopting its record"
                    );
                    self.pull(registry).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Every plugin's latest entry in the bucket.
    async fn held(&self) -> Result<BTreeMap<String, Held>, SharedError> {
        let mut held = BTreeMap::new();
        let status = self
            .records
            .status()
            .await
            .map_err(|e| nats("read the bucket")(e.to_string()))?;
        if status.values() == 0 {
            return Ok(held);
        }
        let mut entries = self
            .records
            // Every key, so the last entry (delta 0) comes even when none is a plugin's.
            .watch_with_history(">")
            .await
            .map_err(|e| nats("read the bucket")(e.to_string()))?;
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| nats("read the bucket")(e.to_string()))?;
            let last = entry.delta == 0;
            if let Some(name) = entry.key.strip_prefix(PREFIX) {
                held.insert(name.to_owned(), self.decode(&entry)?);
            }
            if last {
                break;
            }
        }
        Ok(held)
    }

    fn decode(&self, entry: &kv::Entry) -> Result<Held, SharedError> {
        Ok(match entry.operation {
            kv::Operation::Put => Held::Record(
                entry.revision,
                Box::new(
                    PluginRecord::from_bytes(&entry.value).map_err(|e| SharedError::Unreadable {
                        name: format!("plugin {:?}", entry.key.trim_start_matches(PREFIX)),
                        detail: e.to_string(),
                    })?,
                ),
            ),
            kv::Operation::Delete | kv::Operation::Purge => Held::Deleted(entry.revision),
        })
    }

    fn saw(&self, name: &str, revision: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let at = seen.entry(name.to_owned()).or_default();
        *at = (*at).max(revision);
    }

    fn seen(&self, name: &str) -> u64 {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(name).copied().unwrap_or(0)
    }

    /// Write `record` as the cluster's, replacing the entry this instance last saw: first the
    /// wasm of its versions the object store lacks, then the entry.
    pub async fn write(&self, registry: &Registry, record: &PluginRecord) -> Result<(), SharedError> {
        for version in &record.versions {
            let sha = &version.sha256;
            if self.stored.lock().unwrap_or_else(PoisonError::into_inner).contains(sha) {
                continue;
            }
            if self.wasm.info(sha).await.is_err() {
                let bytes = registry.wasm(sha).map_err(|e| local("plugin wasm")(e.to_string()))?;
                self.wasm
                    .put(sha.as_str(), &mut bytes.as_ref())
                    .await
                    .map_err(|e| nats("store a plugin's wasm")(e.to_string()))?;
            }
            self.stored
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(sha.clone());
        }
        let value = record
            .to_bytes()
            .map_err(|e| nats("encode a plugin record")(e.to_string()))?;
        match self
            .records
            .update(key(&record.name), value.into(), self.seen(&record.name))
            .await
        {
            Ok(revision) => {
                self.saw(&record.name, revision);
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(SharedError::Conflict(format!("plugin {:?}", record.name)))
            }
            Err(e) => Err(nats("write a plugin record")(e.to_string())),
        }
    }

    /// Delete `name` for the whole cluster (if nobody changed it since this instance saw it).
    pub async fn delete(&self, name: &str) -> Result<(), SharedError> {
        match self
            .records
            .delete_expect_revision(key(name), Some(self.seen(name)))
            .await
        {
            Ok(()) => {}
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => {
                return Err(SharedError::Conflict(format!("plugin {name:?}")));
            }
            Err(e) => return Err(nats("delete a plugin record")(e.to_string())),
        }
        // The marker's revision is the one the next upload of this name replaces.
        if let Ok(Some(marker)) = self.records.entry(key(name)).await {
            self.saw(name, marker.revision);
        }
        Ok(())
    }

    /// Put the wasm of `record`'s versions that this instance lacks into its registry.
    async fn fetch_wasm(&self, registry: &Registry, record: &PluginRecord) -> Result<(), SharedError> {
        for version in &record.versions {
            let sha = &version.sha256;
            if registry.has_wasm(sha) {
                continue;
            }
            let mut object = self
                .wasm
                .get(sha.as_str())
                .await
                .map_err(|e| nats("fetch a plugin's wasm")(format!("{sha}: {e}")))?;
            let mut bytes = Vec::with_capacity(version.size);
            object
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| nats("fetch a plugin's wasm")(format!("{sha}: {e}")))?;
            if crate::registry::sha256_hex(&bytes) != *sha {
                return Err(nats("fetch a plugin's wasm")(format!(
                    "{sha}: the bytes have another hash"
                )));
            }
            registry
                .put_wasm(sha, &bytes)
                .map_err(|e| local("plugin wasm")(e.to_string()))?;
            self.stored
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(sha.clone());
        }
        Ok(())
    }

    /// Adopt, until the hub stops, what other instances write to the bucket.
    pub fn follow(self: &Arc<Self>, registry: Arc<Registry>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.follow_once(&registry).await {
                    tracing::warn!(error = %e, "following the cluster's plugin registry; again in a second");
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        })
    }

    async fn follow_once(&self, registry: &Arc<Registry>) -> Result<(), SharedError> {
        let mut entries = self
            .records
            .watch(format!("{PREFIX}>"))
            .await
            .map_err(|e| nats("watch the bucket")(e.to_string()))?;
        // Entries written between `pull` and this watch (or while it was down).
        for (name, held) in self.held().await? {
            self.adopt(registry, &name, held).await;
        }
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| nats("watch the bucket")(e.to_string()))?;
            let Some(name) = entry.key.strip_prefix(PREFIX) else {
                continue;
            };
            match self.decode(&entry) {
                Ok(held) => self.adopt(registry, name, held).await,
                Err(e) => tracing::error!(error = %e, "a plugin record from the cluster was not adopted"),
            }
        }
        Ok(())
    }

    /// Run what another instance wrote, unless this instance already has it.
    async fn adopt(&self, registry: &Arc<Registry>, name: &str, held: Held) {
        let revision = match &held {
            Held::Record(r, _) | Held::Deleted(r) => *r,
        };
        if revision <= self.seen(name) {
            return;
        }
        let record = match held {
            Held::Record(_, record) => {
                if let Err(e) = self.fetch_wasm(registry, &record).await {
                    tracing::error!(plugin = name, error = %e, "a plugin change from the cluster was not adopted");
                    return;
                }
                Some(*record)
            }
            Held::Deleted(_) => None,
        };
        match registry.adopt(name, record).await {
            Ok(Some(change)) => {
                tracing::info!(
                    plugin = name,
                    version = change.version,
                    enabled = change.enabled,
                    revision,
                    "adopted a plugin change made on another instance"
                );
            }
            Ok(None) => {}
            Err(e) => tracing::error!(plugin = name, error = %e, "a plugin change from the cluster was not adopted"),
        }
        self.saw(name, revision);
    }
}
