//! Which plugin versions are live: one immutable [`LiveSet`] behind an atomic pointer, written by
//! the registry and read by every shard.
//!
//! Going live is one pointer swap plus a generation bump. A shard compares the generation (one
//! relaxed load) at the start of each turn, between batches, and only then loads the set and
//! swaps its instances. So every event is handled by exactly one version, and the hot path takes
//! no lock. Each shard acknowledges the generation it runs, which lets an admin call return only
//! once the new version serves everywhere.

use crate::runtime::PluginModule;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One live plugin: a registered name running one version of a module with its config.
#[derive(Debug)]
pub struct LivePlugin {
    /// The registered name; state and timers belong to it, not to the version.
    pub name: Arc<str>,
    pub version: u32,
    pub module: Arc<PluginModule>,
    /// Set for a shadow (see `crate::shadow`): where its outputs are compared, instead of sent.
    pub shadow: Option<Arc<crate::shadow::ShadowBook>>,
    /// The tenants whose events it takes.
    pub tenants: crate::tenant::Scope,
}

/// Everything the shards should run, in a stable order.
#[derive(Debug, Default)]
pub struct LiveSet {
    pub generation: u64,
    pub plugins: Vec<Arc<LivePlugin>>,
    /// Registered but disabled: their timers are dead-lettered as `disabled`, not `no_plugin`.
    pub disabled: Vec<Arc<str>>,
}

impl LiveSet {
    pub fn find(&self, name: &str) -> Option<&Arc<LivePlugin>> {
        self.plugins.iter().find(|p| &*p.name == name)
    }
}

pub struct Live {
    current: ArcSwap<LiveSet>,
    generation: AtomicU64,
    /// The generation each shard has adopted.
    adopted: Box<[AtomicU64]>,
}

impl Live {
    pub fn new(shards: usize) -> Live {
        Live {
            current: ArcSwap::from_pointee(LiveSet::default()),
            generation: AtomicU64::new(0),
            adopted: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The generation of the newest set; shards compare it with theirs every turn.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn load(&self) -> Arc<LiveSet> {
        self.current.load_full()
    }

    /// Make `plugins` the live set; returns its generation.
    pub fn publish(&self, plugins: Vec<Arc<LivePlugin>>, disabled: Vec<Arc<str>>) -> u64 {
        let generation = self.generation.load(Ordering::Acquire) + 1;
        self.current.store(Arc::new(LiveSet {
            generation,
            plugins,
            disabled,
        }));
        self.generation.store(generation, Ordering::Release);
        generation
    }

    /// Called by shard `shard` once it runs `generation`.
    pub fn adopted(&self, shard: usize, generation: u64) {
        if let Some(a) = self.adopted.get(shard) {
            a.store(generation, Ordering::Release);
        }
    }

    /// Whether every shard runs `generation` or newer.
    pub fn everywhere(&self, generation: u64) -> bool {
        self.adopted.iter().all(|a| a.load(Ordering::Acquire) >= generation)
    }

    /// Wait until every shard runs `generation`; false after `timeout`.
    pub async fn wait_everywhere(&self, generation: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.everywhere(generation) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        true
    }
}
