//! Ingest rules: how a raw JSON message on a legacy subject becomes an event.
//!
//! A rule names the subject pattern it listens on, a kind template (`{N}` = Nth subject token,
//! `{subject}` = the whole subject), where the actor, id and time are (a header or a JSON
//! pointer), and optionally the tenant (a template too: `{2}` of `clients.*.orders`). Several rules may share a subject: the first that fits wins; if none fits, the
//! message is dead-lettered as `no_rule` with each rule's reason.

use super::transcode::{Container, Encode};
use super::{IdGen, IngressError};
use crate::config::IngestRule;
use crate::event::{Event, is_subject_safe};
use crate::tenant::Tenants;
use std::borrow::Cow;

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
    tenant: Option<Vec<Piece>>,
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
            (Some(h), None) => Locator::Header(header(h, &at)?),
            (None, Some(p)) => Locator::Pointer(pointer(p, &at)?),
            _ => return Err(format!("{at}: set exactly one of actor_header or actor_pointer")),
        };
        let id = match (&rule.id_header, &rule.id_pointer) {
            (Some(h), None) => Some(Locator::Header(header(h, &at)?)),
            (None, Some(p)) => Some(Locator::Pointer(pointer(p, &at)?)),
            (None, None) => None,
            _ => return Err(format!("{at}: set at most one of id_header or id_pointer")),
        };
        let time_pointer = rule.time_pointer.as_deref().map(|p| pointer(p, &at)).transpose()?;
        Ok(CompiledRule {
            subject: rule.subject.clone(),
            kind: template(&rule.kind, "kind", &at)?,
            tenant: rule.tenant.as_deref().map(|t| template(t, "tenant", &at)).transpose()?,
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
        body: &Body<'_>,
        ids: &IdGen,
    ) -> Result<(Event, Option<String>), String> {
        if !hub_plugin_sdk::pattern::kind_matches(&self.subject, subject) {
            return Err("subject does not match".into());
        }
        let kind = render(&self.kind, subject)?;
        let tenant = self.tenant.as_ref().map(|t| render(t, subject)).transpose()?;
        if !is_subject_safe(&kind) {
            return Err(format!("kind {kind:?} is not a valid event kind"));
        }
        let actor = locate(&self.actor, headers, body)
            .map_err(|e| format!("actor: {e}"))?
            .ok_or_else(|| match &self.actor {
                Locator::Header(h) => format!("no actor in header {h}"),
                Locator::Pointer(p) => format!("no actor at {p}"),
            })?;
        let id = match &self.id {
            Some(l) => locate(l, headers, body).map_err(|e| format!("id: {e}"))?,
            None => None,
        }
        .unwrap_or_else(|| ids.next());
        let time = match &self.time_pointer {
            Some(p) => match body.field(p) {
                Some(Scalar::Int(ms)) => ms,
                Some(Scalar::Float(_)) => return Err(format!("time at {p} is not an integer")),
                Some(Scalar::Other(what)) => {
                    return Err(format!(
                        "time at {p} is {what}, not ms since the epoch or RFC 3339 text"
                    ));
                }
                Some(Scalar::Str(s)) => humantime::parse_rfc3339_weak(&s)
                    .map_err(|e| format!("time at {p}: {e}"))?
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|_| format!("time at {p} is before the Unix epoch"))
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))?,
                None => ids.time(),
            },
            None => ids.time(),
        };
        let event = Event {
            id,
            kind,
            actor,
            time,
            source: subject.to_owned(),
            // Filled in by `decode_raw` once a rule fits: the body's payload is moved, not copied.
            payload: Vec::new(),
        };
        Ok((event, tenant))
    }
}

/// A template filled in from `subject`.
fn render(pieces: &[Piece], subject: &str) -> Result<String, String> {
    let mut text = String::with_capacity(subject.len() + 32);
    for piece in pieces {
        match piece {
            Piece::Text(t) => text.push_str(t),
            Piece::Subject => text.push_str(subject),
            Piece::Token(n) => text.push_str(
                subject
                    .split('.')
                    .nth(n - 1)
                    .ok_or_else(|| format!("subject has no token {n}"))?,
            ),
        }
    }
    Ok(text)
}

/// A header name as NATS carries it: the lookup of any other panics in `async_nats`, on every
/// message that has headers.
fn header(h: &str, at: &str) -> Result<String, String> {
    match h.parse::<async_nats::HeaderName>() {
        Ok(_) if !h.is_empty() => Ok(h.to_owned()),
        _ => Err(format!(
            "{at}: header name {h:?} must be printable ASCII without spaces or ':'"
        )),
    }
}

fn pointer(p: &str, at: &str) -> Result<String, String> {
    if p.is_empty() || p.starts_with('/') {
        Ok(p.to_owned())
    } else {
        Err(format!("{at}: JSON pointer {p:?} must start with '/'"))
    }
}

fn template(t: &str, what: &str, at: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("{at}: unclosed '{{' in {what} {t:?}"))?
            + open;
        let name = &rest[open + 1..close];
        pieces.push(match name {
            "subject" => Piece::Subject,
            n => match n.parse::<usize>() {
                Ok(i) if i >= 1 => Piece::Token(i),
                _ => return Err(format!("{at}: unknown placeholder {{{n}}} in {what} {t:?}")),
            },
        });
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    if pieces.is_empty() {
        return Err(format!("{at}: empty {what}"));
    }
    Ok(pieces)
}

/// The actor or id a locator points at: `Ok(None)` when it is not there; an error when it is
/// there but not a string or an integer (the rule fits, the message does not).
fn locate(l: &Locator, headers: Option<&async_nats::HeaderMap>, body: &Body<'_>) -> Result<Option<String>, String> {
    let found = match l {
        Locator::Header(h) => headers.and_then(|hs| hs.get(h.as_str())).map(|v| v.as_str().to_owned()),
        Locator::Pointer(p) => match body.field(p) {
            None => None,
            Some(Scalar::Str(s)) => Some(s.into_owned()),
            Some(Scalar::Int(n)) => Some(n.to_string()),
            Some(Scalar::Float(_)) => return Err(format!("{p} is a fractional number, not a string or an integer")),
            Some(Scalar::Other(what)) => return Err(format!("{p} is {what}, not a string or an integer")),
        },
    };
    Ok(found.filter(|f| !f.is_empty()))
}

/// Rules that share one subscription, and how their messages' bodies are read.
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    /// The top-level keys the rules read, when every pointer is a plain top-level key: then a
    /// body is read in one pass without building a JSON tree (the common case, and 2× faster).
    flat_keys: Option<Vec<String>>,
}

impl RuleSet {
    pub fn new(rules: Vec<CompiledRule>) -> RuleSet {
        let pointers = rules.iter().flat_map(|r| {
            let located = [Some(&r.actor), r.id.as_ref()]
                .into_iter()
                .flatten()
                .filter_map(|l| match l {
                    Locator::Pointer(p) => Some(p.as_str()),
                    Locator::Header(_) => None,
                });
            located.chain(r.time_pointer.as_deref())
        });
        let flat_keys = pointers
            .map(|p| {
                let key = p.strip_prefix('/')?;
                (!key.is_empty() && !key.contains(['/', '~'])).then(|| key.to_owned())
            })
            .collect();
        RuleSet { rules, flat_keys }
    }
}

/// A located value: what a pointer may find (other JSON kinds count as not found). Strings
/// borrow from the body where they can, so a located actor or id is copied once, into the event.
#[derive(Debug, Clone, PartialEq)]
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    /// `null`, a boolean, an array or an object: there, but not a value a rule can use.
    Other(&'static str),
}

/// A raw JSON body, read as much as the rules need.
enum Body<'a> {
    /// Top-level fields only, read while the body is encoded as the payload.
    Flat {
        fields: Vec<(&'a str, Scalar<'a>)>,
        payload: Vec<u8>,
    },
    /// The whole tree, for nested pointers and bodies that are not objects.
    Tree(serde_json::Value),
}

impl Body<'_> {
    fn field(&self, pointer: &str) -> Option<Scalar<'_>> {
        match self {
            Body::Flat { fields, .. } => {
                let key = pointer.strip_prefix('/')?;
                // A key given twice counts with its last value, as in the tree (serde_json) and
                // for plugins that read the payload's map.
                fields.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| match v {
                    Scalar::Str(s) => Scalar::Str(Cow::Borrowed(s)),
                    Scalar::Int(n) => Scalar::Int(*n),
                    Scalar::Float(n) => Scalar::Float(*n),
                    Scalar::Other(what) => Scalar::Other(what),
                })
            }
            Body::Tree(value) => Some(match value.pointer(pointer)? {
                serde_json::Value::String(s) => Scalar::Str(Cow::Borrowed(s)),
                serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                    (Some(i), _) => Scalar::Int(i),
                    (None, Some(u)) => Scalar::Str(Cow::Owned(u.to_string())),
                    (None, None) => Scalar::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
                serde_json::Value::Null => Scalar::Other("null"),
                serde_json::Value::Bool(_) => Scalar::Other("a boolean"),
                serde_json::Value::Array(_) => Scalar::Other("an array"),
                serde_json::Value::Object(_) => Scalar::Other("an object"),
            }),
        }
    }

    /// The payload as a MessagePack map (a non-object body is wrapped as `{"value": body}`).
    fn into_payload(self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        match self {
            Body::Flat { payload, .. } => Ok(payload),
            Body::Tree(v) if v.is_object() => rmp_serde::to_vec_named(&v),
            Body::Tree(v) => rmp_serde::to_vec_named(&serde_json::json!({ "value": v })),
        }
    }
}

/// Read the wanted top-level fields of a JSON object while encoding the whole object as the
/// payload: one pass over the text.
fn read_flat<'a>(raw: &'a [u8], keys: &'a [String]) -> Result<Body<'a>, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};

    /// The object: encodes every entry, returns the wanted fields.
    struct Fields<'k, 'o> {
        keys: &'k [String],
        out: &'o mut Vec<u8>,
    }
    /// Encodes a key and says which wanted key it is, compared without allocating.
    struct Key<'k, 'o> {
        keys: &'k [String],
        out: &'o mut Vec<u8>,
    }
    /// Encodes a wanted field's value and keeps it if it is a scalar.
    struct Wanted<'o>(&'o mut Vec<u8>);

    impl<'de, 'k> DeserializeSeed<'de> for Key<'k, '_> {
        type Value = Option<&'k str>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'k> Visitor<'_> for Key<'k, '_> {
        type Value = Option<&'k str>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Encode(self.out).visit_str::<E>(v)?;
            Ok(self.keys.iter().find(|k| k.as_str() == v).map(String::as_str))
        }
    }
    impl<'de> DeserializeSeed<'de> for Wanted<'_> {
        type Value = Option<Scalar<'de>>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Wanted<'_> {
        type Value = Option<Scalar<'de>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Encode(self.0).visit_str::<E>(v)?;
            Ok(Some(Scalar::Str(Cow::Borrowed(v))))
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Encode(self.0).visit_str::<E>(v)?;
            Ok(Some(Scalar::Str(Cow::Owned(v.to_owned()))))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            Encode(self.0).visit_i64::<E>(v)?;
            Ok(Some(Scalar::Int(v)))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            Encode(self.0).visit_u64::<E>(v)?;
            // Above i64: kept as its decimal text, so an id is not rounded.
            Ok(Some(
                i64::try_from(v).map_or_else(|_| Scalar::Str(Cow::Owned(v.to_string())), Scalar::Int),
            ))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
            Encode(self.0).visit_f64::<E>(v)?;
            Ok(Some(Scalar::Float(v)))
        }
        fn visit_bool<E: Error>(self, v: bool) -> Result<Self::Value, E> {
            Encode(self.0).visit_bool::<E>(v)?;
            Ok(Some(Scalar::Other("a boolean")))
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Encode(self.0).visit_unit::<E>()?;
            Ok(Some(Scalar::Other("null")))
        }
        fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
            Encode(self.0).visit_map(m)?;
            Ok(Some(Scalar::Other("an object")))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Self::Value, A::Error> {
            Encode(self.0).visit_seq(s)?;
            Ok(Some(Scalar::Other("an array")))
        }
    }
    impl<'de, 'k> Visitor<'de> for Fields<'k, '_> {
        type Value = Vec<(&'k str, Scalar<'de>)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let (keys, out) = (self.keys, self.out);
            let mut found = Vec::with_capacity(keys.len());
            let container = Container::begin(out, true);
            let mut entries = 0;
            while let Some(key) = m.next_key_seed(Key { keys, out: &mut *out })? {
                match key {
                    Some(k) => {
                        if let Some(v) = m.next_value_seed(Wanted(&mut *out))? {
                            found.push((k, v));
                        }
                    }
                    None => m.next_value_seed(Encode(&mut *out))?,
                }
                entries += 1;
            }
            container.end(out, entries)?;
            Ok(found)
        }
    }

    let mut payload = Vec::with_capacity(raw.len());
    let mut de = serde_json::Deserializer::from_slice(raw);
    let fields = de.deserialize_map(Fields {
        keys,
        out: &mut payload,
    })?;
    de.end()?;
    Ok(Body::Flat { fields, payload })
}

/// Turn a raw message into an event with the first rule that fits.
pub fn decode_raw(
    rules: &RuleSet,
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    raw: &[u8],
    ids: &IdGen,
    tenants: &Tenants,
) -> Result<Event, IngressError> {
    let is_object = raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let body = match &rules.flat_keys {
        Some(keys) if is_object => read_flat(raw, keys),
        _ => serde_json::from_slice(raw).map(Body::Tree),
    }
    .map_err(|e| IngressError::undecodable(format!("raw message is not JSON: {e}")))?;
    let mut why = Vec::new();
    for rule in &rules.rules {
        match rule.apply(subject, headers, &body, ids) {
            Ok((mut event, tenant)) => {
                // The rule fits; what it found must still be a valid event, as on every path.
                event.check().map_err(IngressError::invalid)?;
                super::assign_tenant(&mut event, tenant.as_deref(), headers, tenants)?;
                event.payload = body
                    .into_payload()
                    .map_err(|e| IngressError::undecodable(format!("payload: {e}")))?;
                return Ok(event);
            }
            Err(e) => why.push(format!("rule {:?}: {e}", rule.subject)),
        }
    }
    Err(IngressError {
        reason: crate::dead_letter::Reason::NoRule,
        detail: format!("no ingest rule fits: {}", why.join("; ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web_rule() -> CompiledRule {
        CompiledRule::compile(&crate::config::Config::local_default().ingest[0]).expect("valid")
    }

    #[test]
    fn raw_message_becomes_an_event() {
        let body = br#"{"visitor":"u1","event_id":"x1","ts":1000,"product":{"sku":"A"}}"#;
        let e = decode_raw(
            &RuleSet::new(vec![web_rule()]),
            "web.add_to_cart",
            None,
            body,
            &IdGen::new(),
            &Tenants::default(),
        )
        .expect("event");
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
            tenant: None,
        })
        .expect("valid");
        let mut h = async_nats::HeaderMap::new();
        h.insert("X-Customer", "c9");
        let e = decode_raw(
            &RuleSet::new(vec![rule]),
            "legacy.db.row",
            Some(&h),
            b"[1,2]",
            &IdGen::new(),
            &Tenants::default(),
        )
        .expect("event");
        assert_eq!((e.kind.as_str(), e.actor.as_str()), ("legacy.legacy.db.row", "c9"));
        let p: serde_json::Value = rmp_serde::from_slice(&e.payload).expect("payload");
        assert_eq!(p["value"], serde_json::json!([1, 2]));
    }

    #[test]
    fn misfits_are_dead_lettered_with_reasons() {
        let err = decode_raw(
            &RuleSet::new(vec![web_rule()]),
            "web.click",
            None,
            br#"{"user":"u1"}"#,
            &IdGen::new(),
            &Tenants::default(),
        )
        .expect_err("refused");
        assert_eq!(err.reason, crate::dead_letter::Reason::NoRule);
        assert!(err.detail.contains("no actor at /visitor"), "{}", err.detail);
        let err = decode_raw(
            &RuleSet::new(vec![web_rule()]),
            "web.click",
            None,
            b"<xml/>",
            &IdGen::new(),
            &Tenants::default(),
        )
        .expect_err("refused");
        assert_eq!(err.reason, crate::dead_letter::Reason::Undecodable);
    }

    #[test]
    fn one_pass_and_tree_reading_agree() {
        let body = br#"{"skip":{"deep":[1,{"visitor":"no"}]},"visitor":"u\u00e9","event_id":7,"ts":"2026-01-01T00:00:00Z","product":{"sku":"A"}}"#;
        let flat = RuleSet::new(vec![web_rule()]);
        assert!(flat.flat_keys.is_some());
        let mut nested = crate::config::Config::local_default().ingest[0].clone();
        nested.actor_pointer = Some("/product/sku".into());
        let tree = RuleSet::new(vec![CompiledRule::compile(&nested).expect("valid")]);
        assert!(tree.flat_keys.is_none());

        let a = decode_raw(&flat, "web.click", None, body, &IdGen::new(), &Tenants::default()).expect("flat");
        let b = decode_raw(&tree, "web.click", None, body, &IdGen::new(), &Tenants::default()).expect("tree");
        assert_eq!(
            (a.actor.as_str(), a.id.as_str(), a.time),
            ("u\u{e9}", "7", 1_767_225_600_000)
        );
        assert_eq!(b.actor, "A");
        assert_eq!((b.id.as_str(), b.time), ("7", 1_767_225_600_000));
        let pa: serde_json::Value = rmp_serde::from_slice(&a.payload).expect("payload");
        let pb: serde_json::Value = rmp_serde::from_slice(&b.payload).expect("payload");
        assert_eq!(pa, pb);
        assert_eq!(pa["skip"]["deep"][1]["visitor"], "no");
    }

    /// Found by the `ingest` fuzz target: with a key given twice, the one-pass reader took the
    /// first value and the tree reader the last, so the event depended on the other rules.
    #[test]
    fn a_key_given_twice_counts_with_its_last_value_in_both_readers() {
        let body = br#"{"visitor":"u1","ts":2,"visitor":"u2","ts":"2026-01-01T00:00:00Z"}"#;
        let flat = RuleSet::new(vec![web_rule()]);
        assert!(flat.flat_keys.is_some());
        let mut nested = crate::config::Config::local_default().ingest[0].clone();
        nested.subject = "other.*".into();
        nested.actor_pointer = Some("/a/b".into());
        let tree = RuleSet::new(vec![web_rule(), CompiledRule::compile(&nested).expect("valid")]);
        assert!(tree.flat_keys.is_none());
        for rules in [&flat, &tree] {
            let e = decode_raw(rules, "web.click", None, body, &IdGen::new(), &Tenants::default()).expect("event");
            assert_eq!((e.actor.as_str(), e.time), ("u2", 1_767_225_600_000));
            let p: serde_json::Value = rmp_serde::from_slice(&e.payload).expect("payload");
            assert_eq!(p["visitor"], "u2");
        }
    }

    #[test]
    fn wanted_fields_that_are_not_scalars_are_read_whole_and_refused() {
        let body = br#"{"visitor":"u1","event_id":[1,{"a":null}],"ts":{"at":false},"n":-3}"#;
        let keys = ["visitor".to_owned(), "event_id".to_owned(), "ts".to_owned()];
        let Ok(Body::Flat { payload, .. }) = read_flat(body, &keys) else {
            panic!("a flat read");
        };
        let payload: serde_json::Value = rmp_serde::from_slice(&payload).expect("payload");
        let json: serde_json::Value = serde_json::from_slice(body).expect("json");
        assert_eq!(payload, json, "the one-pass reader encodes wanted non-scalars whole");
        let e = decode_raw(
            &RuleSet::new(vec![web_rule()]),
            "web.click",
            None,
            body,
            &IdGen::new(),
            &Tenants::default(),
        )
        .expect_err("an id that is an array is refused, not replaced");
        assert!(e.detail.contains("/event_id is an array"), "{}", e.detail);
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
            tenant: None,
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

    /// Found by the `ingest` fuzz target: a header name NATS cannot carry was accepted, and
    /// looking it up panicked on every message with headers.
    #[test]
    fn header_names_nats_cannot_carry_are_refused_when_compiling() {
        for name in ["\0", "", "X Customer", "X-Customer:", "Kunde-\u{e9}"] {
            for id in [false, true] {
                let mut rule = IngestRule {
                    subject: ">".into(),
                    kind: "1".into(),
                    actor_header: Some(name.into()),
                    actor_pointer: None,
                    id_header: None,
                    id_pointer: None,
                    time_pointer: None,
                    tenant: None,
                };
                if id {
                    rule.actor_header = Some("X-Customer".into());
                    rule.id_header = Some(name.into());
                }
                let e = CompiledRule::compile(&rule).expect_err(name);
                assert!(e.contains("header name"), "{e}");
            }
        }
        let mut h = async_nats::HeaderMap::new();
        h.insert("X-Customer", "c1");
        let rule = IngestRule {
            subject: ">".into(),
            kind: "1".into(),
            actor_header: Some("X-Customer".into()),
            actor_pointer: None,
            id_header: Some("Msg-Id".into()),
            id_pointer: None,
            time_pointer: None,
            tenant: None,
        };
        let rules = RuleSet::new(vec![CompiledRule::compile(&rule).expect("valid")]);
        let e = decode_raw(&rules, "d", Some(&h), b"{}", &IdGen::new(), &Tenants::default()).expect("event");
        assert_eq!(e.actor, "c1");
    }

    fn decode_web(body: &str) -> Result<Event, IngressError> {
        decode_raw(
            &RuleSet::new(vec![web_rule()]),
            "web.add_to_cart",
            None,
            body.as_bytes(),
            &IdGen::new(),
            &Tenants::default(),
        )
    }

    #[test]
    fn raw_times_that_are_not_numbers_or_text_are_refused() {
        for ts in ["[]", "{}", "null", "true", "\"x\"", "1.5", "-1"] {
            let body = format!(r#"{{"visitor":"u1","ts":{ts}}}"#);
            assert!(decode_web(&body).is_err(), "ts {ts} was accepted");
        }
        // A nested pointer reads the whole tree: the same answers.
        let rule = CompiledRule::compile(&IngestRule {
            time_pointer: Some("/meta/ts".into()),
            tenant: None,
            ..crate::config::Config::local_default().ingest[0].clone()
        })
        .expect("valid");
        let rules = RuleSet::new(vec![rule]);
        for ts in ["[]", "{}", "null"] {
            let body = format!(r#"{{"visitor":"u1","meta":{{"ts":{ts}}}}}"#);
            assert!(
                decode_raw(
                    &rules,
                    "web.x",
                    None,
                    body.as_bytes(),
                    &IdGen::new(),
                    &Tenants::default()
                )
                .is_err(),
                "nested ts {ts} was accepted"
            );
        }
        assert_eq!(
            decode_web(r#"{"visitor":"u1","ts":"2026-11-30T10:00:00Z"}"#)
                .expect("text")
                .time,
            1_796_032_800_000
        );
    }

    #[test]
    fn raw_actors_are_strings_or_integers_within_the_limit() {
        assert_eq!(decode_web(r#"{"visitor":12345}"#).expect("integer").actor, "12345");
        assert_eq!(
            decode_web(r#"{"visitor":18446744073709551615}"#).expect("u64").actor,
            "18446744073709551615"
        );
        for visitor in ["1.5", "true", "{}", "[]", "null"] {
            let body = format!(r#"{{"visitor":{visitor}}}"#);
            assert!(decode_web(&body).is_err(), "visitor {visitor} was accepted");
        }
    }

    #[test]
    fn long_actor_ids_from_ingest_rules_are_refused_not_cut() {
        let long = "v".repeat(70_000);
        let body = format!(r#"{{"visitor":"{long}a"}}"#);
        let e = decode_web(&body).expect_err("too long");
        assert_eq!(e.reason, crate::dead_letter::Reason::Invalid);
        assert!(e.detail.contains("at most 1024"), "{}", e.detail);
    }
}
