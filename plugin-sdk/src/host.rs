//! The host imports, by target: the real hub on wasm32, the test harness elsewhere.
//!
//! Calls carry the actor because the native fake needs it; the real hub already knows it.

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::context::Level;
    use crate::guest::bindings::hub::plugin::{clock, log as wlog, profile, state, timers};

    pub fn now() -> i64 {
        clock::now()
    }
    pub fn state_get(_actor: &str, key: &str) -> Option<Vec<u8>> {
        state::get(key)
    }
    pub fn state_set(_actor: &str, key: &str, value: &[u8]) {
        state::set(key, value)
    }
    pub fn state_delete(_actor: &str, key: &str) {
        state::delete(key)
    }
    pub fn timer_set(_actor: &str, id: &str, due: i64, payload: &[u8]) {
        timers::set(id, due, payload)
    }
    pub fn timer_cancel(_actor: &str, id: &str) {
        timers::cancel(id)
    }
    pub fn profile_get(_actor: &str) -> Option<Vec<u8>> {
        profile::get()
    }
    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wlog::Level::Trace,
            Level::Debug => wlog::Level::Debug,
            Level::Info => wlog::Level::Info,
            Level::Warn => wlog::Level::Warn,
            Level::Error => wlog::Level::Error,
        };
        wlog::log(level, message)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub use crate::testing::fake::{
        log, now, profile_get, state_delete, state_get, state_set, timer_cancel, timer_set,
    };
}

pub(crate) use imp::*;
