//! Ingest rules: how a raw JSON message on a legacy subject becomes an event.
//!
//! A rule names the subject pattern it listens on, a kind template (`{N}` = Nth subject token,
//! `{subject}` = the whole subject), and where the actor, id and time are (a header or a JSON
//! pointer). Several rules may share a subject: the first that fits wins; if none fits, the
//! message is dead-lettered as `no_rule` with each rule's reason.

use super::{IdGen, IngressError};
use crate::config::IngestRule;
use crate::event::{Event, is_subject_safe, now_ms};

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Token(usize),
    Subject,
}

#[derive(Debug, Clone)]
enum Locator {
    Header(String),
    Pointer(String),
}

/// A validated rule, ready to apply.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    subject: String,
    kind: Vec<Piece>,
    actor: Locator,
    id: Option<Locator>,
    time_pointer: Option<String>,
}

impl CompiledRule {
    /// Check a configured rule; the error says what to fix.
    pub fn compile(rule: &IngestRule) -> Result<CompiledRule, String> {
        let at = format!("ingest rule for {:?}", rule.subject);
        if hub_plugin_sdk::pattern::pattern_error(&rule.subject).is_some() {
            return Err(format!("{at}: invalid subject pattern"));
        }
        let actor = match (&rule.actor_header, &rule.actor_pointer) {
            (Some(h), None) => Locator::Header(h.clone()),
            (None, Some(p)) => Locator::Pointer(pointer(p, &at)?),
            _ => return Err(format!("{at}: set exactly one of actor_header or actor_pointer")),
        };
        let id = match (&rule.id_header, &rule.id_pointer) {
            (Some(h), None) => Some(Locator::Header(h.clone())),
            (None, Some(p)) => Some(Locator::Pointer(pointer(p, &at)?)),
            (None, None) => None,
            _ => return Err(format!("{at}: set at most one of id_header or id_pointer")),
        };
        let time_pointer = rule.time_pointer.as_deref().map(|p| pointer(p, &at)).transpose()?;
        Ok(CompiledRule {
            subject: rule.subject.clone(),
            kind: template(&rule.kind, &at)?,
            actor,
            id,
            time_pointer,
        })
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    fn apply(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        body: &serde_json::Value,
        ids: &IdGen,
    ) -> Result<Event, String> {
        if !hub_plugin_sdk::pattern::kind_matches(&self.subject, subject) {
            return Err("subject does not match".into());
        }
        let tokens: Vec<&str> = subject.split('.').collect();
        let mut kind = String::new();
        for piece in &self.kind {
            match piece {
                Piece::Text(t) => kind.push_str(t),
                Piece::Subject => kind.push_str(subject),
                Piece::Token(n) => kind.push_str(tokens.get(n - 1).ok_or_else(|| format!("subject has no token {n}"))?),
            }
        }
        if !is_subject_safe(&kind) {
            return Err(format!("kind {kind:?} is not a valid event kind"));
        }
        let actor = locate(&self.actor, headers, body).ok_or_else(|| match &self.actor {
            Locator::Header(h) => format!("no actor in header {h}"),
            Locator::Pointer(p) => format!("no actor at {p}"),
        })?;
        let id = self
            .id
            .as_ref()
            .and_then(|l| locate(l, headers, body))
            .unwrap_or_else(|| ids.next());
        let time = match &self.time_pointer {
            Some(p) => match body.pointer(p) {
                Some(serde_json::Value::Number(n)) => {
                    n.as_i64().ok_or_else(|| format!("time at {p} is not an integer"))?
                }
                Some(serde_json::Value::String(s)) => humantime::parse_rfc3339_weak(s)
                    .map_err(|e| format!("time at {p}: {e}"))?
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
                _ => now_ms(),
            },
            None => now_ms(),
        };
        let payload = if body.is_object() {
            rmp_serde::to_vec_named(body)
        } else {
            rmp_serde::to_vec_named(&serde_json::json!({ "value": body }))
        }
        .map_err(|e| format!("payload: {e}"))?;
        Ok(Event {
            id,
            kind,
            actor,
            time,
            source: subject.to_owned(),
            payload,
        })
    }
}

fn pointer(p: &str, at: &str) -> Result<String, String> {
    if p.is_empty() || p.starts_with('/') {
        Ok(p.to_owned())
    } else {
        Err(format!("{at}: JSON pointer {p:?} must start with '/'"))
    }
}

fn template(t: &str, at: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("{at}: unclosed '{{' in kind {t:?}"))?
            + open;
        let name = &rest[open + 1..close];
        pieces.push(match name {
            "subject" => Piece::Subject,
            n => match n.parse::<usize>() {
                Ok(i) if i >= 1 => Piece::Token(i),
                _ => return Err(format!("{at}: unknown placeholder {{{n}}} in kind {t:?}")),
            },
        });
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    if pieces.is_empty() {
        return Err(format!("{at}: empty kind"));
    }
    Ok(pieces)
}

fn locate(l: &Locator, headers: Option<&async_nats::HeaderMap>, body: &serde_json::Value) -> Option<String> {
    let found = match l {
        Locator::Header(h) => headers?.get(h.as_str())?.as_str().to_owned(),
        Locator::Pointer(p) => match body.pointer(p)? {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return None,
        },
    };
    (!found.is_empty()).then_some(found)
}

/// Turn a raw message into an event with the first rule that fits.
pub fn decode_raw(
    rules: &[CompiledRule],
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    body: &[u8],
    ids: &IdGen,
) -> Result<Event, IngressError> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| IngressError::undecodable(format!("raw message is not JSON: {e}")))?;
    let mut why = Vec::new();
    for rule in rules {
        match rule.apply(subject, headers, &json, ids) {
            Ok(event) => return Ok(event),
            Err(e) => why.push(format!("rule {:?}: {e}", rule.subject)),
        }
    }
    Err(IngressError {
        reason: "no_rule",
        detail: format!("no ingest rule fits: {}", why.join("; ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web_rule() -> CompiledRule {
        CompiledRule::compile(&IngestRule {
            subject: "web.*".into(),
            kind: "web.{2}".into(),
            actor_header: None,
            actor_pointer: Some("/visitor".into()),
            id_header: None,
            id_pointer: Some("/event_id".into()),
            time_pointer: Some("/ts".into()),
        })
        .expect("valid")
    }

    #[test]
    fn raw_message_becomes_an_event() {
        let body = br#"{"visitor":"u1","event_id":"x1","ts":1000,"product":{"sku":"A"}}"#;
        let e = decode_raw(&[web_rule()], "web.add_to_cart", None, body, &IdGen::new()).expect("event");
        assert_eq!(
            (e.kind.as_str(), e.actor.as_str(), e.id.as_str(), e.time),
            ("web.add_to_cart", "u1", "x1", 1000)
        );
        assert_eq!(e.source, "web.add_to_cart");
    }

    #[test]
    fn actor_from_a_header() {
        let rule = CompiledRule::compile(&IngestRule {
            subject: "legacy.>".into(),
            kind: "legacy.{subject}".into(),
            actor_header: Some("X-Customer".into()),
            actor_pointer: None,
            id_header: None,
            id_pointer: None,
            time_pointer: None,
        })
        .expect("valid");
        let mut h = async_nats::HeaderMap::new();
        h.insert("X-Customer", "c9");
        let e = decode_raw(&[rule], "legacy.db.row", Some(&h), b"[1,2]", &IdGen::new()).expect("event");
        assert_eq!((e.kind.as_str(), e.actor.as_str()), ("legacy.legacy.db.row", "c9"));
        let p: serde_json::Value = rmp_serde::from_slice(&e.payload).expect("payload");
        assert_eq!(p["value"], serde_json::json!([1, 2]));
    }

    #[test]
    fn misfits_are_dead_lettered_with_reasons() {
        let err =
            decode_raw(&[web_rule()], "web.click", None, br#"{"user":"u1"}"#, &IdGen::new()).expect_err("refused");
        assert_eq!(err.reason, "no_rule");
        assert!(err.detail.contains("no actor at /visitor"), "{}", err.detail);
        let err = decode_raw(&[web_rule()], "web.click", None, b"<xml/>", &IdGen::new()).expect_err("refused");
        assert_eq!(err.reason, "undecodable");
    }

    #[test]
    fn bad_rules_are_refused() {
        let mut rule = IngestRule {
            subject: "web.*".into(),
            kind: "web.{x}".into(),
            actor_header: None,
            actor_pointer: Some("/v".into()),
            id_header: None,
            id_pointer: None,
            time_pointer: None,
        };
        assert!(
            CompiledRule::compile(&rule)
                .expect_err("refused")
                .contains("placeholder")
        );
        rule.kind = "web.{2}".into();
        rule.actor_pointer = Some("v".into());
        assert!(
            CompiledRule::compile(&rule)
                .expect_err("refused")
                .contains("must start with '/'")
        );
        rule.actor_pointer = None;
        assert!(
            CompiledRule::compile(&rule)
                .expect_err("refused")
                .contains("exactly one")
        );
    }
}
