//! A misbehaving plugin, for testing the hub's sandbox: it is not an example to follow.
//!
//! | event kind     | what it does                               |
//! |----------------|--------------------------------------------|
//! | `chaos.loop`   | loops forever (the epoch deadline stops it) |
//! | `chaos.alloc`  | allocates without bound (the memory cap)    |
//! | `chaos.panic`  | panics                                      |
//! | `chaos.error`  | returns an error                            |
//! | `chaos.echo`   | emits `chaos.echo` again: an endless chain  |
//! | `chaos.ping`   | emits `chaos.pong`: proof it still works    |
//!
//! With the config `{"panic_in_init": true}`, `init` panics (an upload that traps at init).

use hub_plugin_sdk::{Context, Description, Error, Event, Plugin, export_plugin};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Config {
    panic_in_init: bool,
}

pub struct Chaos;

impl Plugin for Chaos {
    type Config = Config;

    fn describe() -> Description {
        Description::new("chaos", env!("CARGO_PKG_VERSION"))
            .subscribe("chaos.*")
            .emits("chaos.pong")
            .emits("chaos.echo")
    }

    fn new(config: Config) -> Result<Self, Error> {
        if config.panic_in_init {
            panic!("chaos plugin panicked in init on purpose");
        }
        Ok(Chaos)
    }

    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        match event.kind.as_str() {
            "chaos.loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "chaos.alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "chaos.panic" => panic!("chaos plugin panicked on purpose for event {}", event.id),
            "chaos.error" => Err(Error::msg("chaos plugin refused the event")),
            "chaos.ping" => cx.emit("chaos.pong", &serde_json_free_map(&event.id)),
            "chaos.echo" => cx.emit("chaos.echo", &serde_json_free_map(&event.id)),
            _ => Ok(()),
        }
    }
}

fn serde_json_free_map(id: &str) -> std::collections::BTreeMap<&'static str, &str> {
    std::collections::BTreeMap::from([("ping", id)])
}

export_plugin!(Chaos);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::testing::TestHub;
    use serde_json::json;

    #[test]
    fn ping_answers_and_error_is_reported() {
        let mut hub = TestHub::<Chaos>::new(json!({})).expect("config");
        let out = hub.send(hub.event("chaos.ping", "a", &json!({}))).expect("call");
        assert_eq!(out[0].as_emit().expect("emit").kind, "chaos.pong");
        let err = hub
            .send(hub.event("chaos.error", "a", &json!({})))
            .expect_err("refused");
        assert!(err.message().contains("refused"));
    }
}
