//! Cart abandonment: a `cart.updated` not followed by `checkout.completed` within a window
//! becomes the action `offer.cart_reminder`, carrying the cart's contents.
//!
//! A non-event can only be noticed by time passing, so every cart update (re)sets a durable timer;
//! a checkout, or emptying the cart, cancels it. The timer survives restarts of the hub.
//!
//! Config: `window` (default `"30m"`), `priority` (default 10), `message` (offer text).

use hub_plugin_sdk::time::Millis;
use hub_plugin_sdk::{Action, Context, Description, Error, Event, Plugin, Timer, export_plugin};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct CartItem {
    pub sku: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub price: f64,
    #[serde(default)]
    pub qty: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Cart {
    #[serde(default)]
    pub items: Vec<CartItem>,
    #[serde(default)]
    pub total: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    window: Millis,
    priority: i32,
    message: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: Millis(30 * hub_plugin_sdk::time::MINUTE),
            priority: 10,
            message: "You left something in your cart".into(),
        }
    }
}

/// The action's payload.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Reminder {
    pub message: String,
    pub items: Vec<CartItem>,
    pub total: f64,
    /// When the cart was last updated (ms).
    pub since: i64,
}

pub struct CartAbandonment {
    config: Config,
}

const TIMER: &str = "abandoned";

impl Plugin for CartAbandonment {
    type Config = Config;

    fn describe() -> Description {
        Description::new("cart-abandonment", env!("CARGO_PKG_VERSION"))
            .subscribe("cart.updated")
            .subscribe("checkout.completed")
            .emits("offer.cart_reminder")
    }

    fn new(config: Config) -> Result<Self, Error> {
        if config.window.as_ms() == 0 {
            return Err(Error::msg("window must be longer than 0"));
        }
        Ok(CartAbandonment { config })
    }

    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        match event.kind.as_str() {
            "cart.updated" => {
                let cart: Cart = event.payload()?;
                if cart.items.is_empty() {
                    cx.timers().cancel(TIMER);
                } else {
                    let pending = (cart, event.time);
                    cx.timers().set_after(TIMER, self.config.window.as_ms(), &pending)?;
                }
            }
            "checkout.completed" => cx.timers().cancel(TIMER),
            _ => {}
        }
        Ok(())
    }

    fn on_timer(&self, cx: &mut Context, timer: &Timer) -> Result<(), Error> {
        let (cart, since): (Cart, i64) = timer.payload()?;
        let reminder = Reminder {
            message: self.config.message.clone(),
            items: cart.items,
            total: cart.total,
            since,
        };
        let action = Action::new("offer.cart_reminder", "offer")
            .priority(self.config.priority)
            .dedup_key(format!("cart_reminder:{}:{}", cx.actor(), since))
            .with_payload(&reminder)?;
        cx.act(action);
        Ok(())
    }
}

export_plugin!(CartAbandonment);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::testing::TestHub;
    use hub_plugin_sdk::time::MINUTE;
    use serde_json::json;

    fn cart() -> serde_json::Value {
        json!({"items": [{"sku": "A1", "name": "Shoes", "price": 50.0, "qty": 1}], "total": 50.0})
    }

    #[test]
    fn abandoned_cart_triggers_a_reminder_after_the_window() {
        let mut hub = TestHub::<CartAbandonment>::new(json!({"window": "10m"})).expect("config");
        hub.send(hub.event("cart.updated", "u1", &cart())).expect("call");
        assert!(hub.advance(9 * MINUTE).expect("advance").is_empty());
        let out = hub.advance(MINUTE).expect("advance");
        let action = out[0].as_action().expect("action");
        assert_eq!(action.name, "offer.cart_reminder");
        assert_eq!(action.category, "offer");
        let reminder: Reminder = action.payload().expect("payload");
        assert_eq!(reminder.items[0].sku, "A1");
        assert_eq!(reminder.total, 50.0);
    }

    #[test]
    fn checkout_cancels_the_reminder() {
        let mut hub = TestHub::<CartAbandonment>::new(json!({"window": "10m"})).expect("config");
        hub.send(hub.event("cart.updated", "u1", &cart())).expect("call");
        hub.send(hub.event("checkout.completed", "u1", &json!({"order_id": "o1"})))
            .expect("call");
        assert!(hub.timers("u1").is_empty());
        assert!(hub.advance(60 * MINUTE).expect("advance").is_empty());
    }

    #[test]
    fn each_update_restarts_the_window() {
        let mut hub = TestHub::<CartAbandonment>::new(json!({"window": 600_000})).expect("config");
        hub.send(hub.event("cart.updated", "u1", &cart())).expect("call");
        hub.advance(8 * MINUTE).expect("advance");
        hub.send(hub.event("cart.updated", "u1", &cart())).expect("call");
        assert!(hub.advance(8 * MINUTE).expect("advance").is_empty());
        assert_eq!(hub.advance(2 * MINUTE).expect("advance").len(), 1);
    }

    #[test]
    fn emptied_cart_is_not_abandoned() {
        let mut hub = TestHub::<CartAbandonment>::new(json!({})).expect("config");
        hub.send(hub.event("cart.updated", "u1", &cart())).expect("call");
        hub.send(hub.event("cart.updated", "u1", &json!({"items": [], "total": 0.0})))
            .expect("call");
        assert!(hub.advance(120 * MINUTE).expect("advance").is_empty());
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let err = TestHub::<CartAbandonment>::new(json!({"window": "soon"}))
            .err()
            .expect("refused");
        assert!(err.message().contains("invalid duration"), "{err}");
        let err = TestHub::<CartAbandonment>::new(json!({"windw": "1m"}))
            .err()
            .expect("refused");
        assert!(err.message().contains("unknown field"), "{err}");
    }
}
