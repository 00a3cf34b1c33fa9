//! hub: a real-time event hub whose business logic runs as sandboxed WebAssembly plugins.
//!
//! The modules follow the path of an event:
//!
//! 1. [`ingress`] — NATS subscriptions; envelopes and ingest rules turn messages into [`event::Event`]s;
//! 2. [`router`] — every event goes to the shard that owns its actor;
//! 3. [`shard`] — one thread per shard runs the subscribed plugins, in order per actor;
//! 4. [`runtime`] — the wasmtime sandbox: modules, instances, host imports;
//! 5. [`state`] — sled behind a per-shard write-behind cache, durable timers;
//! 6. [`arbiter`] — the actions of an input are judged against the actor's contact policies;
//! 7. [`delivery`] — delivered actions, rendered by delivery plugins, go to their channel's sink;
//! 8. [`egress`] — actions, emitted events and dead letters leave over NATS.
//!
//! Around them: [`config`], [`registry`] (which plugin versions run, and hot swap), [`api`] (the
//! admin REST API), [`stats`] (per-plugin call statistics), [`http`] (health and metrics),
//! [`hub`] (wiring), [`nats_server`] (a local server for `hub up`), and [`fuzzing`] (the fuzz
//! targets' entry points, which the tests also replay over the fuzz corpus).
//!
//! The command line (`hub/src/cli.rs`) and the load generator (`hub-bench`) are crates of their
//! own on top of this library.

pub mod actor;
pub mod api;
pub mod arbiter;
pub mod backtest;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod dashboard;
pub mod dead_letter;
pub mod delivery;
pub mod durable;
pub mod egress;
pub mod event;
pub mod fuzzing;
pub mod http;
pub mod http_error;
pub mod hub;
pub mod ingress;
pub mod limits;
pub mod metrics;
pub mod nats_server;
pub mod offline;
pub mod quota;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod shadow;
pub mod shard;
pub mod state;
pub mod stats;
pub mod status;
#[cfg(test)]
mod strategies;
pub mod tenant;

/// Where the build put the example plugins (`plugins/`, built for wasm32-wasip2).
pub const EXAMPLE_PLUGINS: &str = env!("HUB_EXAMPLE_PLUGINS");
/// Where the build put the reference scenario plugins.
pub const REFERENCE_PLUGINS: &str = env!("HUB_REFERENCE_PLUGINS");
/// Where the build put the test fixture plugins.
pub const FIXTURE_PLUGINS: &str = env!("HUB_FIXTURE_PLUGINS");
