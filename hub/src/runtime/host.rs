//! The host imports a plugin sees: state, timers, profile, clock and log, each scoped to the
//! plugin and the actor of the current call.
//!
//! A shard's stores (write-behind state cache, timer wheel, profiles) are shared by all plugin
//! instances of that shard, but a wasmtime store must own its data. So the shard moves its boxed
//! [`ShardStores`] into the instance's [`HostState`] for the duration of a call and takes it
//! back afterwards: one pointer move each way, no locks, no reference counting.

use super::bindings::hub::plugin::{clock, log, profile, state, timers, types};
use crate::state::{PluginSlot, StateCache, TimerWheel};
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The per-shard stores plugins read and write through their imports.
pub struct ShardStores {
    pub state: StateCache,
    pub timers: TimerWheel,
    pub profiles: sled::Tree,
}

/// The data of one plugin instance's wasmtime store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryCap,
    pub(super) plugin: Arc<str>,
    pub(super) slot: PluginSlot,
    /// The actor of the current call (a reused buffer).
    pub(super) actor: String,
    /// The hub's clock for the current call.
    pub(super) now: i64,
    /// Present only during a call; see the module docs.
    pub(super) stores: Option<Box<ShardStores>>,
    /// The guest's stderr, where Rust guests write their panic message.
    pub(super) stderr: MemoryOutputPipe,
}

impl HostState {
    pub(super) fn new(plugin: Arc<str>, slot: PluginSlot, memory_bytes: usize) -> HostState {
        let stderr = MemoryOutputPipe::new(4096);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().stderr(stderr.clone()).build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap::new(memory_bytes),
            plugin,
            slot,
            actor: String::new(),
            now: 0,
            stores: None,
            stderr,
        }
    }

    /// The shard's stores and the current actor, borrowed side by side.
    fn scope(&mut self) -> wasmtime::Result<(&mut ShardStores, &str)> {
        let stores = self
            .stores
            .as_deref_mut()
            .ok_or_else(|| wasmtime::format_err!("host import called outside of an event or timer call"))?;
        Ok((stores, &self.actor))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers that it did, so a guest that aborts because an
/// allocation failed is reported as out of memory rather than as a generic trap.
pub(super) struct MemoryCap {
    max: usize,
    pub(super) hit: bool,
}

impl MemoryCap {
    fn new(max: usize) -> Self {
        MemoryCap { max, hit: false }
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl types::Host for HostState {}

impl state::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let slot = self.slot;
        let (stores, actor) = self.scope()?;
        Ok(stores.state.get(slot, actor, &key)?.map(<[u8]>::to_vec))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        let slot = self.slot;
        let (stores, actor) = self.scope()?;
        stores.state.set(slot, actor, &key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        let slot = self.slot;
        let (stores, actor) = self.scope()?;
        stores.state.set(slot, actor, &key, None);
        Ok(())
    }
}

impl timers::Host for HostState {
    fn set(&mut self, id: String, due: i64, payload: Vec<u8>) -> wasmtime::Result<()> {
        let plugin = self.plugin.clone();
        let (stores, actor) = self.scope()?;
        stores.timers.set(&plugin, actor, &id, due, payload);
        Ok(())
    }

    fn cancel(&mut self, id: String) -> wasmtime::Result<()> {
        let plugin = self.plugin.clone();
        let (stores, actor) = self.scope()?;
        stores.timers.cancel(&plugin, actor, &id);
        Ok(())
    }
}

impl profile::Host for HostState {
    fn get(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        let (stores, actor) = self.scope()?;
        Ok(stores.profiles.get(actor.as_bytes())?.map(|v| v.to_vec()))
    }
}

impl clock::Host for HostState {
    fn now(&mut self) -> i64 {
        self.now
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let (plugin, actor) = (&*self.plugin, self.actor.as_str());
        match level {
            log::Level::Trace => tracing::trace!(plugin, actor, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, actor, "{message}"),
            log::Level::Info => tracing::info!(plugin, actor, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, actor, "{message}"),
            log::Level::Error => tracing::error!(plugin, actor, "{message}"),
        }
    }
}
