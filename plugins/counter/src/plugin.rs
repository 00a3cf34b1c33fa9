// The counter's code, shared by `counter` and `counter-v2` (each defines GENERATION).

use hub_plugin_sdk::{Context, Description, Error, Event, Plugin, export_plugin};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Reported in every output, so a config update is visible.
    label: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Counted {
    pub n: u64,
    pub generation: u32,
    pub label: String,
}

pub struct Counter {
    label: String,
}

impl Plugin for Counter {
    type Config = Config;

    fn describe() -> Description {
        Description::new("counter", format!("{GENERATION}.0.0"))
            .subscribe("count.tick")
            .subscribe("count.relay")
            .emits("counted")
            .emits("count.tick")
    }

    fn new(config: Config) -> Result<Self, Error> {
        Ok(Counter { label: config.label })
    }

    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        if event.kind == "count.relay" {
            // A tick for another actor (`relayed:<actor>`), most likely of another shard: its
            // count proves that events crossing between shards are handled once.
            let empty = std::collections::BTreeMap::<String, u64>::new();
            return cx.emit_for(&format!("relayed:{}", event.actor), "count.tick", &empty);
        }
        let n = cx.state().get::<u64>("n")?.unwrap_or(0) + 1;
        cx.state().set("n", &n)?;
        cx.emit(
            "counted",
            &Counted {
                n,
                generation: GENERATION,
                label: self.label.clone(),
            },
        )
    }
}

export_plugin!(Counter);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::testing::TestHub;
    use serde_json::json;

    #[test]
    fn counts_per_actor_with_generation_and_label() {
        let mut hub = TestHub::<Counter>::new(json!({"label": "x"})).expect("config");
        hub.send(hub.event("count.tick", "a", &json!({}))).expect("call");
        hub.send(hub.event("count.tick", "b", &json!({}))).expect("call");
        let out = hub.send(hub.event("count.tick", "a", &json!({}))).expect("call");
        let counted: Counted = out[0].as_emit().expect("emit").payload().expect("payload");
        assert_eq!(
            counted,
            Counted {
                n: 2,
                generation: GENERATION,
                label: "x".into()
            }
        );
    }

    #[test]
    fn a_relay_ticks_the_relayed_actor() {
        let mut hub = TestHub::<Counter>::new(json!({})).expect("config");
        let out = hub.send(hub.event("count.relay", "a", &json!({}))).expect("call");
        let emitted = out[0].as_emit().expect("emit");
        assert_eq!((emitted.kind.as_str(), emitted.actor.as_deref()), ("count.tick", Some("relayed:a")));
    }
}
