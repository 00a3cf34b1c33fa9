//! The wasm side of [`export_plugin!`](crate::export_plugin): WIT bindings and the glue between
//! them and a [`Plugin`]. The plugin value lives in one slot per instance; the hub never calls an
//! instance re-entrantly, so a `RefCell` is enough.

use crate::types::{Action, Delivery, Emitted, Output};
use crate::{Context, Plugin, decode_config};
use std::any::Any;
use std::cell::RefCell;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "hub_plugin_sdk::guest::bindings",
    });
}

use bindings::hub::plugin::types as wit;

thread_local! {
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

pub fn describe<P: Plugin>() -> wit::Description {
    let d = P::describe();
    wit::Description {
        name: d.name,
        version: d.version,
        subscribes: d.subscribes,
        emits: d.emits,
    }
}

pub fn init<P: Plugin>(config: &str) -> Result<(), String> {
    let config = decode_config::<P::Config>(config).map_err(|e| e.to_string())?;
    let plugin = P::new(config).map_err(|e| e.to_string())?;
    INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(plugin)));
    Ok(())
}

fn with_plugin<P: Plugin>(
    actor: String,
    call: impl FnOnce(&P, &mut Context) -> Result<(), crate::Error>,
) -> Result<Vec<wit::Output>, String> {
    INSTANCE.with(|slot| {
        let slot = slot.borrow();
        let plugin = slot
            .as_ref()
            .and_then(|p| p.downcast_ref::<P>())
            .ok_or_else(|| "plugin called before init".to_string())?;
        let mut cx = Context::new(actor);
        call(plugin, &mut cx).map_err(|e| e.to_string())?;
        Ok(cx.into_outputs().into_iter().map(to_wit).collect())
    })
}

pub fn on_event<P: Plugin>(event: wit::Event) -> Result<Vec<wit::Output>, String> {
    let event = crate::Event {
        id: event.id,
        kind: event.kind,
        actor: event.actor,
        time: event.time,
        source: event.source,
        payload: event.payload,
    };
    with_plugin::<P>(event.actor.clone(), |p, cx| p.on_event(cx, &event))
}

pub fn on_timer<P: Plugin>(timer: wit::Timer) -> Result<Vec<wit::Output>, String> {
    let timer = crate::Timer {
        id: timer.id,
        actor: timer.actor,
        due: timer.due,
        payload: timer.payload,
    };
    with_plugin::<P>(timer.actor.clone(), |p, cx| p.on_timer(cx, &timer))
}

fn to_wit(output: Output) -> wit::Output {
    match output {
        Output::Emit(Emitted { kind, actor, payload }) => wit::Output::Emit(wit::Emitted { kind, actor, payload }),
        Output::Action(Action {
            name,
            category,
            priority,
            dedup_key,
            payload,
        }) => wit::Output::Action(wit::Action {
            name,
            category,
            priority,
            dedup_key,
            payload,
        }),
        Output::Deliver(Delivery { channel, target, body }) => {
            wit::Output::Deliver(wit::Delivery { channel, target, body })
        }
    }
}
