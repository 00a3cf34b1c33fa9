//! Write hub plugins in Rust.
//!
//! A plugin is a type implementing [`Plugin`], exported with [`export_plugin!`] and built with
//! `cargo build --release --target wasm32-wasip2`. The hub calls it one event at a time per actor;
//! everything it may touch (state, timers, profile, clock, log) goes through the [`Context`] it is
//! handed, scoped to this plugin and the current actor.
//!
//! The same code compiles natively: on the host, [`testing::TestHub`] stands in for the hub (state,
//! timers, profiles and a virtual clock in memory), so plugin logic is tested with `cargo test`.
//!
//! ```
//! use hub_plugin_sdk::{Context, Description, Error, Event, Plugin};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Config { limit: u32 }
//!
//! struct Counter { limit: u32 }
//!
//! impl Plugin for Counter {
//!     type Config = Config;
//!     fn describe() -> Description {
//!         Description::new("counter", "0.1.0").subscribe("page.viewed").emits("page.many")
//!     }
//!     fn new(config: Config) -> Result<Self, Error> {
//!         Ok(Counter { limit: config.limit })
//!     }
//!     fn on_event(&self, cx: &mut Context, _event: &Event) -> Result<(), Error> {
//!         let seen: u32 = cx.state().get("seen")?.unwrap_or(0) + 1;
//!         cx.state().set("seen", &seen)?;
//!         if seen == self.limit {
//!             cx.emit("page.many", &serde_json::json!({ "seen": seen }))?;
//!         }
//!         Ok(())
//!     }
//! }
//! hub_plugin_sdk::export_plugin!(Counter);
//!
//! let mut hub = hub_plugin_sdk::testing::TestHub::<Counter>::new(serde_json::json!({"limit": 2})).unwrap();
//! hub.send(hub.event("page.viewed", "u1", &serde_json::json!({}))).unwrap();
//! let out = hub.send(hub.event("page.viewed", "u1", &serde_json::json!({}))).unwrap();
//! assert_eq!(out[0].as_emit().unwrap().kind, "page.many");
//! ```

pub mod blocks;
mod context;
mod host;
pub mod pattern;
pub mod time;
mod types;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod guest;

pub use context::{Context, Level, State, Timers};
pub use types::{Action, Delivery, Description, Emitted, Error, Event, Output, Timer};

/// A hub plugin: a mapper, a scenario or a delivery renderer.
///
/// One value is created per deployment by [`Plugin::new`] from its JSON config and then serves
/// every actor; keep per-actor data in [`Context::state`], never in `self`, because the hub may
/// re-create the instance at any time (after a trap, a restart, or a config change).
pub trait Plugin: Sized + 'static {
    /// The deployment's parameters, decoded from the JSON object given to the hub.
    type Config: serde::de::DeserializeOwned;

    /// Name, version, subscriptions and outputs. Must not depend on config.
    fn describe() -> Description;

    /// Build the plugin from its config; an error refuses the config with this message.
    fn new(config: Self::Config) -> Result<Self, Error>;

    /// Handle one event of one actor.
    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error>;

    /// A timer set by this plugin for `timer.actor` came due.
    fn on_timer(&self, cx: &mut Context, timer: &Timer) -> Result<(), Error> {
        let _ = (cx, timer);
        Ok(())
    }
}

/// Decode a plugin's JSON config; an empty string means `{}`.
#[doc(hidden)]
pub fn decode_config<C: serde::de::DeserializeOwned>(config: &str) -> Result<C, Error> {
    let text = if config.trim().is_empty() { "{}" } else { config };
    serde_json::from_str(text).map_err(|e| Error::msg(format!("invalid config: {e}")))
}

/// Export a [`Plugin`] type as the component's `hub:plugin/plugin` world.
///
/// Expands to nothing on non-wasm targets, so the crate still builds and tests natively.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct HubGuest;
            impl $crate::guest::bindings::Guest for HubGuest {
                fn describe() -> $crate::guest::bindings::hub::plugin::types::Description {
                    $crate::guest::describe::<$plugin>()
                }
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::guest::init::<$plugin>(&config)
                }
                fn on_event(
                    event: $crate::guest::bindings::hub::plugin::types::Event,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::guest::bindings::hub::plugin::types::Output>,
                    ::std::string::String,
                > {
                    $crate::guest::on_event::<$plugin>(event)
                }
                fn on_timer(
                    timer: $crate::guest::bindings::hub::plugin::types::Timer,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::guest::bindings::hub::plugin::types::Output>,
                    ::std::string::String,
                > {
                    $crate::guest::on_timer::<$plugin>(timer)
                }
            }
    $crate::guest::bindings::__export_plugin_world!(HubGuest with_types_in $crate::guest::bindings);
        };
    };
}
