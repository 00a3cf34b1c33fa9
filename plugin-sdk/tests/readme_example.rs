//! The plugin example of the README, compiled and run, so the README stays true.

use hub_plugin_sdk::time::Millis;
use hub_plugin_sdk::{Action, Context, Description, Error, Event, Plugin, Timer, export_plugin};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    window: Millis,
} // "10m", "90s" or milliseconds

struct NoShow {
    window: i64,
}

impl Plugin for NoShow {
    type Config = Config;
    fn describe() -> Description {
        Description::new("no-show", "0.1.0")
            .subscribe("booking.made")
            .subscribe("booking.checked_in")
            .emits("alert.no_show")
    }
    fn new(config: Config) -> Result<Self, Error> {
        Ok(NoShow {
            window: config.window.as_ms(),
        })
    }
    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        match event.kind.as_str() {
            "booking.made" => cx.timers().set_after("no-show", self.window, &event.id)?,
            _ => cx.timers().cancel("no-show"), // checked in: the non-event did not happen
        }
        Ok(())
    }
    fn on_timer(&self, cx: &mut Context, timer: &Timer) -> Result<(), Error> {
        let booking: String = timer.payload()?;
        let payload = std::collections::BTreeMap::from([("booking", booking)]);
        cx.act(
            Action::new("alert.no_show", "alert")
                .priority(50)
                .with_payload(&payload)?,
        );
        Ok(())
    }
}
export_plugin!(NoShow);

#[test]
fn readme_example_works() -> Result<(), Error> {
    let mut hub = hub_plugin_sdk::testing::TestHub::<NoShow>::new(serde_json::json!({"window": "15m"}))?;
    hub.send(hub.event("booking.made", "guest-1", &serde_json::json!({})))?;
    let outputs = hub.advance(15 * hub_plugin_sdk::time::MINUTE)?; // fires due timers
    assert_eq!(outputs[0].as_action().expect("an action").name, "alert.no_show");
    Ok(())
}
