//! Host-side bindings of the `hub:plugin/plugin` world (`wit/plugin.wit`).

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../../wit",
    // Events and timers are handed to the guest as borrowed views of the hub's own values:
    // no string or payload is copied on the host side to make a call.
    ownership: Borrowing { duplicate_if_necessary: true },
    // Imports that touch storage can fail; a failure traps the call (and dead-letters the event)
    // instead of handing the plugin a wrong answer.
    imports: {
        "hub:plugin/state": trappable,
        "hub:plugin/timers": trappable,
        "hub:plugin/profile": trappable,
    },
});

pub use self::hub::plugin::types as wit;
