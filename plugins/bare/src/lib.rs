//! A plugin as an outside team might write one in any language: straight against the WIT world,
//! without the SDK. It proposes actions without dedup keys, keeps raw bytes (not MessagePack) as
//! state, and sends empty payloads — what the example plugins never do. For the hub's tests; not
//! an example to follow.
//!
//! | event kind          | what it does                                                          |
//! |---------------------|-----------------------------------------------------------------------|
//! | `bare.offer`        | counts the actor's offers in state `n` (u32 LE), proposes `offer.bare` (no dedup key, empty payload) and emits `bare.counted` with an empty payload |
//! | `bare.fail`         | writes state `n` and sets a timer, then returns an error              |
//! | `bare.trap`         | writes state `n` and sets a timer, then aborts                        |
//! | `bare.big`          | writes state `n`, then emits an event larger than NATS carries        |
//! | `bare.sleep`        | blocks for 150 ms without computing, then emits `bare.awake`          |
//!
//! Its timer `t`, when one is left behind, emits `bare.timer`.

#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use hub::plugin::types::{Action, Emitted};
use hub::plugin::{clock, state, timers};

struct Bare;

/// An empty MessagePack map.
const EMPTY_MAP: [u8; 1] = [0x80];

fn count() -> u32 {
    state::get("n")
        .and_then(|b| b.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .unwrap_or(0)
}

/// The writes a failing call makes before it fails: none of them may stay.
fn write_then_fail() {
    state::set("n", &u32::MAX.to_le_bytes());
    timers::set("t", clock::now() + 50, &[]);
}

fn emit(kind: &str, payload: Vec<u8>) -> Output {
    Output::Emit(Emitted {
        kind: kind.into(),
        actor: None,
        payload,
    })
}

impl Guest for Bare {
    fn describe() -> Description {
        Description {
            name: "bare".into(),
            version: "0.1.0".into(),
            subscribes: vec!["bare.*".into()],
            emits: vec![
                "bare.counted".into(),
                "bare.awake".into(),
                "bare.timer".into(),
                "offer.bare".into(),
            ],
        }
    }

    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn on_event(event: Event) -> Result<Vec<Output>, String> {
        match event.kind.as_str() {
            "bare.offer" => {
                let n = count() + 1;
                state::set("n", &n.to_le_bytes());
                Ok(vec![
                    Output::Action(Action {
                        name: "offer.bare".into(),
                        category: "offer".into(),
                        priority: 1,
                        dedup_key: None,
                        payload: Vec::new(),
                    }),
                    emit("bare.counted", Vec::new()),
                ])
            }
            "bare.fail" => {
                write_then_fail();
                Err("bare refused the event after writing".into())
            }
            "bare.trap" => {
                write_then_fail();
                std::process::abort()
            }
            "bare.big" => {
                write_then_fail();
                // A map with one 2 MiB binary value: {"blob": <bin32>}.
                let mut payload = vec![0x81, 0xa4, b'b', b'l', b'o', b'b', 0xc6];
                let len: u32 = 2 << 20;
                payload.extend_from_slice(&len.to_be_bytes());
                payload.resize(payload.len() + len as usize, 7);
                Ok(vec![emit("bare.huge", payload)])
            }
            "bare.sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(150));
                Ok(vec![emit("bare.awake", EMPTY_MAP.to_vec())])
            }
            _ => Ok(Vec::new()),
        }
    }

    fn on_timer(_timer: Timer) -> Result<Vec<Output>, String> {
        Ok(vec![emit("bare.timer", Vec::new())])
    }
}

export!(Bare);
