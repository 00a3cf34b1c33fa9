//! The plugin runtime: one wasmtime [`Engine`] for the process, plugins compiled once into a
//! [`PluginModule`], and one [`PluginInstance`] per (shard, plugin) called synchronously.
//!
//! Why this shape (measured on a 2-core machine with wasmtime 48):
//! - calls are synchronous on plain shard threads: async adds 150–190 ns per call, and the
//!   component-model-async feature (which would slow every call 1.4–2.7×) is not compiled in;
//! - an instance lives as long as it is healthy: instantiating costs 12–20 µs, a call ~1.5 µs;
//! - a deadline per call comes from epoch interruption, driven by a dedicated OS thread
//!   ([`EpochTicker`]) so a busy async runtime can never delay it, and counts the call's CPU
//!   time (`deadline`);
//! - a trap poisons an instance, so it is dropped and re-created from the module, while state
//!   lives outside the instance (in the shard's write-behind cache) and nothing is lost.

mod bindings;
mod deadline;
mod host;
mod instance;
mod module;
mod outputs;
mod stores;

pub use host::HostState;
pub use instance::{CallError, PluginInstance};
pub use module::{Description, LoadError, PluginModule, valid_name};
pub use stores::{MemoryStores, ShardStores, StoreError, Stores};

use crate::config::PluginLimits;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

/// What a plugin call produced, converted from the WIT types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Emit {
        kind: String,
        actor: Option<String>,
        payload: Vec<u8>,
    },
    Action {
        name: String,
        category: String,
        priority: i32,
        dedup_key: Option<String>,
        payload: Vec<u8>,
    },
    Deliver {
        channel: String,
        target: String,
        body: Vec<u8>,
    },
}

/// The engine, the linker with the host imports, and the sandbox limits, shared by all shards.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    limits: PluginLimits,
    budget: deadline::Budget,
    ticker: EpochTicker,
}

impl Runtime {
    pub fn new(limits: PluginLimits) -> wasmtime::Result<Arc<Runtime>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // `HUB_WASM_PERFMAP=1` names plugin code for `perf` (/tmp/perf-<pid>.map), so a profile
        // of the hub shows which guest functions cost time instead of anonymous JIT addresses.
        if std::env::var_os("HUB_WASM_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // Rust std guests import WASI even when they never use it; link it with an empty
        // context (no preopens, env, args or network) so they instantiate but can reach nothing.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        let ticker = EpochTicker::start(engine.clone(), Duration::from_millis(limits.epoch_tick_ms.max(1)));
        Ok(Arc::new(Runtime {
            engine,
            linker,
            budget: deadline::Budget::new(
                Duration::from_millis(limits.call_timeout_ms),
                Duration::from_millis(limits.call_wall_timeout_ms),
                Duration::from_millis(limits.epoch_tick_ms.max(1)),
            ),
            limits,
            ticker,
        }))
    }

    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// What every plugin call may use.
    fn budget(&self) -> deadline::Budget {
        self.budget
    }

    /// Epoch ticks since the runtime started: a clock a call reads for the price of an atomic load.
    pub fn ticks(&self) -> u64 {
        self.ticker.ticks.load(Ordering::Relaxed)
    }

    /// Identifies what this engine can load: compiled artifacts are cached under it, so a hub
    /// with another wasmtime version or settings recompiles instead of loading them.
    pub fn artifact_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// A compiled component as bytes, for the artifact cache.
    pub fn serialize(&self, component: &Component) -> wasmtime::Result<Vec<u8>> {
        component.serialize()
    }

    /// Load a compiled artifact from the cache; `None` (recompile) if it does not load.
    pub fn deserialize(&self, artifact: &[u8]) -> Option<Component> {
        // SAFETY: the artifact cache lives in the hub's own data folder, holds only what
        // `serialize` wrote, and is keyed by `artifact_key`, so the bytes come from a compatible
        // engine; wasmtime still checks the header and refuses incompatible artifacts.
        unsafe { Component::deserialize(&self.engine, artifact) }.ok()
    }
}

/// Advances the engine's epoch on its own OS thread, and counts the ticks where calls can read
/// them (wasmtime does not expose the epoch); stops when dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    ticks: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), ticks.clone());
        let thread = std::thread::Builder::new()
            .name("hub-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
            .ok();
        EpochTicker { stop, ticks, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
