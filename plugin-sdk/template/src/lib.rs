//! {{name}}: a visitor who viewed `threshold` pages and did not sign up within `wait` afterwards
//! gets the offer `offer.welcome`.
//!
//! "Did not sign up" is a non-event: only time passing shows it, so reaching the threshold sets a
//! durable timer, and a sign-up cancels it.
//!
//! Config (all optional): `threshold` (default 3), `wait` (default `"10m"`), `priority` (default 10).

use hub_plugin_sdk::time::Millis;
use hub_plugin_sdk::{Action, Context, Description, Error, Event, Plugin, Timer, export_plugin};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    threshold: u32,
    wait: Millis,
    priority: i32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threshold: 3,
            wait: Millis(10 * hub_plugin_sdk::time::MINUTE),
            priority: 10,
        }
    }
}

/// The offer's payload.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Welcome {
    pub views: u32,
}

pub struct Scenario {
    config: Config,
}

const VIEWS: &str = "views";
const TIMER: &str = "welcome";

impl Plugin for Scenario {
    type Config = Config;

    fn describe() -> Description {
        Description::new("{{name}}", env!("CARGO_PKG_VERSION"))
            .subscribe("page.viewed")
            .subscribe("account.created")
            .emits("offer.welcome")
    }

    fn new(config: Config) -> Result<Self, Error> {
        if config.threshold == 0 {
            return Err(Error::msg("threshold must be at least 1"));
        }
        Ok(Scenario { config })
    }

    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        if event.kind == "account.created" {
            cx.timers().cancel(TIMER);
            cx.state().delete(VIEWS);
            return Ok(());
        }
        let views: u32 = cx.state().get(VIEWS)?.unwrap_or(0) + 1;
        cx.state().set(VIEWS, &views)?;
        if views == self.config.threshold {
            cx.timers()
                .set_at(TIMER, event.time + self.config.wait.as_ms(), &Welcome { views })?;
        }
        Ok(())
    }

    fn on_timer(&self, cx: &mut Context, timer: &Timer) -> Result<(), Error> {
        let welcome: Welcome = timer.payload()?;
        cx.act(
            Action::new("offer.welcome", "offer")
                .priority(self.config.priority)
                .dedup_key("welcome")
                .with_payload(&welcome)?,
        );
        Ok(())
    }
}

export_plugin!(Scenario);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::testing::TestHub;
    use hub_plugin_sdk::time::MINUTE;
    use serde_json::json;

    fn view(hub: &mut TestHub<Scenario>, actor: &str) {
        let out = hub.send(hub.event("page.viewed", actor, &json!({"page": "/"}))).unwrap();
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_visitor_who_does_not_sign_up_gets_the_offer() {
        let mut hub = TestHub::<Scenario>::new(json!({})).unwrap();
        for _ in 0..3 {
            view(&mut hub, "alice");
        }
        assert!(hub.advance(10 * MINUTE - 1).unwrap().is_empty());
        let out = hub.advance(1).unwrap();
        let offer = out[0].as_action().expect("an action");
        assert_eq!(offer.name, "offer.welcome");
        assert_eq!(offer.payload::<Welcome>().unwrap(), Welcome { views: 3 });
    }

    #[test]
    fn signing_up_cancels_the_offer() {
        let mut hub = TestHub::<Scenario>::new(json!({"threshold": 2})).unwrap();
        view(&mut hub, "bob");
        view(&mut hub, "bob");
        hub.send(hub.event("account.created", "bob", &json!({}))).unwrap();
        assert!(hub.advance(60 * MINUTE).unwrap().is_empty());
    }

    #[test]
    fn a_threshold_of_zero_is_refused() {
        assert!(TestHub::<Scenario>::new(json!({"threshold": 0})).is_err());
    }
}
