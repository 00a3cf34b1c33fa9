//! Customer creation: a legacy database writes a new customer as three rows — customer, address,
//! account — whose change events (`db.customer`, `db.address`, `db.account`, keyed by the
//! customer id) arrive in any order. When all three are there, one business event
//! `customer.created` carries them together; if one is still missing after `window`
//! (default 10 minutes), `customer.incomplete` says which.
//!
//! Once created, later row changes of that customer are not a creation and are ignored here.

use hub_plugin_sdk::blocks::Absence;
use hub_plugin_sdk::time::Millis;
use hub_plugin_sdk::{Context, Description, Error, Event, Plugin, Timer, export_plugin};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    window: Millis,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: Millis(10 * hub_plugin_sdk::time::MINUTE),
        }
    }
}

/// The rows seen so far.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Parts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Value>,
}

impl Parts {
    fn missing(&self) -> Vec<&'static str> {
        [
            ("customer", self.customer.is_none()),
            ("address", self.address.is_none()),
            ("account", self.account.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect()
    }
}

/// Payload of `customer.incomplete`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Incomplete {
    pub missing: Vec<String>,
    pub parts: Parts,
}

const PARTS: &str = "parts";
const CREATED: &str = "created";

pub struct CustomerCreation {
    incomplete: Absence,
}

impl Plugin for CustomerCreation {
    type Config = Config;

    fn describe() -> Description {
        Description::new("customer-creation", env!("CARGO_PKG_VERSION"))
            .subscribe("db.customer")
            .subscribe("db.address")
            .subscribe("db.account")
            .emits("customer.created")
            .emits("customer.incomplete")
    }

    fn new(config: Config) -> Result<Self, Error> {
        if config.window.as_ms() == 0 {
            return Err(Error::msg("window must be longer than 0"));
        }
        Ok(CustomerCreation {
            incomplete: Absence::new("incomplete", config.window),
        })
    }

    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        if cx.state().get::<i64>(CREATED)?.is_some() {
            return Ok(());
        }
        let row: Value = event.payload()?;
        let mut parts: Parts = cx.state().get(PARTS)?.unwrap_or_default();
        let first = parts.missing().len() == 3;
        match event.kind.as_str() {
            "db.customer" => parts.customer = Some(row),
            "db.address" => parts.address = Some(row),
            "db.account" => parts.account = Some(row),
            _ => return Ok(()),
        }
        if parts.missing().is_empty() {
            cx.emit("customer.created", &parts)?;
            cx.state().delete(PARTS);
            cx.state().set(CREATED, &event.time)?;
            self.incomplete.cancel(cx);
            return Ok(());
        }
        if first {
            self.incomplete.start(cx, &())?;
        }
        cx.state().set(PARTS, &parts)
    }

    fn on_timer(&self, cx: &mut Context, timer: &Timer) -> Result<(), Error> {
        if !self.incomplete.is(timer) {
            return Ok(());
        }
        let parts: Parts = cx.state().get(PARTS)?.unwrap_or_default();
        let missing = parts.missing().into_iter().map(str::to_owned).collect();
        cx.emit("customer.incomplete", &Incomplete { missing, parts })?;
        cx.state().delete(PARTS);
        Ok(())
    }
}

export_plugin!(CustomerCreation);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::testing::TestHub;
    use hub_plugin_sdk::time::MINUTE;
    use serde_json::json;

    fn hub() -> TestHub<CustomerCreation> {
        TestHub::new(json!({"window": "5m"})).expect("config")
    }

    #[test]
    fn three_rows_in_any_order_make_one_customer() {
        let mut hub = hub();
        assert!(
            hub.send(hub.event("db.account", "c1", &json!({"iban": "X"})))
                .expect("call")
                .is_empty()
        );
        assert!(
            hub.send(hub.event("db.customer", "c1", &json!({"name": "Ann"})))
                .expect("call")
                .is_empty()
        );
        let out = hub
            .send(hub.event("db.address", "c1", &json!({"city": "Oslo"})))
            .expect("call");
        let created = out[0].as_emit().expect("emit");
        assert_eq!(created.kind, "customer.created");
        let parts: Parts = created.payload().expect("payload");
        assert_eq!(parts.customer, Some(json!({"name": "Ann"})));
        assert_eq!(parts.account, Some(json!({"iban": "X"})));
        assert!(
            hub.advance(10 * MINUTE).expect("advance").is_empty(),
            "no incomplete after creation"
        );
        assert!(
            hub.send(hub.event("db.address", "c1", &json!({"city": "Bergen"})))
                .expect("call")
                .is_empty()
        );
    }

    #[test]
    fn a_missing_row_makes_the_customer_incomplete_after_the_window() {
        let mut hub = hub();
        hub.send(hub.event("db.customer", "c2", &json!({"name": "Bo"})))
            .expect("call");
        hub.advance(2 * MINUTE).expect("advance");
        hub.send(hub.event("db.account", "c2", &json!({"iban": "Y"})))
            .expect("call");
        assert!(
            hub.advance(2 * MINUTE).expect("advance").is_empty(),
            "the window runs from the first row"
        );
        let out = hub.advance(MINUTE).expect("advance");
        let event = out[0].as_emit().expect("emit");
        assert_eq!(event.kind, "customer.incomplete");
        let incomplete: Incomplete = event.payload().expect("payload");
        assert_eq!(incomplete.missing, vec!["address".to_string()]);
        assert_eq!(incomplete.parts.customer, Some(json!({"name": "Bo"})));
    }
}
