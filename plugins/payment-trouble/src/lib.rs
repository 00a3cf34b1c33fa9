//! Payment trouble: `threshold` `payment.failed` events of one customer within a sliding
//! `window` become the high-priority action `support.callback`.
//!
//! The plugin keeps the failure times inside the window in state; once the action fires the
//! window starts afresh, so a customer is not called back for every further failure.
//!
//! Config: `threshold` (default 3), `window` (default `"10m"`), `priority` (default 100).

use hub_plugin_sdk::time::Millis;
use hub_plugin_sdk::{Action, Context, Description, Error, Event, Plugin, export_plugin};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    threshold: u32,
    window: Millis,
    priority: i32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threshold: 3,
            window: Millis(10 * hub_plugin_sdk::time::MINUTE),
            priority: 100,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Failure {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    amount: Option<f64>,
}

/// The action's payload.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Callback {
    pub failures: u32,
    pub window_ms: i64,
    pub last_reason: Option<String>,
    pub last_amount: Option<f64>,
}

pub struct PaymentTrouble {
    config: Config,
}

const FAILURES: &str = "failures";

impl Plugin for PaymentTrouble {
    type Config = Config;

    fn describe() -> Description {
        Description::new("payment-trouble", env!("CARGO_PKG_VERSION"))
            .subscribe("payment.failed")
            .emits("support.callback")
    }

    fn new(config: Config) -> Result<Self, Error> {
        if config.threshold == 0 {
            return Err(Error::msg("threshold must be at least 1"));
        }
        if config.window.as_ms() == 0 {
            return Err(Error::msg("window must be longer than 0"));
        }
        Ok(PaymentTrouble { config })
    }

    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        let failure: Failure = event.payload().unwrap_or_default();
        let mut times: Vec<i64> = cx.state().get(FAILURES)?.unwrap_or_default();
        let oldest = event.time - self.config.window.as_ms();
        times.retain(|t| *t > oldest);
        times.push(event.time);
        if times.len() as u32 >= self.config.threshold {
            let callback = Callback {
                failures: times.len() as u32,
                window_ms: self.config.window.as_ms(),
                last_reason: failure.reason,
                last_amount: failure.amount,
            };
            let action = Action::new("support.callback", "support")
                .priority(self.config.priority)
                .dedup_key(format!("support.callback:{}", cx.actor()))
                .with_payload(&callback)?;
            cx.act(action);
            cx.state().delete(FAILURES);
        } else {
            cx.state().set(FAILURES, &times)?;
        }
        Ok(())
    }
}

export_plugin!(PaymentTrouble);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::testing::TestHub;
    use hub_plugin_sdk::time::MINUTE;
    use serde_json::json;

    fn failed(hub: &TestHub<PaymentTrouble>, actor: &str) -> hub_plugin_sdk::Event {
        hub.event(
            "payment.failed",
            actor,
            &json!({"reason": "card_declined", "amount": 20.0}),
        )
    }

    #[test]
    fn third_failure_in_window_asks_for_a_callback() {
        let mut hub = TestHub::<PaymentTrouble>::new(json!({})).expect("config");
        assert!(hub.send(failed(&hub, "c1")).expect("call").is_empty());
        assert!(hub.send(failed(&hub, "c1")).expect("call").is_empty());
        let out = hub.send(failed(&hub, "c1")).expect("call");
        let action = out[0].as_action().expect("action");
        assert_eq!(action.name, "support.callback");
        assert_eq!(action.category, "support");
        assert_eq!(action.priority, 100);
        let cb: Callback = action.payload().expect("payload");
        assert_eq!(cb.failures, 3);
        assert_eq!(cb.last_reason.as_deref(), Some("card_declined"));
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let mut hub = TestHub::<PaymentTrouble>::new(json!({"window": "5m"})).expect("config");
        hub.send(failed(&hub, "c1")).expect("call");
        hub.send(failed(&hub, "c1")).expect("call");
        hub.advance(6 * MINUTE).expect("advance");
        assert!(hub.send(failed(&hub, "c1")).expect("call").is_empty());
        hub.send(failed(&hub, "c1")).expect("call");
        assert_eq!(hub.send(failed(&hub, "c1")).expect("call").len(), 1);
    }

    #[test]
    fn window_restarts_after_a_callback() {
        let mut hub = TestHub::<PaymentTrouble>::new(json!({"threshold": 2})).expect("config");
        hub.send(failed(&hub, "c1")).expect("call");
        assert_eq!(hub.send(failed(&hub, "c1")).expect("call").len(), 1);
        assert!(hub.send(failed(&hub, "c1")).expect("call").is_empty());
        assert_eq!(hub.send(failed(&hub, "c1")).expect("call").len(), 1);
    }

    #[test]
    fn customers_are_counted_apart() {
        let mut hub = TestHub::<PaymentTrouble>::new(json!({"threshold": 2})).expect("config");
        hub.send(failed(&hub, "c1")).expect("call");
        assert!(hub.send(failed(&hub, "c2")).expect("call").is_empty());
    }

    #[test]
    fn zero_threshold_is_refused() {
        let err = TestHub::<PaymentTrouble>::new(json!({"threshold": 0}))
            .err()
            .expect("refused");
        assert!(err.message().contains("threshold"));
    }
}
