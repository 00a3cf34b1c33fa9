//! Event envelopes on `events.>`: `{"id","kind","actor","tenant","time","source","payload"}` in
//! JSON or MessagePack (by `Content-Type`, else sniffed from the first byte). A missing `kind` is
//! taken from the subject after `events.`; a missing `id` or `time` is filled in; a missing
//! `tenant` is the `Hub-Tenant` header's, else the default tenant's.

use super::{IdGen, IngressError};
use crate::event::Event;
use crate::tenant::Tenants;
use serde::Deserialize;
use serde_json::value::RawValue;

/// An envelope, JSON or MessagePack; `P` is how each format holds the payload until it is
/// checked (the raw JSON text, or a MessagePack value). Fields that are absent are filled in;
/// fields that are present must have their type (`null` included: `"time": null` is refused,
/// not taken as "now").
#[derive(Deserialize)]
struct Envelope<P> {
    #[serde(default, deserialize_with = "present")]
    id: Option<Ident>,
    #[serde(default, deserialize_with = "present")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "present")]
    actor: Option<Ident>,
    #[serde(default, deserialize_with = "present")]
    tenant: Option<String>,
    #[serde(default, deserialize_with = "present")]
    time: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    source: Option<String>,
    #[serde(default = "none")]
    payload: Option<P>,
}

/// An absent payload (serde's `default` would ask `P: Default`).
fn none<P>() -> Option<P> {
    None
}

/// A field that is there: its value must decode as `T` (`Option<T>` would take `null` as absent).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// An actor or event id: a string, or an integer taken as its decimal form (legacy systems'
/// numeric customer ids), as ingest rules take them. Anything else is refused.
pub(super) struct Ident(pub(super) String);

impl<'de> Deserialize<'de> for Ident {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ident, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Ident;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Ident, E> {
                Ok(Ident(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Ident, E> {
                Ok(Ident(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Ident, E> {
                Ok(Ident(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Ident, E> {
                Ok(Ident(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

enum Format {
    Json,
    Msgpack,
}

fn format_of(headers: Option<&async_nats::HeaderMap>, body: &[u8]) -> Option<Format> {
    if let Some(ct) = headers.and_then(|h| h.get("Content-Type")) {
        let ct = ct.as_str().to_ascii_lowercase();
        if ct.contains("msgpack") {
            return Some(Format::Msgpack);
        }
        if ct.contains("json") {
            return Some(Format::Json);
        }
    }
    match body.iter().find(|b| !b.is_ascii_whitespace())? {
        b'{' => Some(Format::Json),
        0x80..=0x8f | 0xde | 0xdf => Some(Format::Msgpack),
        _ => None,
    }
}

/// Decode an envelope that arrived on `subject` (which starts with `prefix`, e.g. `events.`).
pub fn decode_envelope(
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    body: &[u8],
    prefix: &str,
    ids: &IdGen,
    tenants: &Tenants,
) -> Result<Event, IngressError> {
    let subject_kind = subject.strip_prefix(prefix).filter(|k| !k.is_empty());
    let (mut event, tenant) = match format_of(headers, body) {
        Some(Format::Json) => decode_json(subject, body, subject_kind, ids),
        Some(Format::Msgpack) => decode_msgpack(subject, body, subject_kind, ids),
        None => Err(IngressError::undecodable(
            "body is neither a JSON object nor a MessagePack map",
        )),
    }?;
    super::assign_tenant(&mut event, tenant.as_deref(), headers, tenants)?;
    Ok(event)
}

/// An envelope's event (its actor not yet in a tenant) and the tenant it names.
type Decoded = (Event, Option<String>);

fn decode_json(subject: &str, body: &[u8], subject_kind: Option<&str>, ids: &IdGen) -> Result<Decoded, IngressError> {
    let env: Envelope<&RawValue> = serde_json::from_slice(body).map_err(|e| {
        let detail = format!("invalid JSON envelope: {e}");
        // JSON that parsed but holds a field of the wrong type is invalid, not undecodable.
        if e.is_data() {
            IngressError::invalid(detail)
        } else {
            IngressError::undecodable(detail)
        }
    })?;
    let payload = match env.payload {
        None => empty_map(),
        Some(raw) if raw.get().starts_with('{') => {
            let mut buf = Vec::with_capacity(raw.get().len());
            let mut de = serde_json::Deserializer::from_str(raw.get());
            super::transcode::transcode(&mut de, &mut buf)
                .map_err(|e| IngressError::undecodable(format!("payload: {e}")))?;
            buf
        }
        Some(_) => return Err(IngressError::invalid("payload must be a JSON object")),
    };
    finish(
        subject,
        env.id.map(|i| i.0),
        env.kind,
        env.actor.map(|a| a.0),
        env.time,
        env.source,
        payload,
        subject_kind,
        ids,
    )
    .map(|event| (event, env.tenant))
}

/// How deep a MessagePack payload may nest (its map is the first level). Its JSON form (on
/// `hub.events` and in dead letters, made to be replayed onto `events.<kind>`) is at most one
/// level deeper, and must stay within the 127 levels the JSON decoder reads: deeper payloads were
/// accepted, but their JSON envelope was refused.
const MAX_MSGPACK_PAYLOAD_DEPTH: usize = 100;

fn decode_msgpack(
    subject: &str,
    body: &[u8],
    subject_kind: Option<&str>,
    ids: &IdGen,
) -> Result<Decoded, IngressError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    // `rmp_serde` allows one container fewer than its depth; the envelope's map is one more.
    de.set_max_depth(MAX_MSGPACK_PAYLOAD_DEPTH + 2);
    let env = Envelope::<rmpv::Value>::deserialize(&mut de)
        .map_err(|e| IngressError::undecodable(format!("invalid MessagePack envelope: {e}")))?;
    let payload = match env.payload {
        None => empty_map(),
        // Already-encoded payload bytes are taken as they are, after checking they are a map.
        Some(rmpv::Value::Binary(bytes)) if is_one_map(&bytes) => bytes,
        Some(rmpv::Value::Binary(_)) => {
            return Err(IngressError::invalid(format!(
                "binary payload must be one whole MessagePack map, nested at most {MAX_MSGPACK_PAYLOAD_DEPTH} levels deep"
            )));
        }
        Some(v @ rmpv::Value::Map(_)) => {
            let mut buf = Vec::new();
            rmpv::encode::write_value(&mut buf, &v).map_err(|e| IngressError::undecodable(format!("payload: {e}")))?;
            buf
        }
        Some(_) => return Err(IngressError::invalid("payload must be a MessagePack map")),
    };
    finish(
        subject,
        env.id.map(|i| i.0),
        env.kind,
        env.actor.map(|a| a.0),
        env.time,
        env.source,
        payload,
        subject_kind,
        ids,
    )
    .map(|event| (event, env.tenant))
}

/// Whether `bytes` are one MessagePack map and nothing else, as `rmp_serde` (the plugin SDK's and
/// `MsgpackAsJson`'s decoder) reads it. Checking the first byte was not enough: a truncated map,
/// or one followed by more bytes, reached plugins, which decode the payload whole, and could not
/// be shown as JSON on `hub.events` or in a dead letter.
fn is_one_map(bytes: &[u8]) -> bool {
    if !matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
        return false;
    }
    let mut rest = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    de.set_max_depth(MAX_MSGPACK_PAYLOAD_DEPTH + 1);
    serde::de::IgnoredAny::deserialize(&mut de).is_ok() && rest.is_empty()
}

fn empty_map() -> Vec<u8> {
    vec![0x80]
}

#[allow(clippy::too_many_arguments)]
fn finish(
    subject: &str,
    id: Option<String>,
    kind: Option<String>,
    actor: Option<String>,
    time: Option<i64>,
    source: Option<String>,
    payload: Vec<u8>,
    subject_kind: Option<&str>,
    ids: &IdGen,
) -> Result<Event, IngressError> {
    let actor = actor
        .filter(|a| !a.is_empty())
        .ok_or_else(|| IngressError::invalid("missing \"actor\""))?;
    let kind = match kind.filter(|k| !k.is_empty()) {
        Some(k) => k,
        None => subject_kind
            .map(str::to_owned)
            .ok_or_else(|| IngressError::invalid("missing \"kind\" (and none in the subject)"))?,
    };
    let event = Event {
        id: id.filter(|i| !i.is_empty()).unwrap_or_else(|| ids.next()),
        kind,
        actor,
        time: time.unwrap_or_else(|| ids.time()),
        source: source.unwrap_or_else(|| subject.to_owned()),
        payload,
    };
    event.check().map_err(IngressError::invalid)?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::Reason;

    fn decode(subject: &str, body: &[u8]) -> Result<Event, IngressError> {
        decode_envelope(subject, None, body, "events.", &IdGen::new(), &Tenants::default())
    }

    proptest::proptest! {
        /// What the hub publishes (`hub.events`, dead letters, a cluster's forwards) comes back
        /// in as the same event, its tenant included.
        #[test]
        fn published_envelopes_decode_to_the_same_event_in_the_same_tenant(
            tenant in proptest::option::of("[a-z0-9_-]{1,64}"),
            actor in "[^\u{1f}]{1,64}",
            id in "[^\u{1f}]{1,32}",
            kind in "[a-z]{1,8}(\\.[a-z]{1,8}){0,3}",
            time in 0..crate::limits::MAX_TIME_MS,
            payload in proptest::collection::btree_map(
                "[a-z]{1,8}",
                crate::strategies::json_value(2, 8),
                0..4,
            ),
        ) {
            let event = Event {
                id,
                kind,
                actor: crate::tenant::qualify(tenant.as_deref(), &actor),
                time,
                source: "p".into(),
                payload: rmp_serde::to_vec_named(&payload).expect("msgpack"),
            };
            let json = event.to_json().expect("json");
            let subject = format!("events.{}", event.kind);
            let back = decode_envelope(&subject, None, &json, "events.", &IdGen::new(), &Tenants::open())
                .expect("decodes");
            proptest::prop_assert_eq!(&back.actor, &event.actor);
            proptest::prop_assert_eq!(
                (&back.id, &back.kind, back.time, &back.source),
                (&event.id, &event.kind, event.time, &event.source)
            );
            let decoded: serde_json::Value = rmp_serde::from_slice(&back.payload).expect("payload");
            proptest::prop_assert_eq!(decoded, serde_json::to_value(&payload).expect("value"));
        }
    }

    #[test]
    fn an_envelopes_tenant_puts_its_actor_in_that_tenant_and_an_undeclared_one_is_refused() {
        let declared = [("acme".to_owned(), crate::tenant::TenantConfig::default())].into();
        let tenants = Tenants::new(&declared).expect("valid");
        let decode = |body: &[u8], headers: Option<&async_nats::HeaderMap>| {
            decode_envelope("events.k", headers, body, "events.", &IdGen::new(), &tenants)
        };
        let e = decode(br#"{"actor":"alice","tenant":"acme"}"#, None).expect("declared");
        assert_eq!(crate::tenant::split(&e.actor), (Some("acme"), "alice"));
        let mut header = async_nats::HeaderMap::new();
        header.insert(crate::tenant::HEADER, "acme");
        let e = decode(br#"{"actor":"alice"}"#, Some(&header)).expect("from the header");
        assert_eq!(crate::tenant::split(&e.actor), (Some("acme"), "alice"));
        assert_eq!(decode(br#"{"actor":"alice"}"#, None).expect("default").actor, "alice");
        let e = decode(br#"{"actor":"alice","tenant":"globex"}"#, None).expect_err("undeclared");
        assert_eq!(e.reason, Reason::Invalid);
        assert!(e.detail.contains("unknown tenant \"globex\""), "{}", e.detail);
        let e = decode(br#"{"actor":"a\u001fb"}"#, None).expect_err("separator");
        assert!(e.detail.contains("U+001F"), "{}", e.detail);
    }

    #[test]
    fn json_envelope_with_kind_from_subject() {
        let e = decode("events.payment.failed", br#"{"actor":"c1","payload":{"amount":5}}"#).expect("event");
        assert_eq!(e.kind, "payment.failed");
        assert_eq!(e.actor, "c1");
        assert!(!e.id.is_empty());
        let p: serde_json::Value = rmp_serde::from_slice(&e.payload).expect("msgpack");
        assert_eq!(p["amount"], 5);
    }

    #[test]
    fn msgpack_envelope_round_trips() {
        let body = rmp_serde::to_vec_named(&serde_json::json!({
            "id": "e1", "kind": "cart.updated", "actor": "u1", "time": 7, "payload": {"total": 3}
        }))
        .expect("encode");
        let e = decode("events.x", &body).expect("event");
        assert_eq!((e.id.as_str(), e.kind.as_str(), e.time), ("e1", "cart.updated", 7));
        let p: serde_json::Value = rmp_serde::from_slice(&e.payload).expect("msgpack");
        assert_eq!(p["total"], 3);
    }

    #[test]
    fn bad_input_is_explained() {
        assert_eq!(
            decode("events.k", b"not json").expect_err("refused").reason,
            Reason::Undecodable
        );
        assert_eq!(
            decode("events.k", b"{\"actor\":").expect_err("refused").reason,
            Reason::Undecodable
        );
        let e = decode("events.k", br#"{"kind":"k"}"#).expect_err("refused");
        assert_eq!((e.reason, e.detail.as_str()), (Reason::Invalid, "missing \"actor\""));
        assert!(
            decode("events.k", br#"{"actor":"a","payload":[1]}"#)
                .expect_err("refused")
                .detail
                .contains("object")
        );
        assert!(
            decode("events.k", br#"{"actor":"a","kind":"a b"}"#)
                .expect_err("refused")
                .detail
                .contains("kind")
        );
    }

    #[test]
    fn envelope_times_out_of_range_or_null_are_refused() {
        for time in ["9223372036854775807", "-1", "null", "\"soon\"", "1.5"] {
            let body = format!(r#"{{"actor":"a","kind":"k","time":{time}}}"#);
            let e = decode("events.k", body.as_bytes()).expect_err(&body);
            assert_eq!(e.reason, Reason::Invalid, "{body}: {}", e.detail);
        }
        let body =
            rmp_serde::to_vec_named(&serde_json::json!({"actor": "a", "kind": "k", "time": null})).expect("encode");
        assert!(decode("events.k", &body).is_err(), "MessagePack nil time");
        let e = decode("events.k", br#"{"actor":"a","kind":"k","time":253402300800000}"#).expect_err("year 10000");
        assert!(e.detail.contains("out of range"), "{}", e.detail);
        let ok = decode("events.k", br#"{"actor":"a","kind":"k","time":0}"#).expect("the epoch itself");
        assert_eq!(ok.time, 0);
    }

    #[test]
    fn numeric_actors_are_accepted_in_envelopes_like_in_ingest_rules() {
        let e = decode("events.k", br#"{"actor":12345,"id":7}"#).expect("numeric ids");
        assert_eq!((e.actor.as_str(), e.id.as_str()), ("12345", "7"));
        let body = rmp_serde::to_vec_named(&serde_json::json!({"actor": 42u64, "kind": "k"})).expect("encode");
        assert_eq!(decode("events.k", &body).expect("msgpack").actor, "42");
        for actor in ["1.5", "true", "null", "{}", "[]"] {
            let body = format!(r#"{{"actor":{actor}}}"#);
            assert_eq!(
                decode("events.k", body.as_bytes()).expect_err(&body).reason,
                Reason::Invalid,
                "{body}"
            );
        }
    }

    /// Found by the `envelope` fuzz target: a binary payload was checked by its first byte only.
    #[test]
    fn binary_payloads_that_are_not_one_whole_map_are_refused() {
        let envelope = |payload: &[u8]| {
            let field = |k: &str, v: rmpv::Value| (rmpv::Value::from(k), v);
            let value = rmpv::Value::Map(vec![
                field("actor", "a".into()),
                field("kind", "k".into()),
                field("payload", rmpv::Value::Binary(payload.to_vec())),
            ]);
            let mut body = Vec::new();
            rmpv::encode::write_value(&mut body, &value).expect("encode");
            body
        };
        // The fuzzer's input: a map of one entry, then a byte more.
        for payload in [
            &b"\x81\xff\x67\x70"[..],
            b"\x81",
            b"\x81\xa1k",
            b"\x80\x80",
            b"\x81\xc1\x00",
        ] {
            let e = decode("events.k", &envelope(payload)).expect_err("refused");
            assert_eq!(e.reason, Reason::Invalid, "{payload:x?}: {}", e.detail);
        }
        let ok = decode("events.k", &envelope(b"\x81\xa1k\x92\x01\xc0")).expect("one whole map");
        assert_eq!(ok.payload, b"\x81\xa1k\x92\x01\xc0");
    }

    /// Found by the `envelope` fuzz target: a MessagePack payload nested deeper than the JSON
    /// decoder reads was accepted, and the event's JSON envelope could not be replayed.
    #[test]
    fn msgpack_payloads_too_deep_for_their_json_envelope_are_refused() {
        // A map holding arrays in arrays: `levels` containers deep.
        let payload = |levels: usize| {
            let mut value = rmpv::Value::Array(Vec::new());
            for _ in 2..levels {
                value = rmpv::Value::Array(vec![value]);
            }
            rmpv::Value::Map(vec![("a".into(), value)])
        };
        let envelope = |payload: rmpv::Value, binary: bool| {
            let payload = if binary {
                let mut bytes = Vec::new();
                rmpv::encode::write_value(&mut bytes, &payload).expect("encode");
                rmpv::Value::Binary(bytes)
            } else {
                payload
            };
            let value = rmpv::Value::Map(vec![("actor".into(), "a".into()), ("payload".into(), payload)]);
            let mut body = Vec::new();
            rmpv::encode::write_value(&mut body, &value).expect("encode");
            body
        };
        for binary in [false, true] {
            let deepest = decode("events.k", &envelope(payload(MAX_MSGPACK_PAYLOAD_DEPTH), binary)).expect("deep");
            let json = deepest.to_json().expect("JSON");
            let replayed = decode("events.k", &json).expect("its JSON envelope replays");
            assert_eq!(replayed.payload, deepest.payload);
            let e =
                decode("events.k", &envelope(payload(MAX_MSGPACK_PAYLOAD_DEPTH + 1), binary)).expect_err("too deep");
            let reason = if binary { Reason::Invalid } else { Reason::Undecodable };
            assert_eq!(e.reason, reason, "{}", e.detail);
        }
    }

    #[test]
    fn envelope_actors_over_the_limit_are_refused() {
        let body = format!(r#"{{"actor":"{}"}}"#, "v".repeat(crate::limits::MAX_ACTOR_BYTES + 1));
        let e = decode("events.k", body.as_bytes()).expect_err("too long");
        assert!(e.detail.contains("at most 1024"), "{}", e.detail);
    }
}
