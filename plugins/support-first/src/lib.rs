//! Support first: `threshold` `payment.failed` events of one customer within a sliding `window`
//! open a support case. The plugin emits the event `support.opened` (which marketing plugins such
//! as `marketing-cart` listen to, holding back their offers) and proposes the high-priority action
//! `support.callback`, both carrying `{"failures", "opened_at"}`.
//!
//! One case per customer at a time: while it is open further failures are ignored (they are not
//! counted either); `support.closed` closes it, and failures counted afresh may open a new one.
//!
//! Config: `threshold` (default 3), `window` (default `"10m"`), `priority` (default 100).

use hub_plugin_sdk::blocks::SlidingWindow;
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

/// An open case: the payload of `support.opened` and of the action `support.callback`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Case {
    /// Failures within the window when the case opened.
    pub failures: u64,
    /// Time of the failure that opened it (ms).
    pub opened_at: i64,
}

/// State key of the open case.
const CASE: &str = "case";

pub struct SupportFirst {
    threshold: u64,
    failures: SlidingWindow,
    priority: i32,
}

impl Plugin for SupportFirst {
    type Config = Config;

    fn describe() -> Description {
        Description::new("support-first", env!("CARGO_PKG_VERSION"))
            .subscribe("payment.failed")
            .subscribe("support.closed")
            .emits("support.opened")
            .emits("support.callback")
    }

    fn new(config: Config) -> Result<Self, Error> {
        if config.threshold == 0 {
            return Err(Error::msg("threshold must be at least 1"));
        }
        if config.window.as_ms() == 0 {
            return Err(Error::msg("window must be longer than 0"));
        }
        Ok(SupportFirst {
            threshold: u64::from(config.threshold),
            failures: SlidingWindow::new("failures", config.window),
            priority: config.priority,
        })
    }

    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        match event.kind.as_str() {
            "payment.failed" => {
                if cx.state().get::<Case>(CASE)?.is_some() {
                    return Ok(());
                }
                let failures = self.failures.add(cx, event.time, 1.0)?.count;
                if failures >= self.threshold {
                    let case = Case {
                        failures,
                        opened_at: event.time,
                    };
                    cx.emit("support.opened", &case)?;
                    let action = Action::new("support.callback", "support")
                        .priority(self.priority)
                        .dedup_key(format!("support.callback:{}", cx.actor()))
                        .with_payload(&case)?;
                    cx.act(action);
                    cx.state().set(CASE, &case)?;
                    self.failures.clear(cx);
                }
            }
            "support.closed" => cx.state().delete(CASE),
            _ => {}
        }
        Ok(())
    }
}

export_plugin!(SupportFirst);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::Output;
    use hub_plugin_sdk::testing::{EPOCH, TestHub};
    use hub_plugin_sdk::time::MINUTE;
    use serde_json::json;

    fn hub(config: serde_json::Value) -> TestHub<SupportFirst> {
        TestHub::<SupportFirst>::new(config).expect("config")
    }

    fn fail(hub: &mut TestHub<SupportFirst>, actor: &str) -> Vec<Output> {
        let event = hub.event(
            "payment.failed",
            actor,
            &json!({"reason": "card_declined", "amount": 20.0}),
        );
        hub.send(event).expect("call")
    }

    fn close(hub: &mut TestHub<SupportFirst>, actor: &str) {
        let out = hub.send(hub.event("support.closed", actor, &json!({}))).expect("call");
        assert!(out.is_empty(), "{out:?}");
    }

    /// The case opened by `out`: exactly one `support.opened` and one `support.callback`.
    fn opened(out: &[Output]) -> Case {
        assert_eq!(out.len(), 2, "{out:?}");
        let emitted = out[0].as_emit().expect("emit");
        assert_eq!(emitted.kind, "support.opened");
        let action = out[1].as_action().expect("action");
        assert_eq!(action.name, "support.callback");
        assert_eq!(action.category, "support");
        let case: Case = emitted.payload().expect("payload");
        assert_eq!(action.payload::<Case>().expect("payload"), case);
        case
    }

    #[test]
    fn third_failure_within_the_window_opens_one_case() {
        let mut hub = hub(json!({}));
        assert!(fail(&mut hub, "c1").is_empty());
        hub.advance(4 * MINUTE).expect("advance");
        assert!(fail(&mut hub, "c1").is_empty());
        hub.advance(5 * MINUTE).expect("advance");
        let out = fail(&mut hub, "c1");
        let case = opened(&out);
        assert_eq!(
            case,
            Case {
                failures: 3,
                opened_at: EPOCH + 9 * MINUTE
            }
        );
        let action = out[1].as_action().expect("action");
        assert_eq!(action.priority, 100);
        assert_eq!(action.dedup_key.as_deref(), Some("support.callback:c1"));
        assert_eq!(hub.state::<Case>("c1", CASE).expect("state"), Some(case));
        assert_eq!(hub.state::<serde_json::Value>("c1", "failures").expect("state"), None);
    }

    #[test]
    fn no_second_case_while_one_is_open() {
        let mut hub = hub(json!({"threshold": 2, "priority": 50}));
        fail(&mut hub, "c1");
        let out = fail(&mut hub, "c1");
        assert_eq!(opened(&out).failures, 2);
        assert_eq!(out[1].as_action().expect("action").priority, 50);
        for _ in 0..5 {
            assert!(fail(&mut hub, "c1").is_empty());
        }
        // Customers are counted apart.
        assert!(fail(&mut hub, "c2").is_empty());
        opened(&fail(&mut hub, "c2"));
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let mut hub = hub(json!({"window": "5m"}));
        fail(&mut hub, "c1");
        fail(&mut hub, "c1");
        hub.advance(5 * MINUTE).expect("advance");
        assert!(fail(&mut hub, "c1").is_empty(), "the first two are out of the window");
        assert!(fail(&mut hub, "c1").is_empty());
        assert_eq!(opened(&fail(&mut hub, "c1")).failures, 3);
    }

    #[test]
    fn after_support_closed_a_new_case_can_open() {
        let mut hub = hub(json!({}));
        fail(&mut hub, "c1");
        fail(&mut hub, "c1");
        opened(&fail(&mut hub, "c1"));
        assert!(fail(&mut hub, "c1").is_empty());
        close(&mut hub, "c1");
        assert_eq!(hub.state::<Case>("c1", CASE).expect("state"), None);
        hub.advance(MINUTE).expect("advance");
        assert!(fail(&mut hub, "c1").is_empty(), "counting starts afresh");
        assert!(fail(&mut hub, "c1").is_empty());
        let case = opened(&fail(&mut hub, "c1"));
        assert_eq!(case.opened_at, EPOCH + MINUTE);
        // Closing with no case open is harmless.
        close(&mut hub, "c2");
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let err = TestHub::<SupportFirst>::new(json!({"threshold": 0}))
            .err()
            .expect("refused");
        assert!(err.message().contains("threshold"), "{err}");
        let err = TestHub::<SupportFirst>::new(json!({"window": "0s"}))
            .err()
            .expect("refused");
        assert!(err.message().contains("window"), "{err}");
        let err = TestHub::<SupportFirst>::new(json!({"treshold": 2}))
            .err()
            .expect("refused");
        assert!(err.message().contains("unknown field"), "{err}");
    }
}
