//! Real-time marketing: a `cart.updated` not followed by `checkout.completed` within `window`
//! becomes the action `offer.cart_reminder`, addressed to the customer by the name in their
//! profile, unless a support case of that customer is open.
//!
//! The same module is meant to be deployed under several names with different configs, each
//! serving one part of the customers by the profile's `segment`: e.g. `vip-offers` with
//! `{"segment": "vip", "window": "5m"}` and `offers` with `{"skip_segment": "vip", "window": "30m"}`.
//! Scope is checked at every cart update; a deployment whose customer left its segment cancels
//! its pending offer, so the other deployment alone makes the next one and nobody is offered twice.
//!
//! While a support case is open (`support.opened` seen, `support.closed` not yet) an offer that
//! comes due is held back: instead of the action the plugin emits `offer.held` with the cart, so a
//! customer with payment trouble is not pestered with marketing. Once the case is closed, the next
//! abandoned cart is offered again.
//!
//! Config (all optional): `window` (default `"30m"`), `segment` or `skip_segment` (not both),
//! `message` (default `"Hi {name}, your cart is waiting for you"`, `{name}` being the profile's
//! `name` or "there"), `priority` (default 10).

use hub_plugin_sdk::blocks::Absence;
use hub_plugin_sdk::time::Millis;
use hub_plugin_sdk::{Action, Context, Description, Error, Event, Plugin, Timer, export_plugin};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    window: Millis,
    segment: Option<String>,
    skip_segment: Option<String>,
    message: String,
    priority: i32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: Millis(30 * hub_plugin_sdk::time::MINUTE),
            segment: None,
            skip_segment: None,
            message: "Hi {name}, your cart is waiting for you".into(),
            priority: 10,
        }
    }
}

/// The part of the actor's profile this plugin reads; other fields are ignored.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Profile {
    pub name: Option<String>,
    pub segment: Option<String>,
}

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

/// Payload of `cart.updated`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Cart {
    #[serde(default)]
    pub items: Vec<CartItem>,
    #[serde(default)]
    pub total: f64,
}

/// Payload of the action `offer.cart_reminder`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Offer {
    pub message: String,
    pub items: Vec<CartItem>,
    pub total: f64,
    /// The customer's segment when the offer was made.
    pub segment: Option<String>,
}

/// Payload of the event `offer.held`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Held {
    pub reason: String,
    pub items: Vec<CartItem>,
    pub total: f64,
}

/// State key: time of the `support.opened` of the case still open.
const SUPPORT_OPEN: &str = "support_open";

/// Who a deployment serves, by profile segment.
enum Scope {
    All,
    Only(String),
    Except(String),
}

impl Scope {
    fn contains(&self, segment: Option<&str>) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(wanted) => segment == Some(wanted.as_str()),
            Scope::Except(skipped) => segment != Some(skipped.as_str()),
        }
    }
}

pub struct MarketingCart {
    scope: Scope,
    offer: Absence,
    message: String,
    priority: i32,
}

impl MarketingCart {
    fn render(&self, name: Option<&str>) -> String {
        self.message.replace("{name}", name.unwrap_or("there"))
    }
}

impl Plugin for MarketingCart {
    type Config = Config;

    fn describe() -> Description {
        Description::new("marketing-cart", env!("CARGO_PKG_VERSION"))
            .subscribe("cart.updated")
            .subscribe("checkout.completed")
            .subscribe("support.opened")
            .subscribe("support.closed")
            .emits("offer.cart_reminder")
            .emits("offer.held")
    }

    fn new(config: Config) -> Result<Self, Error> {
        if config.window.as_ms() == 0 {
            return Err(Error::msg("window must be longer than 0"));
        }
        let scope = match (config.segment, config.skip_segment) {
            (Some(_), Some(_)) => {
                return Err(Error::msg(
                    "set either segment (only that segment) or skip_segment (all but that segment), not both",
                ));
            }
            (Some(segment), None) => Scope::Only(segment),
            (None, Some(skipped)) => Scope::Except(skipped),
            (None, None) => Scope::All,
        };
        Ok(MarketingCart {
            scope,
            offer: Absence::new("offer", config.window),
            message: config.message,
            priority: config.priority,
        })
    }

    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        match event.kind.as_str() {
            "cart.updated" => {
                let profile = cx.profile::<Profile>()?.unwrap_or_default();
                if !self.scope.contains(profile.segment.as_deref()) {
                    // An offer can only be pending if the customer was in scope at an earlier
                    // update: their segment changed, and the deployment now serving them makes it.
                    self.offer.cancel(cx);
                    return Ok(());
                }
                let cart: Cart = event.payload()?;
                if cart.items.is_empty() {
                    self.offer.cancel(cx);
                } else {
                    self.offer.start(cx, &cart)?;
                }
            }
            "checkout.completed" => self.offer.cancel(cx),
            "support.opened" => cx.state().set(SUPPORT_OPEN, &event.time)?,
            "support.closed" => cx.state().delete(SUPPORT_OPEN),
            _ => {}
        }
        Ok(())
    }

    fn on_timer(&self, cx: &mut Context, timer: &Timer) -> Result<(), Error> {
        if !self.offer.is(timer) {
            return Ok(());
        }
        let cart: Cart = timer.payload()?;
        if cx.state().get::<i64>(SUPPORT_OPEN)?.is_some() {
            let held = Held {
                reason: "support case open".into(),
                items: cart.items,
                total: cart.total,
            };
            return cx.emit("offer.held", &held);
        }
        let profile = cx.profile::<Profile>()?.unwrap_or_default();
        let offer = Offer {
            message: self.render(profile.name.as_deref()),
            items: cart.items,
            total: cart.total,
            segment: profile.segment,
        };
        let action = Action::new("offer.cart_reminder", "offer")
            .priority(self.priority)
            .dedup_key(format!("offer.cart_reminder:{}", cx.actor()))
            .with_payload(&offer)?;
        cx.act(action);
        Ok(())
    }
}

export_plugin!(MarketingCart);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::Output;
    use hub_plugin_sdk::testing::TestHub;
    use hub_plugin_sdk::time::MINUTE;
    use serde_json::json;

    fn cart() -> serde_json::Value {
        json!({"items": [{"sku": "A1", "name": "Shoes", "price": 50.0, "qty": 1}], "total": 50.0})
    }

    fn hub(config: serde_json::Value) -> TestHub<MarketingCart> {
        TestHub::<MarketingCart>::new(config).expect("config")
    }

    fn update(hub: &mut TestHub<MarketingCart>, actor: &str, cart: serde_json::Value) {
        let out = hub.send(hub.event("cart.updated", actor, &cart)).expect("call");
        assert!(out.is_empty(), "{out:?}");
    }

    fn notify(hub: &mut TestHub<MarketingCart>, kind: &str, actor: &str) {
        let out = hub.send(hub.event(kind, actor, &json!({}))).expect("call");
        assert!(out.is_empty(), "{out:?}");
    }

    /// The single offer among `out`.
    fn offered(out: &[Output]) -> (Action, Offer) {
        assert_eq!(out.len(), 1, "{out:?}");
        let action = out[0].as_action().expect("action").clone();
        let offer = action.payload().expect("payload");
        (action, offer)
    }

    #[test]
    fn offer_greets_the_customer_by_the_name_in_the_profile() {
        let mut hub = hub(json!({"window": "10m"}));
        hub.set_profile(
            "u1",
            &json!({"name": "Ada", "segment": "vip", "email": "ada@example.com"}),
        )
        .expect("profile");
        update(&mut hub, "u1", cart());
        let (action, offer) = offered(&hub.advance(10 * MINUTE).expect("advance"));
        assert_eq!(action.name, "offer.cart_reminder");
        assert_eq!(action.category, "offer");
        assert_eq!(action.priority, 10);
        assert_eq!(action.dedup_key.as_deref(), Some("offer.cart_reminder:u1"));
        assert_eq!(offer.message, "Hi Ada, your cart is waiting for you");
        assert_eq!(offer.items[0].sku, "A1");
        assert_eq!(offer.total, 50.0);
        assert_eq!(offer.segment.as_deref(), Some("vip"));
    }

    #[test]
    fn without_a_name_the_offer_says_there() {
        let mut hub = hub(json!({"message": "{name}, 10% off for you", "priority": 7}));
        update(&mut hub, "u1", cart());
        let (action, offer) = offered(&hub.advance(30 * MINUTE).expect("advance"));
        assert_eq!(action.priority, 7);
        assert_eq!(offer.message, "there, 10% off for you");
        assert_eq!(offer.segment, None);

        hub.set_profile("u2", &json!({"segment": "regular"})).expect("profile");
        update(&mut hub, "u2", cart());
        let (_, offer) = offered(&hub.advance(30 * MINUTE).expect("advance"));
        assert_eq!(offer.message, "there, 10% off for you");
        assert_eq!(offer.segment.as_deref(), Some("regular"));
    }

    #[test]
    fn segment_deployment_serves_only_its_segment() {
        let mut hub = hub(json!({"segment": "vip", "window": "5m"}));
        hub.set_profile("vip", &json!({"name": "Vera", "segment": "vip"}))
            .expect("profile");
        hub.set_profile("reg", &json!({"name": "Rob", "segment": "regular"}))
            .expect("profile");
        update(&mut hub, "vip", cart());
        update(&mut hub, "reg", cart());
        update(&mut hub, "anon", cart());
        assert!(hub.timers("reg").is_empty());
        assert!(hub.timers("anon").is_empty());
        let (action, offer) = offered(&hub.advance(5 * MINUTE).expect("advance"));
        assert_eq!(action.dedup_key.as_deref(), Some("offer.cart_reminder:vip"));
        assert_eq!(offer.message, "Hi Vera, your cart is waiting for you");
    }

    #[test]
    fn skip_segment_deployment_serves_everyone_else() {
        let mut hub = hub(json!({"skip_segment": "vip"}));
        hub.set_profile("vip", &json!({"name": "Vera", "segment": "vip"}))
            .expect("profile");
        hub.set_profile("reg", &json!({"name": "Rob", "segment": "regular"}))
            .expect("profile");
        update(&mut hub, "vip", cart());
        update(&mut hub, "reg", cart());
        update(&mut hub, "anon", cart());
        assert!(hub.timers("vip").is_empty());
        let out = hub.advance(30 * MINUTE).expect("advance");
        let mut keys: Vec<_> = out
            .iter()
            .map(|o| o.as_action().expect("action").dedup_key.clone().expect("key"))
            .collect();
        keys.sort();
        assert_eq!(keys, ["offer.cart_reminder:anon", "offer.cart_reminder:reg"]);
    }

    #[test]
    fn leaving_the_segment_cancels_the_pending_offer() {
        let mut hub = hub(json!({"segment": "vip"}));
        hub.set_profile("u1", &json!({"segment": "vip"})).expect("profile");
        update(&mut hub, "u1", cart());
        assert_eq!(hub.timers("u1").len(), 1);
        hub.set_profile("u1", &json!({"segment": "regular"})).expect("profile");
        update(&mut hub, "u1", cart());
        assert!(hub.timers("u1").is_empty());
        assert!(hub.advance(60 * MINUTE).expect("advance").is_empty());
    }

    #[test]
    fn the_window_is_respected() {
        let mut hub = hub(json!({"window": "10m"}));
        update(&mut hub, "u1", cart());
        assert!(hub.advance(10 * MINUTE - 1).expect("advance").is_empty());
        offered(&hub.advance(1).expect("advance"));
        // Each update restarts the window.
        update(&mut hub, "u1", cart());
        hub.advance(8 * MINUTE).expect("advance");
        update(&mut hub, "u1", cart());
        assert!(hub.advance(8 * MINUTE).expect("advance").is_empty());
        offered(&hub.advance(2 * MINUTE).expect("advance"));
    }

    #[test]
    fn checkout_or_an_emptied_cart_cancels_the_offer() {
        let mut hub = hub(json!({}));
        update(&mut hub, "u1", cart());
        notify(&mut hub, "checkout.completed", "u1");
        assert!(hub.timers("u1").is_empty());
        update(&mut hub, "u2", cart());
        update(&mut hub, "u2", json!({"items": [], "total": 0.0}));
        assert!(hub.timers("u2").is_empty());
        assert!(hub.advance(120 * MINUTE).expect("advance").is_empty());
    }

    #[test]
    fn an_open_support_case_holds_the_offer_back_until_closed() {
        let mut hub = hub(json!({"window": "10m"}));
        hub.set_profile("u1", &json!({"name": "Ada"})).expect("profile");
        notify(&mut hub, "support.opened", "u1");
        assert_eq!(
            hub.state::<i64>("u1", SUPPORT_OPEN).expect("state"),
            Some(hub_plugin_sdk::testing::EPOCH)
        );
        update(&mut hub, "u1", cart());
        let out = hub.advance(10 * MINUTE).expect("advance");
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].as_action().is_none(), "no offer while the case is open");
        let emitted = out[0].as_emit().expect("emit");
        assert_eq!(emitted.kind, "offer.held");
        let held: Held = emitted.payload().expect("payload");
        assert_eq!(held.reason, "support case open");
        assert_eq!(held.items[0].sku, "A1");
        assert_eq!(held.total, 50.0);
        // Other customers are not affected.
        update(&mut hub, "u2", cart());
        offered(&hub.advance(10 * MINUTE).expect("advance"));

        notify(&mut hub, "support.closed", "u1");
        assert_eq!(hub.state::<i64>("u1", SUPPORT_OPEN).expect("state"), None);
        update(&mut hub, "u1", cart());
        let (_, offer) = offered(&hub.advance(10 * MINUTE).expect("advance"));
        assert_eq!(offer.message, "Hi Ada, your cart is waiting for you");
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let err = TestHub::<MarketingCart>::new(json!({"segment": "vip", "skip_segment": "vip"}))
            .err()
            .expect("refused");
        assert!(err.message().contains("not both"), "{err}");
        let err = TestHub::<MarketingCart>::new(json!({"window": 0}))
            .err()
            .expect("refused");
        assert!(err.message().contains("window"), "{err}");
        let err = TestHub::<MarketingCart>::new(json!({"segmnt": "vip"}))
            .err()
            .expect("refused");
        assert!(err.message().contains("unknown field"), "{err}");
    }
}
