//! The plugin runtime: one wasmtime [`Engine`] for the process, plugins compiled once into a
//! [`PluginModule`], and one [`PluginInstance`] per (shard, plugin) called synchronously.
//!
//! Why this shape (measured on a 2-core machine with wasmtime 48):
//! - calls are synchronous on plain shard threads: async adds 150–190 ns per call, and the
//!   component-model-async feature (which would slow every call 1.4–2.7×) is not compiled in;
//! - an instance lives as long as it is healthy: instantiating costs 12–20 µs, a call ~1.5 µs;
//! - a deadline per call comes from epoch interruption, driven by a dedicated OS thread
//!   ([`EpochTicker`]) so a busy async runtime can never delay it, and counts the call's CPU
//!   time (`deadline`); it rests while no plugin runs, so an idle hub is not woken 1,000 times
//!   a second;
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
        let tick = Duration::from_millis(limits.epoch_tick_ms.max(1));
        let budget = deadline::Budget::new(
            Duration::from_millis(limits.call_timeout_ms),
            Duration::from_millis(limits.call_wall_timeout_ms),
            tick,
        );
        // Every call that began has ended or been stopped a tick after its wall-clock cap.
        let ticker = EpochTicker::start(engine.clone(), tick, budget.wall_ticks() + 1);
        Ok(Arc::new(Runtime {
            engine,
            linker,
            budget,
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

    /// Epoch ticks since the runtime started, for a call that begins or is checked: a clock it
    /// reads for the price of two atomic loads, which wakes the ticker if it rests.
    pub fn ticks(&self) -> u64 {
        self.ticker.clock.busy()
    }

    /// Whether the epoch ticker rests, as it does while no plugin runs.
    #[cfg(test)]
    pub fn ticker_resting(&self) -> bool {
        self.ticker.clock.resting.load(Ordering::SeqCst)
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
///
/// An idle hub is not woken a thousand times a second for it: once no call has begun for
/// longer than any call may run (its wall-clock cap), the ticker *rests*, ticking only every
/// [`RESTING_TICK`], until a call begins and wakes it. A call that begins reads the tick
/// ([`Clock::busy`]), marks it active and then looks whether the ticker rests; the ticker marks
/// itself resting and then looks at the active tick again before it sleeps. With both in
/// sequentially consistent order, one of them sees the other: either the call wakes the ticker
/// or the ticker does not rest. A call's deadline check marks it active too, so even a call the
/// ticker somehow missed is ticked at full rate again from its first check.
struct EpochTicker {
    clock: Arc<Clock>,
    thread: Option<JoinHandle<()>>,
}

/// How often a resting ticker still advances the epoch: a safety net, not a clock anyone reads.
const RESTING_TICK: Duration = Duration::from_millis(100);

/// What the ticker and the calls share.
#[derive(Default)]
struct Clock {
    stop: AtomicBool,
    ticks: AtomicU64,
    /// The latest tick a call began (or was checked) in.
    active: AtomicU64,
    resting: AtomicBool,
    ticker: std::sync::OnceLock<std::thread::Thread>,
}

impl Clock {
    /// The tick now, for a call that begins or is checked: wakes the ticker if it rests.
    fn busy(&self) -> u64 {
        let now = self.ticks.load(Ordering::Relaxed);
        if self.active.load(Ordering::Relaxed) < now {
            self.active.fetch_max(now, Ordering::SeqCst);
        }
        if self.resting.load(Ordering::SeqCst)
            && self.resting.swap(false, Ordering::SeqCst)
            && let Some(ticker) = self.ticker.get()
        {
            ticker.unpark();
        }
        now
    }

    /// Whether no call has begun for more than `idle` ticks.
    fn idle(&self, idle: u64) -> bool {
        let now = self.ticks.load(Ordering::Relaxed);
        now.saturating_sub(self.active.load(Ordering::SeqCst)) > idle
    }
}

impl EpochTicker {
    /// Tick every `tick`; rest once no call has begun for `idle` ticks.
    fn start(engine: Engine, tick: Duration, idle: u64) -> EpochTicker {
        let clock = Arc::new(Clock::default());
        let shared = clock.clone();
        let thread = std::thread::Builder::new()
            .name("hub-epoch".into())
            .spawn(move || {
                let clock = shared;
                while !clock.stop.load(Ordering::Relaxed) {
                    // A call that begins after `resting` is set sees it (and unparks us); one
                    // that began before is seen by the second look.
                    let rest = clock.idle(idle) && {
                        clock.resting.store(true, Ordering::SeqCst);
                        clock.idle(idle)
                    };
                    match rest {
                        true => std::thread::park_timeout(RESTING_TICK),
                        false => std::thread::sleep(tick),
                    }
                    clock.resting.store(false, Ordering::SeqCst);
                    engine.increment_epoch();
                    clock.ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
            .ok();
        if let Some(t) = &thread {
            let _ = clock.ticker.set(t.thread().clone());
        }
        EpochTicker { clock, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.clock.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
