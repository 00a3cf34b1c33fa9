//! What a call may return. Outputs are checked at the runtime boundary, before the call's
//! writes take effect: a call with an output the hub cannot route or publish (an invalid kind,
//! name, channel or actor, or one larger than NATS carries) fails as a whole as
//! `invalid_output`, its input goes to the dead letters with the reason, and nothing it wrote
//! stays. Without this an oversized event vanished at publish time while its state change stayed.

use super::{CallError, Output};
use crate::config::PluginLimits;
use crate::event::{ACTION_KIND_PREFIX, MsgpackAsJson, check_actor, check_kind, is_subject_safe};

/// JSON of a MessagePack value is at most this many times longer (a control character in a
/// string: one byte, six characters `\u0000`); below that bound no exact count is needed.
const JSON_EXPANSION: usize = 6;
/// Room for the envelope's fields and punctuation around the payload.
const ENVELOPE_OVERHEAD: usize = 512;

/// Check every output of one call; the error names the first one that cannot be taken.
pub fn check(outputs: &[Output], delivering: bool, limits: &PluginLimits) -> Result<(), CallError> {
    for (index, output) in outputs.iter().enumerate() {
        check_one(output, delivering, limits.max_output_bytes)
            .map_err(|why| CallError::Output(format!("output {index}: {why}")))?;
    }
    Ok(())
}

fn check_one(output: &Output, delivering: bool, max: usize) -> Result<(), String> {
    match output {
        Output::Emit { kind, actor, payload } => {
            check_kind(kind).map_err(|e| format!("emitted {e}"))?;
            if kind.starts_with(ACTION_KIND_PREFIX) {
                return Err(format!(
                    "emitted kind {kind:?} may not start with {ACTION_KIND_PREFIX:?}, which is reserved for actions"
                ));
            }
            if let Some(actor) = actor {
                check_actor(actor).map_err(|e| format!("emitted event: {e}"))?;
            }
            let text = kind.len() + actor.as_ref().map_or(0, String::len);
            fits("emitted event", payload, text, max)
        }
        Output::Action {
            name,
            category,
            dedup_key,
            payload,
            ..
        } => {
            if delivering {
                return Err(format!(
                    "a delivery plugin proposed an action ({name}) while delivering one"
                ));
            }
            if !is_subject_safe(name) {
                return Err(format!(
                    "action name {name:?} must be dot-separated tokens without spaces or wildcards"
                ));
            }
            let text = name.len() + category.len() + dedup_key.as_ref().map_or(0, String::len);
            fits("action", payload, text, max)
        }
        Output::Deliver { channel, target, body } => {
            if !is_subject_safe(channel) {
                return Err(format!(
                    "delivery channel {channel:?} must be dot-separated tokens without spaces or wildcards"
                ));
            }
            if body.len() + target.len() > max {
                return Err(format!(
                    "delivery body of {} bytes is larger than the {max} bytes a message may carry",
                    body.len()
                ));
            }
            Ok(())
        }
    }
}

/// Whether an output with this MessagePack payload, published as JSON, fits in `max` bytes.
fn fits(what: &str, payload: &[u8], text: usize, max: usize) -> Result<(), String> {
    let bound = (payload.len() + text) * JSON_EXPANSION + ENVELOPE_OVERHEAD;
    if bound <= max {
        return Ok(());
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, &MsgpackAsJson(payload))
        .map_err(|e| format!("{what} payload is not MessagePack that JSON can show: {e}"))?;
    let size = counter.0 + text * JSON_EXPANSION + ENVELOPE_OVERHEAD;
    if size > max {
        return Err(format!(
            "{what} of about {size} bytes as published is larger than the {max} bytes a message may carry"
        ));
    }
    Ok(())
}

/// Counts what is written, keeps nothing.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An emitted event is published whole; this is its exact size, for tests of the bound.
#[cfg(test)]
fn published_len(event: &crate::event::Event) -> usize {
    event.to_json().map_or(0, |j| j.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(payload: Vec<u8>) -> Output {
        Output::Emit {
            kind: "big.event".into(),
            actor: None,
            payload,
        }
    }

    fn limits(max: usize) -> PluginLimits {
        PluginLimits {
            max_output_bytes: max,
            ..PluginLimits::default()
        }
    }

    #[test]
    fn an_emitted_event_over_the_message_limit_fails_the_call() {
        let big = rmp_serde::to_vec_named(&serde_json::json!({"blob": "x".repeat(2 << 20)})).expect("encode");
        let err = check(&[emit(vec![0x80]), emit(big)], false, &limits(1 << 20)).expect_err("refused");
        assert_eq!(err.reason(), crate::dead_letter::Reason::InvalidOutput);
        assert!(err.to_string().starts_with("output 1: emitted event of about"), "{err}");

        let fine = rmp_serde::to_vec_named(&serde_json::json!({"blob": "x".repeat(200_000)})).expect("encode");
        check(&[emit(fine.clone())], false, &limits(1 << 20)).expect("a 200 KB event fits");
        let event = crate::event::Event {
            id: "0".repeat(32),
            kind: "big.event".into(),
            actor: "a".repeat(crate::limits::MAX_ACTOR_BYTES),
            time: 0,
            source: "plugin:p".into(),
            payload: fine,
        };
        assert!(published_len(&event) < 1 << 20);
    }

    #[test]
    fn invalid_names_and_long_actors_fail_the_call() {
        let cases = [
            (
                Output::Emit {
                    kind: "a b".into(),
                    actor: None,
                    payload: vec![0x80],
                },
                "emitted kind",
            ),
            (
                Output::Emit {
                    kind: "ok".into(),
                    actor: Some("v".repeat(70_000)),
                    payload: vec![0x80],
                },
                "actor id is 70000 bytes",
            ),
            (
                Output::Action {
                    name: "offer.*".into(),
                    category: "offer".into(),
                    priority: 0,
                    dedup_key: None,
                    payload: Vec::new(),
                },
                "action name",
            ),
            (
                Output::Deliver {
                    channel: "".into(),
                    target: "t".into(),
                    body: Vec::new(),
                },
                "delivery channel",
            ),
        ];
        for (output, why) in cases {
            let err = check(&[output], false, &limits(1 << 20)).expect_err(why);
            assert!(err.to_string().contains(why), "{err}");
        }
        let action = Output::Action {
            name: "offer.x".into(),
            category: "offer".into(),
            priority: 0,
            dedup_key: None,
            payload: Vec::new(),
        };
        assert!(check(std::slice::from_ref(&action), true, &limits(1 << 20)).is_err());
        check(&[action], false, &limits(1 << 20)).expect("an action with an empty payload is fine");
    }
}
