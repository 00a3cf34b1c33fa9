//! Host-side bindings of the `hub:plugin/plugin` world (`wit/plugin.wit`).

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    // Imports that touch storage can fail; a failure traps the call (and dead-letters the event)
    // instead of handing the plugin a wrong answer.
    imports: {
        "hub:plugin/state": trappable,
        "hub:plugin/timers": trappable,
        "hub:plugin/profile": trappable,
    },
});

pub use hub::plugin::types as wit;
