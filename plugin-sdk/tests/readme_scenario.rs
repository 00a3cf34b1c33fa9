//! The scenario of the README's "Writing a scenario" walkthrough, compiled and run, so the README
//! stays true.

use hub_plugin_sdk::blocks::Absence;
use hub_plugin_sdk::time::Millis;
use hub_plugin_sdk::{Action, Context, Description, Error, Event, Plugin, Timer, export_plugin};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    within: Millis, // "48h", "10s" or milliseconds
    #[serde(default = "default_priority")]
    priority: i32,
}
fn default_priority() -> i32 {
    60
}

#[derive(Deserialize, Default)]
struct Profile {
    name: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Shipment {
    order: String,
}

pub struct LateDelivery {
    not_delivered: Absence,
    priority: i32,
}

impl Plugin for LateDelivery {
    type Config = Config;
    fn describe() -> Description {
        Description::new("late-delivery", "0.1.0")
            .subscribe("order.shipped")
            .subscribe("order.delivered")
            .emits("support.proactive_call")
    }
    fn new(config: Config) -> Result<Self, Error> {
        Ok(LateDelivery {
            not_delivered: Absence::new("not-delivered", config.within),
            priority: config.priority,
        })
    }
    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        match event.kind.as_str() {
            "order.shipped" => self.not_delivered.start(cx, &event.payload::<Shipment>()?)?,
            _ => self.not_delivered.cancel(cx), // delivered in time: nothing to do
        }
        Ok(())
    }
    fn on_timer(&self, cx: &mut Context, timer: &Timer) -> Result<(), Error> {
        let shipment: Shipment = timer.payload()?;
        let name = cx.profile::<Profile>()?.unwrap_or_default().name;
        let call = serde_json::json!({ "order": shipment.order, "name": name });
        cx.act(
            Action::new("support.proactive_call", "support")
                .priority(self.priority)
                .with_payload(&call)?,
        );
        Ok(())
    }
}
export_plugin!(LateDelivery);

#[test]
fn a_shipment_not_delivered_in_time_becomes_a_call() {
    use hub_plugin_sdk::testing::TestHub;
    use hub_plugin_sdk::time::HOUR;
    use serde_json::json;

    let mut hub = TestHub::<LateDelivery>::new(json!({"within": "48h"})).expect("config");
    hub.set_profile("c9", &json!({"name": "Nora"})).expect("profile");
    hub.send(hub.event("order.shipped", "c9", &json!({"order": "o-1"})))
        .expect("call");
    assert!(hub.advance(47 * HOUR).expect("advance").is_empty());
    let out = hub.advance(HOUR).expect("advance");
    let call = out[0].as_action().expect("an action");
    assert_eq!(call.name, "support.proactive_call");
    assert_eq!(call.payload::<serde_json::Value>().expect("payload")["name"], "Nora");

    hub.send(hub.event("order.shipped", "c9", &json!({"order": "o-2"})))
        .expect("call");
    hub.send(hub.event("order.delivered", "c9", &json!({"order": "o-2"})))
        .expect("call");
    assert!(hub.advance(49 * HOUR).expect("advance").is_empty(), "delivered in time");
}
