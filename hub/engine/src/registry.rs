//! Which plugins run, and every version they ever had.
//!
//! The registry in sled is the source of truth at start; `--plugins DIR` seeds or updates it.
//! Every change an admin makes (upload, config, rollback, enable, disable, delete) is validated
//! first, written to sled, and then goes live through [`Live`] with one atomic switch that each
//! shard picks up between batches. Changes are made one at a time.

mod live;
mod seed;
mod store;

pub use live::{Live, LivePlugin, LiveSet};
pub use seed::SeedError;
pub use store::{PluginRecord, StoreError, VersionRecord, sha256_hex};

use crate::router::Router;
use crate::runtime::{LoadError, PluginModule, Runtime, valid_name};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use store::Store;
use wasmtime::component::Component;

use crate::limits::LIVE_TIMEOUT;

/// Why an admin change was refused. The messages are shown to the admin as they are.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0:?} is not a valid plugin name: use 1–64 letters, digits, '-' or '_'")]
    BadName(String),
    #[error("no plugin named {0:?}")]
    NotFound(String),
    #[error("plugin {name:?} has no version {version}")]
    NoSuchVersion { name: String, version: u32 },
    #[error("plugin {0:?} has no earlier version to roll back to")]
    NothingToRollBack(String),
    #[error("the config must be a JSON object")]
    ConfigNotObject,
    #[error("plugin {0:?} has no shadow version to promote or drop")]
    NoShadow(String),
    #[error("plugin {0:?} is disabled: a shadow runs beside its active version, so enable it first")]
    ShadowOfDisabled(String),
    #[error(transparent)]
    Refused(#[from] LoadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Shared(#[from] crate::cluster::plugins::SharedError),
}

/// What an admin change did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Change {
    pub name: String,
    /// The active version after the change.
    pub version: u32,
    pub enabled: bool,
    /// False when the request asked for what was already the case.
    pub changed: bool,
    /// Every shard runs the change (false only if a shard did not pick it up in 5 s).
    pub live: bool,
    /// From the switch to the last shard running it.
    pub live_after_ms: f64,
    /// The version running as a shadow after the change, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<u32>,
}

/// A version to compare with the active one (see [`Registry::candidate`]).
pub struct Candidate {
    pub active: Arc<LivePlugin>,
    pub module: Arc<PluginModule>,
    pub sha256: String,
    pub size: usize,
    pub config: serde_json::Value,
}

#[derive(Default)]
struct Running {
    live: BTreeMap<String, Arc<LivePlugin>>,
    disabled: BTreeSet<String>,
    /// Shadows by their plugin's name; live while their plugin is.
    shadows: BTreeMap<String, Arc<LivePlugin>>,
}

impl Running {
    /// `name` runs `live`, or is disabled (`None`).
    fn set_live(&mut self, name: &str, live: Option<Arc<LivePlugin>>) {
        match live {
            Some(p) => {
                self.live.insert(name.to_owned(), p);
                self.disabled.remove(name);
            }
            None => {
                self.live.remove(name);
                self.disabled.insert(name.to_owned());
            }
        }
    }
}

pub struct Registry {
    runtime: Arc<Runtime>,
    store: Store,
    live: Arc<Live>,
    router: Router,
    engine_key: String,
    running: Mutex<Running>,
    /// Compiled components by wasm hash: versions and names share them.
    compiled: Mutex<HashMap<String, Component>>,
    /// Admin changes happen one at a time, so records and the live set never interleave.
    changes: tokio::sync::Mutex<()>,
    /// Components compiled from wasm since start (not loaded from memory or the artifact cache).
    compiles: std::sync::atomic::AtomicU64,
    /// In a cluster: the registry all instances share, written before each change is kept here.
    shared: std::sync::OnceLock<Arc<crate::cluster::plugins::SharedPlugins>>,
}

impl Registry {
    pub fn open(runtime: Arc<Runtime>, db: &sled::Db, router: Router) -> Result<Arc<Registry>, StoreError> {
        Ok(Arc::new(Registry {
            engine_key: runtime.artifact_key(),
            live: Arc::new(Live::new(router.shard_count())),
            store: Store::open(db)?,
            router,
            runtime,
            running: Mutex::default(),
            compiled: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
            compiles: std::sync::atomic::AtomicU64::new(0),
            shared: std::sync::OnceLock::new(),
        }))
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// How many components were compiled from wasm since start; a restart with an intact
    /// artifact cache compiles none.
    pub fn compiles(&self) -> u64 {
        self.compiles.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// In a cluster: from now on, every admin change is written to the registry the instances
    /// share before it is kept here (see `cluster::plugins`).
    pub fn share(&self, shared: Arc<crate::cluster::plugins::SharedPlugins>) {
        let _ = self.shared.set(shared);
    }

    /// Keep `record`: in the cluster's registry first (refused there: nothing changes here),
    /// then in this instance's.
    async fn keep(&self, record: &PluginRecord) -> Result<(), AdminError> {
        if let Some(shared) = self.shared.get() {
            shared.write(self, record).await?;
        }
        self.store.put_plugin(record)?;
        Ok(())
    }

    pub(crate) fn wasm(&self, sha256: &str) -> Result<sled::IVec, StoreError> {
        self.store.wasm(sha256)
    }

    pub(crate) fn has_wasm(&self, sha256: &str) -> bool {
        self.store.has_wasm(sha256)
    }

    pub(crate) fn put_wasm(&self, sha256: &str, wasm: &[u8]) -> Result<(), StoreError> {
        self.store.put_wasm(sha256, wasm)
    }

    /// Before [`Registry::start`]: keep the cluster's record of `name` (`None`: deleted).
    pub(crate) fn store_adopted(&self, name: &str, record: Option<&PluginRecord>) -> Result<(), StoreError> {
        match record {
            Some(record) => self.store.put_plugin(record),
            None => self.store.delete_plugin(name),
        }
    }

    /// Run `record` (`None`: the deletion of `name`), written to the cluster's registry by
    /// another instance, as a local change runs: validated, kept, live in one switch. `None`
    /// when this instance already has it.
    pub(crate) async fn adopt(
        self: &Arc<Self>,
        name: &str,
        record: Option<PluginRecord>,
    ) -> Result<Option<Change>, AdminError> {
        let _one_at_a_time = self.changes.lock().await;
        let local = self.store.plugin(name)?;
        if local == record {
            return Ok(None);
        }
        let Some(record) = record else {
            self.store.delete_plugin(name)?;
            let (live, live_after_ms) = self.stop_running(name).await;
            return Ok(Some(Change {
                name: name.to_owned(),
                version: local.map_or(0, |l| l.active),
                enabled: false,
                changed: true,
                live,
                live_after_ms,
                shadow: None,
            }));
        };
        // What runs already (same version) goes on running, with its shadow's comparison.
        let (running_live, running_shadow) = {
            let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            (
                running.live.get(name).filter(|p| p.version == record.active).cloned(),
                running
                    .shadows
                    .get(name)
                    .filter(|p| Some(p.version) == record.shadow)
                    .cloned(),
            )
        };
        let this = self.clone();
        let r = record.clone();
        let (live, shadow) = self
            .blocking(move || {
                let live = match running_live {
                    Some(p) => Some(p),
                    None if r.enabled => Some(this.live_plugin(&r)?),
                    None => None,
                };
                let shadow = match (running_shadow, r.shadow) {
                    (Some(p), _) => Some(p),
                    (None, Some(version)) => Some(this.shadow_plugin(&r, version)?),
                    (None, None) => None,
                };
                Ok((live.filter(|_| r.enabled), shadow))
            })
            .await?;
        self.store.put_plugin(&record)?;
        let change = self
            .apply(&record, |running| {
                running.set_live(&record.name, live);
                match shadow {
                    Some(s) => running.shadows.insert(record.name.clone(), s),
                    None => running.shadows.remove(&record.name),
                };
            })
            .await;
        Ok(Some(change))
    }

    /// Seed or update the registry from a folder of `*.wasm` (see [`seed`]).
    pub fn seed(&self, dir: &std::path::Path, configs: &BTreeMap<String, serde_json::Value>) -> Result<(), SeedError> {
        seed::seed_dir(self, dir, configs)
    }

    /// Make the active version of every enabled plugin live. Used once at start; a plugin whose
    /// stored version no longer loads is logged and left out rather than stopping the hub.
    pub fn start(&self) -> Result<usize, StoreError> {
        let mut running = Running::default();
        for record in self.store.plugins()? {
            if !record.enabled {
                running.disabled.insert(record.name.clone());
                continue;
            }
            match self.live_plugin(&record) {
                Ok(p) => {
                    running.live.insert(record.name.clone(), p);
                }
                Err(e) => tracing::error!(plugin = record.name, error = %e, "plugin not started"),
            }
            if let Some(version) = record.shadow {
                match self.shadow_plugin(&record, version) {
                    Ok(p) => {
                        running.shadows.insert(record.name.clone(), p);
                    }
                    Err(e) => tracing::error!(plugin = record.name, version, error = %e, "shadow not started"),
                }
            }
        }
        let count = running.live.len();
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = running;
        self.publish();
        Ok(count)
    }

    pub fn plugins(&self) -> Result<Vec<PluginRecord>, StoreError> {
        self.store.plugins()
    }

    pub fn plugin(&self, name: &str) -> Result<PluginRecord, AdminError> {
        self.store
            .plugin(name)?
            .ok_or_else(|| AdminError::NotFound(name.to_owned()))
    }

    /// Upload `wasm` as the next version of `name` and make it live. Without `config`, the
    /// active version's config carries over (a code update keeps its template parameters).
    pub async fn upload(
        self: &Arc<Self>,
        name: &str,
        wasm: bytes::Bytes,
        config: Option<serde_json::Value>,
    ) -> Result<Change, AdminError> {
        self.upload_for(name, wasm, config, None).await
    }

    /// [`Registry::upload`], for the named `tenants` only when given (otherwise the tenants
    /// stay as they were: every tenant's, for a new plugin). The version goes live with them
    /// in one switch, so it never runs for another tenant.
    pub async fn upload_for(
        self: &Arc<Self>,
        name: &str,
        wasm: bytes::Bytes,
        config: Option<serde_json::Value>,
        tenants: Option<Vec<String>>,
    ) -> Result<Change, AdminError> {
        if !valid_name(name) {
            return Err(AdminError::BadName(name.to_owned()));
        }
        let _one_at_a_time = self.changes.lock().await;
        let mut existing = self.store.plugin(name)?;
        let retenanted = tenants.is_some() && existing.as_ref().map(|r| &r.tenants) != Some(&tenants);
        let config = match (config, existing.as_ref().and_then(PluginRecord::active)) {
            (Some(c), _) => c,
            (None, Some(active)) => active.config.clone(),
            (None, None) => serde_json::json!({}),
        };
        let sha256 = sha256_hex(&wasm);
        if let Some(record) = &existing
            && let Some(active) = record.active()
            && active.sha256 == sha256
            && active.config == config
            && !retenanted
        {
            return Ok(self.unchanged(record));
        }
        if tenants.is_some() {
            let record = existing.get_or_insert_with(|| PluginRecord::new(name));
            record.tenants = tenants;
        }
        let size = wasm.len();
        let this = self.clone();
        let (module, sha256) = self
            .blocking(move || {
                let module = this.module(&sha256, Some(&wasm), &config)?;
                this.store.put_wasm(&sha256, &wasm)?;
                Ok((module, sha256))
            })
            .await?;
        self.add_version(name, existing, module, sha256, size, "api").await
    }

    /// The active version of `name` and a candidate of `wasm` with `config` (default: the
    /// active version's config), validated as an upload is (it must load and its `init` accept
    /// the config) but stored nowhere and run nowhere: what a backtest compares.
    pub async fn candidate(
        self: &Arc<Self>,
        name: &str,
        wasm: bytes::Bytes,
        config: Option<serde_json::Value>,
    ) -> Result<Candidate, AdminError> {
        let record = self.plugin(name)?;
        let config = match (config, record.active()) {
            (Some(c), _) => c,
            (None, Some(active)) => active.config.clone(),
            (None, None) => serde_json::json!({}),
        };
        let this = self.clone();
        self.blocking(move || {
            let active = this.live_plugin(&record)?;
            let sha256 = sha256_hex(&wasm);
            // A known component is reused; a new one is compiled but not cached, so a
            // candidate leaves nothing behind.
            let known = this
                .compiled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&sha256)
                .cloned();
            let component = match known {
                Some(c) => c,
                None => PluginModule::compile(&this.runtime, &wasm)?,
            };
            let module = PluginModule::from_component(&this.runtime, &component, &config)?;
            Ok(Candidate {
                active,
                module: Arc::new(module),
                sha256,
                size: wasm.len(),
                config,
            })
        })
        .await
    }

    /// Run `wasm` with `config` (default: the active version's) as a shadow of `name`: validated
    /// as an upload is, kept as a version, and live beside the active version, delivering
    /// nothing (see `crate::shadow`). A shadow already running is replaced, with its state.
    pub async fn upload_shadow(
        self: &Arc<Self>,
        name: &str,
        wasm: bytes::Bytes,
        config: Option<serde_json::Value>,
    ) -> Result<Change, AdminError> {
        let _one_at_a_time = self.changes.lock().await;
        let record = self.plugin(name)?;
        if !record.enabled {
            return Err(AdminError::ShadowOfDisabled(name.to_owned()));
        }
        let config = match (config, record.active()) {
            (Some(c), _) => c,
            (None, Some(active)) => active.config.clone(),
            (None, None) => serde_json::json!({}),
        };
        let sha256 = sha256_hex(&wasm);
        let size = wasm.len();
        let this = self.clone();
        let module = self
            .blocking(move || {
                let module = this.module(&sha256, Some(&wasm), &config)?;
                this.store.put_wasm(&sha256, &wasm)?;
                Ok((module, sha256))
            })
            .await;
        let (module, sha256) = module?;
        let mut record = record;
        let version = record.next_version();
        record.versions.push(VersionRecord {
            version,
            sha256,
            size,
            uploaded_at: crate::event::now_ms(),
            source: "shadow".to_owned(),
            description: module.description.clone(),
            config: serde_json::from_str(&module.config).unwrap_or_default(),
        });
        record.shadow = Some(version);
        let shadow = Arc::new(LivePlugin {
            name: crate::shadow::shadow_name(name, version).into(),
            version,
            module,
            shadow: Some(Arc::new(crate::shadow::ShadowBook::new(name, version))),
            tenants: record.scope(),
        });
        self.change_shadow(&record, |running| {
            running.shadows.insert(name.to_owned(), shadow);
        })
        .await
    }

    /// Make the shadow the active version, in one switch as a swap is. The new active version
    /// carries on with the active version's state and timers (they belong to the name); the
    /// shadow's own are dropped.
    pub async fn promote(self: &Arc<Self>, name: &str) -> Result<Change, AdminError> {
        let _one_at_a_time = self.changes.lock().await;
        let mut record = self.plugin(name)?;
        let version = record.shadow.ok_or_else(|| AdminError::NoShadow(name.to_owned()))?;
        let shadow = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shadows
            .get(name)
            .cloned();
        let module = match &shadow {
            Some(s) => s.module.clone(),
            None => self.shadow_plugin(&record, version)?.module.clone(),
        };
        record.active = version;
        record.shadow = None;
        let promoted = Arc::new(LivePlugin {
            name: name.into(),
            version,
            module,
            shadow: None,
            tenants: record.scope(),
        });
        self.change_shadow(&record, |running| {
            running.live.insert(name.to_owned(), promoted);
            running.shadows.remove(name);
        })
        .await
    }

    /// Stop the shadow and drop its state and timers; its version stays in the history.
    pub async fn drop_shadow(self: &Arc<Self>, name: &str) -> Result<Change, AdminError> {
        let _one_at_a_time = self.changes.lock().await;
        let mut record = self.plugin(name)?;
        record.shadow.ok_or_else(|| AdminError::NoShadow(name.to_owned()))?;
        record.shadow = None;
        self.change_shadow(&record, |running| {
            running.shadows.remove(name);
        })
        .await
    }

    /// Store `record`, change the running set with `change`, and make it live in one switch.
    /// A shadow that stops takes its state and timers with it (they are in the shards' memory).
    async fn change_shadow(
        &self,
        record: &PluginRecord,
        change: impl FnOnce(&mut Running),
    ) -> Result<Change, AdminError> {
        self.keep(record).await?;
        Ok(self.apply(record, change).await)
    }

    /// The running comparison of `name`'s shadow with its active version.
    pub fn shadow_status(&self, name: &str) -> Option<crate::shadow::ShadowStatus> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.shadows.get(name)?.shadow.as_ref().map(|book| book.status())
    }

    /// New template parameters for the running code: a new version with the same wasm.
    pub async fn set_config(self: &Arc<Self>, name: &str, config: serde_json::Value) -> Result<Change, AdminError> {
        if !config.is_object() {
            return Err(AdminError::ConfigNotObject);
        }
        let _one_at_a_time = self.changes.lock().await;
        let record = self.plugin(name)?;
        let active = record
            .active()
            .cloned()
            .ok_or_else(|| AdminError::NotFound(name.to_owned()))?;
        if active.config == config {
            return Ok(self.unchanged(&record));
        }
        let this = self.clone();
        let sha256 = active.sha256.clone();
        let module = self.blocking(move || this.module(&sha256, None, &config)).await?;
        self.add_version(name, Some(record), module, active.sha256, active.size, "config")
            .await
    }

    /// Make `version` (default: the highest one below the active) the active one.
    pub async fn rollback(self: &Arc<Self>, name: &str, version: Option<u32>) -> Result<Change, AdminError> {
        let _one_at_a_time = self.changes.lock().await;
        let mut record = self.plugin(name)?;
        let target = match version {
            Some(v) => v,
            None => record
                .versions
                .iter()
                .map(|v| v.version)
                .filter(|v| *v < record.active)
                .max()
                .ok_or_else(|| AdminError::NothingToRollBack(name.to_owned()))?,
        };
        if record.version(target).is_none() {
            return Err(AdminError::NoSuchVersion {
                name: name.to_owned(),
                version: target,
            });
        }
        if target == record.active {
            return Ok(self.unchanged(&record));
        }
        record.active = target;
        self.store_and_go_live(record).await
    }

    /// Run `name` for the named `tenants` only (`None`: for every tenant), in one switch.
    pub async fn set_tenants(self: &Arc<Self>, name: &str, tenants: Option<Vec<String>>) -> Result<Change, AdminError> {
        let _one_at_a_time = self.changes.lock().await;
        let mut record = self.plugin(name)?;
        if record.tenants == tenants {
            return Ok(self.unchanged(&record));
        }
        record.tenants = tenants;
        let shadow = record.shadow;
        let change = self.store_and_go_live(record.clone()).await?;
        // A shadow runs for the same tenants as its active version.
        if let (Some(version), true) = (shadow, record.enabled) {
            let this = self.clone();
            let r = record.clone();
            let shadow = self.blocking(move || this.shadow_plugin(&r, version)).await?;
            self.change_shadow(&record, |running| {
                running.shadows.insert(record.name.clone(), shadow);
            })
            .await?;
        }
        Ok(change)
    }

    pub async fn set_enabled(self: &Arc<Self>, name: &str, enabled: bool) -> Result<Change, AdminError> {
        let _one_at_a_time = self.changes.lock().await;
        let mut record = self.plugin(name)?;
        if record.enabled == enabled {
            return Ok(self.unchanged(&record));
        }
        record.enabled = enabled;
        self.store_and_go_live(record).await
    }

    /// Validate `record`'s active version (when enabled), store the record, and make it live.
    async fn store_and_go_live(self: &Arc<Self>, record: PluginRecord) -> Result<Change, AdminError> {
        let live = if record.enabled {
            let this = self.clone();
            let r = record.clone();
            Some(self.blocking(move || this.live_plugin(&r)).await?)
        } else {
            None
        };
        self.keep(&record).await?;
        Ok(self.go_live(&record, live).await)
    }

    /// Stop running `name` and forget its versions. Its state and timers stay in sled, so a
    /// plugin uploaded again under the same name carries on where it stopped.
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<Change, AdminError> {
        let _one_at_a_time = self.changes.lock().await;
        let record = self.plugin(name)?;
        if let Some(shared) = self.shared.get() {
            shared.delete(name).await?;
        }
        self.store.delete_plugin(name)?;
        let (live, live_after_ms) = self.stop_running(name).await;
        Ok(Change {
            name: record.name,
            version: record.active,
            enabled: false,
            changed: true,
            live,
            live_after_ms,
            shadow: None,
        })
    }

    /// Stop running `name` (and its shadow) in one switch.
    async fn stop_running(&self, name: &str) -> (bool, f64) {
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            running.live.remove(name);
            running.disabled.remove(name);
            running.shadows.remove(name);
        }
        self.switch().await
    }

    /// Append a validated version, make it active, and make it live.
    async fn add_version(
        &self,
        name: &str,
        existing: Option<PluginRecord>,
        module: Arc<PluginModule>,
        sha256: String,
        size: usize,
        source: &str,
    ) -> Result<Change, AdminError> {
        let record = next_record(name, existing, &module, sha256, size, source);
        self.keep(&record).await?;
        let live = record.enabled.then(|| {
            Arc::new(LivePlugin {
                name: name.into(),
                version: record.active,
                module,
                shadow: None,
                tenants: record.scope(),
            })
        });
        Ok(self.go_live(&record, live).await)
    }

    /// Put `record`'s new state into the live set and wait until every shard runs it.
    async fn go_live(&self, record: &PluginRecord, live: Option<Arc<LivePlugin>>) -> Change {
        self.apply(record, |running| running.set_live(&record.name, live)).await
    }

    /// Change the running set with `change`, make it live in one switch, and report `record`'s
    /// state once every shard runs it.
    async fn apply(&self, record: &PluginRecord, change: impl FnOnce(&mut Running)) -> Change {
        change(&mut self.running.lock().unwrap_or_else(PoisonError::into_inner));
        let (live, live_after_ms) = self.switch().await;
        tracing::info!(
            plugin = record.name,
            version = record.active,
            enabled = record.enabled,
            shadow = record.shadow,
            live_after_ms,
            "plugin change is live"
        );
        Change {
            name: record.name.clone(),
            version: record.active,
            enabled: record.enabled,
            changed: true,
            live,
            live_after_ms,
            shadow: record.shadow,
        }
    }

    /// Publish the running set, wake idle shards, and wait for all of them to adopt it.
    async fn switch(&self) -> (bool, f64) {
        let started = Instant::now();
        let generation = self.publish();
        self.router.nudge_all();
        let live = self.live.wait_everywhere(generation, LIVE_TIMEOUT).await;
        if !live {
            tracing::warn!(generation, "not every shard picked up a plugin change in time");
        }
        (live, started.elapsed().as_secs_f64() * 1000.0)
    }

    fn publish(&self) -> u64 {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        // Shadows after every active version, and only beside a live one.
        let shadows = running
            .shadows
            .iter()
            .filter(|(name, _)| running.live.contains_key(*name))
            .map(|(_, s)| s.clone());
        self.live.publish(
            running.live.values().cloned().chain(shadows).collect(),
            running.disabled.iter().map(|n| Arc::from(n.as_str())).collect(),
        )
    }

    fn unchanged(&self, record: &PluginRecord) -> Change {
        Change {
            name: record.name.clone(),
            version: record.active,
            enabled: record.enabled,
            changed: false,
            live: true,
            live_after_ms: 0.0,
            shadow: record.shadow,
        }
    }

    /// The live plugin for `record`'s active version.
    fn live_plugin(&self, record: &PluginRecord) -> Result<Arc<LivePlugin>, AdminError> {
        let v = record.active().ok_or_else(|| AdminError::NoSuchVersion {
            name: record.name.clone(),
            version: record.active,
        })?;
        let module = self.module(&v.sha256, None, &v.config)?;
        Ok(Arc::new(LivePlugin {
            name: record.name.as_str().into(),
            version: v.version,
            module,
            shadow: None,
            tenants: record.scope(),
        }))
    }

    /// The live shadow of `record`'s `version`, with a comparison that starts now.
    fn shadow_plugin(&self, record: &PluginRecord, version: u32) -> Result<Arc<LivePlugin>, AdminError> {
        let v = record.version(version).ok_or_else(|| AdminError::NoSuchVersion {
            name: record.name.clone(),
            version,
        })?;
        Ok(Arc::new(LivePlugin {
            name: crate::shadow::shadow_name(&record.name, version).into(),
            version,
            module: self.module(&v.sha256, None, &v.config)?,
            shadow: Some(Arc::new(crate::shadow::ShadowBook::new(&record.name, version))),
            tenants: record.scope(),
        }))
    }

    /// A validated module of the wasm with hash `sha256` (given, or read from the registry) and
    /// `config`.
    fn module(
        &self,
        sha256: &str,
        wasm: Option<&[u8]>,
        config: &serde_json::Value,
    ) -> Result<Arc<PluginModule>, AdminError> {
        let component = self.component(sha256, wasm)?;
        Ok(Arc::new(PluginModule::from_component(
            &self.runtime,
            &component,
            config,
        )?))
    }

    /// The compiled component of `sha256`: from memory, from the artifact cache, or compiled
    /// (and then cached).
    fn component(&self, sha256: &str, wasm: Option<&[u8]>) -> Result<Component, AdminError> {
        if let Some(c) = self.compiled.lock().unwrap_or_else(PoisonError::into_inner).get(sha256) {
            return Ok(c.clone());
        }
        let cached = self
            .store
            .artifact(sha256, &self.engine_key)?
            .and_then(|a| self.runtime.deserialize(&a));
        let component = match cached {
            Some(c) => c,
            None => {
                let stored;
                let wasm = match wasm {
                    Some(w) => w,
                    None => {
                        stored = self.store.wasm(sha256)?;
                        &stored
                    }
                };
                let c = PluginModule::compile(&self.runtime, wasm)?;
                self.compiles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match self.runtime.serialize(&c) {
                    Ok(artifact) => self.store.put_artifact(sha256, &self.engine_key, &artifact)?,
                    Err(e) => tracing::warn!(error = %e, "compiled plugin not cached"),
                }
                c
            }
        };
        self.compiled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(sha256.to_owned(), component.clone());
        Ok(component)
    }

    /// Run compiling and `init` off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
    ) -> Result<T, AdminError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| AdminError::Internal(format!("validation task failed: {e}")))?
    }
}

/// `existing` (or a new record) with a validated version appended and made active.
fn next_record(
    name: &str,
    existing: Option<PluginRecord>,
    module: &PluginModule,
    sha256: String,
    size: usize,
    source: &str,
) -> PluginRecord {
    let mut record = existing.unwrap_or_else(|| PluginRecord::new(name));
    let version = record.next_version();
    record.versions.push(VersionRecord {
        version,
        sha256,
        size,
        uploaded_at: crate::event::now_ms(),
        source: source.to_owned(),
        description: module.description.clone(),
        config: serde_json::from_str(&module.config).unwrap_or_default(),
    });
    record.active = version;
    record
}
