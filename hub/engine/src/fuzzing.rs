//! Entry points shared by the fuzz targets and the corpus replay test.
//!
//! Each entry point takes the bytes libFuzzer made (the targets in `hub/fuzz/fuzz_targets/` hand
//! them over as they are), drives the real code with them, and panics when a property the hub
//! promises does not hold. A finding is then a crash libFuzzer keeps, and once its input is in
//! `hub/fuzz/corpus/<target>/` the engine's tests check it on every run (see the tests below), so
//! the suite asks exactly what the fuzzer asked.
//!
//! Inputs are a few lines of text followed by a body, so seeds can be written by hand; each
//! entry point gives its layout. Ids and times that an input lacks come from a fixed place in
//! the input stream, so an input decodes the same every time it is replayed.

use crate::api::{ApiState, Auth};
use crate::arbiter::{Policies, PolicyStore};
use crate::config::{EngineConfig, IngestRule, PluginLimits, PushConfig};
use crate::dead_letter::{DeadLetter, Reason};
use crate::delivery::Sinks;
use crate::delivery::push::PushHub;
use crate::egress::{Captured, Egress};
use crate::event::{Event, MsgpackAsJson, check_actor, is_subject_safe};
use crate::ingress::{CompiledRule, IdGen, IngressError, RuleSet, decode_envelope, decode_raw};
use crate::limits;
use crate::registry::Registry;
use crate::router::Router;
use crate::runtime::Runtime;
use crate::shard::{Shard, ShardSetup};
use crate::state::{Committer, Db, ProfileError, Profiles};
use crate::stats::PluginStats;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tower::ServiceExt;

/// Where and when the fuzzed inputs were stored in the input stream: what fills in a missing id
/// or time, the same on every replay.
const STREAM_SEQ: u64 = 1;
const STORED_AT: i64 = 1_700_000_000_000;

fn ids() -> IdGen {
    IdGen::for_stream_input(None, STREAM_SEQ, STORED_AT)
}

/// The first `N` lines of `data` (without their `\n`; missing ones are empty) and the rest.
fn split_lines<const N: usize>(data: &[u8]) -> ([&[u8]; N], &[u8]) {
    let mut lines = [&data[..0]; N];
    let mut rest = data;
    for line in &mut lines {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                *line = &rest[..i];
                rest = &rest[i + 1..];
            }
            None => {
                *line = rest;
                rest = &rest[rest.len()..];
            }
        }
    }
    (lines, rest)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// NATS headers from `Name:value` entries separated by tabs; entries NATS could not carry are
/// left out. An empty line is a message without headers.
fn nats_headers(line: &[u8]) -> Option<async_nats::HeaderMap> {
    if line.is_empty() {
        return None;
    }
    let mut headers = async_nats::HeaderMap::new();
    for entry in line.split(|&b| b == b'\t') {
        let entry = text(entry);
        let (name, value) = entry.split_once(':').unwrap_or((entry.as_str(), ""));
        if let (Ok(name), Ok(value)) = (
            name.parse::<async_nats::HeaderName>(),
            value.parse::<async_nats::HeaderValue>(),
        ) {
            headers.append(name, value);
        }
    }
    Some(headers)
}

/// What every event the hub takes in satisfies, whichever way it came (see `event::Event::check`,
/// restated here with the documented bounds rather than called).
fn assert_valid_event(e: &Event) {
    assert!(
        (1..=limits::MAX_ACTOR_BYTES).contains(&e.actor.len()),
        "actor of {} bytes",
        e.actor.len()
    );
    assert!(
        (1..=limits::MAX_ID_BYTES).contains(&e.id.len()),
        "id of {} bytes",
        e.id.len()
    );
    assert!(
        e.kind.len() <= limits::MAX_KIND_BYTES && is_subject_safe(&e.kind),
        "kind {:?}",
        e.kind
    );
    assert!(
        (limits::MIN_TIME_MS..=limits::MAX_TIME_MS).contains(&e.time),
        "time {}",
        e.time
    );
    assert_one_map(&e.payload);
}

/// Plugins get the payload as one MessagePack map, which they decode whole with `rmp_serde` (as
/// the hub does to show it as JSON): nothing missing, nothing after it.
fn assert_one_map(payload: &[u8]) {
    use serde::Deserialize;
    let mut rest = payload;
    let value = rmpv::Value::deserialize(&mut rmp_serde::Deserializer::new(&mut rest))
        .unwrap_or_else(|e| panic!("payload {payload:x?} is not MessagePack: {e}"));
    assert!(value.is_map(), "payload {value} is not a map");
    assert!(rest.is_empty(), "{} bytes after the payload's map", rest.len());
}

/// A refused input is dead-lettered with its reason; building the letter must work for any
/// detail and subject (they become NATS headers).
fn assert_dead_letter(e: &IngressError, subject: &str, body: &[u8]) {
    assert!(!e.detail.is_empty(), "an error without a detail: {e:?}");
    let letter = DeadLetter::message(
        e.reason,
        e.detail.clone(),
        subject,
        None,
        bytes::Bytes::copy_from_slice(body),
    );
    let out = letter.into_outbound();
    assert_eq!(out.subject, format!("hub.dlq.{}", e.reason.as_str()));
}

/// The payload as the JSON the hub republishes it as, read back (so `2.7e-6` and `0.0000027` are
/// the same number); `None` if it has no JSON form (a map key that is not a string or a number).
fn payload_json(payload: &[u8]) -> Option<Value> {
    let text = serde_json::to_string(&MsgpackAsJson(payload)).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("the hub wrote {text:?}, which is not JSON: {e}")))
}

/// The `envelope` target: `<subject after "events.">\n<Content-Type, or nothing>\n<body>`.
///
/// Properties: decoding is deterministic; an event meets the limits and its payload is one
/// MessagePack map; the event's JSON envelope (what `hub.events.*` and dead letters carry, made
/// to be replayed) and its MessagePack envelope decode back to the same event; a refusal is
/// `undecodable` or `invalid`, and its dead letter can be built.
pub fn envelope(data: &[u8]) {
    let ([tail, content_type], body) = split_lines(data);
    let subject = format!("events.{}", text(tail));
    let headers = (!content_type.is_empty()).then(|| {
        let mut h = async_nats::HeaderMap::new();
        if let Ok(v) = text(content_type).parse::<async_nats::HeaderValue>() {
            h.insert("Content-Type", v);
        }
        h
    });
    let decode = |body: &[u8], headers: Option<&async_nats::HeaderMap>| {
        decode_envelope(
            &subject,
            headers,
            body,
            "events.",
            &ids(),
            &crate::tenant::Tenants::default(),
        )
    };
    let decoded = decode(body, headers.as_ref());
    assert_eq!(decoded, decode(body, headers.as_ref()), "decoding is deterministic");
    let event = match decoded {
        Ok(event) => event,
        Err(e) => {
            assert!(matches!(e.reason, Reason::Undecodable | Reason::Invalid), "{e:?}");
            return assert_dead_letter(&e, &subject, body);
        }
    };
    assert_valid_event(&event);

    if let Ok(json) = event.to_json() {
        let again =
            decode(&json, None).unwrap_or_else(|e| panic!("the JSON envelope {json:?} of {event:?} is refused: {e}"));
        assert_eq!(
            (&again.id, &again.kind, &again.actor, again.time, &again.source),
            (&event.id, &event.kind, &event.actor, event.time, &event.source),
            "the JSON envelope decodes to another event"
        );
        assert_eq!(
            payload_json(&again.payload),
            payload_json(&event.payload),
            "the payload changed through its JSON envelope"
        );
    }

    let key = |k: &str| rmpv::Value::from(k);
    let msgpack = rmpv::Value::Map(vec![
        (key("id"), key(&event.id)),
        (key("kind"), key(&event.kind)),
        (key("actor"), key(&event.actor)),
        (key("time"), rmpv::Value::from(event.time)),
        (key("source"), key(&event.source)),
        (key("payload"), rmpv::Value::Binary(event.payload.clone())),
    ]);
    let mut encoded = Vec::new();
    rmpv::encode::write_value(&mut encoded, &msgpack).expect("encoding into memory");
    let again =
        decode(&encoded, None).unwrap_or_else(|e| panic!("the MessagePack envelope of {event:?} is refused: {e}"));
    assert_eq!(again, event, "the MessagePack envelope decodes to another event");
}

/// The kind and subject of the rule [`ingest`] adds to make the rules read the whole JSON tree.
const TREE_PROBE: &str = "fuzz.tree.probe";

fn rule(subject: &str, kind: &str) -> IngestRule {
    IngestRule {
        subject: subject.into(),
        kind: kind.into(),
        actor_header: None,
        actor_pointer: None,
        id_header: None,
        id_pointer: None,
        time_pointer: None,
        tenant: None,
    }
}

/// The rule sets an `ingest` input names; anything else is the local default's `web.*` rule.
fn fixed_rules(name: &[u8]) -> Vec<IngestRule> {
    match name {
        b"nested" => vec![IngestRule {
            actor_pointer: Some("/user/id".into()),
            id_header: Some("Msg-Id".into()),
            time_pointer: Some("/meta/ts".into()),
            tenant: None,
            ..rule("app.>", "app.{2}.{subject}")
        }],
        b"header" => vec![IngestRule {
            actor_header: Some("X-Customer".into()),
            id_pointer: Some("/id".into()),
            ..rule("legacy.>", "legacy.{subject}")
        }],
        b"multi" => vec![
            IngestRule {
                actor_pointer: Some("/customer".into()),
                id_pointer: Some("/order".into()),
                time_pointer: Some("/at".into()),
                tenant: None,
                ..rule("shop.*.*", "shop.{3}")
            },
            IngestRule {
                actor_pointer: Some("/a~1b".into()),
                time_pointer: Some("/t~0".into()),
                tenant: None,
                ..rule("shop.>", "{1}.{2}")
            },
            IngestRule {
                actor_header: Some("Hub-Actor".into()),
                ..rule(">", "any.{1}")
            },
        ],
        _ => crate::config::Config::local_default().ingest,
    }
}

/// A rule from `subject|kind|actor|id|time`: a locator is a JSON pointer, or `h:<header>`;
/// `&` joins a header and a pointer (which a rule must refuse).
fn derived_rule(def: &[u8]) -> IngestRule {
    let def = text(def);
    let mut fields = def.split('|');
    let mut next = || fields.next().unwrap_or("").to_owned();
    let (subject, kind, actor, id, time) = (next(), next(), next(), next(), next());
    let locator = |field: &str| {
        let (mut header, mut pointer) = (None, None);
        for part in field.split('&').filter(|p| !p.is_empty()) {
            match part.strip_prefix("h:") {
                Some(h) => header = Some(h.to_owned()),
                None => pointer = Some(part.to_owned()),
            }
        }
        (header, pointer)
    };
    let (actor_header, actor_pointer) = locator(&actor);
    let (id_header, id_pointer) = locator(&id);
    IngestRule {
        subject,
        kind,
        actor_header,
        actor_pointer,
        id_header,
        id_pointer,
        time_pointer: (!time.is_empty()).then_some(time),
        tenant: None,
    }
}

/// A payload as a JSON value (a map's repeated key: its last value, as plugins read it).
fn payload_value(payload: &[u8]) -> Value {
    rmp_serde::from_slice(payload).unwrap_or_else(|e| panic!("payload {payload:x?}: {e}"))
}

/// The `ingest` target: `<rules>\n<subject>\n<headers>\n<body>`. `<rules>` names a fixed set
/// (`web`, `nested`, `header`, `multi`) or defines one rule as `rule:<see derived_rule>`;
/// `<headers>` is `Name:value` entries separated by tabs (an empty line: no headers).
///
/// Properties: a rule is compiled or refused with a reason, never accepted to fail later;
/// decoding is deterministic; the one-pass reader of top-level fields and the JSON tree reader
/// agree (same event and payload, or the same reason); an event meets the limits, its payload
/// is one MessagePack map, its source is the subject, and a rule of the set matches the
/// subject; a refusal's dead letter can be built.
pub fn ingest(data: &[u8]) {
    let ([spec, subject, header_line], body) = split_lines(data);
    let rules = match spec.strip_prefix(b"rule:") {
        Some(def) => match CompiledRule::compile(&derived_rule(def)) {
            Ok(rule) => vec![rule],
            Err(why) => return assert!(why.starts_with("ingest rule for "), "{why}"),
        },
        None => fixed_rules(spec)
            .iter()
            .map(|r| CompiledRule::compile(r).expect("the fixed rules are valid"))
            .collect(),
    };
    let subject = text(subject);
    let headers = nats_headers(header_line);
    let decode = |set: &RuleSet| {
        decode_raw(
            set,
            &subject,
            headers.as_ref(),
            body,
            &ids(),
            &crate::tenant::Tenants::default(),
        )
    };
    let set = RuleSet::new(rules.clone());
    let decoded = decode(&set);
    assert_eq!(decoded, decode(&set), "decoding is deterministic");

    // One more rule, which never fits and has a nested pointer, makes the set read the whole
    // JSON tree instead of one pass over the top-level fields: the answer must not change.
    let probe = IngestRule {
        actor_pointer: Some("/fuzz/probe".into()),
        ..rule(TREE_PROBE, TREE_PROBE)
    };
    let mut with_probe = rules.clone();
    with_probe.push(CompiledRule::compile(&probe).expect("the probe is valid"));
    let tree = decode(&RuleSet::new(with_probe));
    match (&decoded, &tree) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                (&a.id, &a.kind, &a.actor, a.time, &a.source),
                (&b.id, &b.kind, &b.actor, b.time, &b.source),
                "the one-pass and tree readers found different events"
            );
            assert_eq!(
                payload_value(&a.payload),
                payload_value(&b.payload),
                "the one-pass and tree readers made different payloads"
            );
        }
        (Err(a), Err(b)) => assert_eq!(a.reason, b.reason, "one pass: {a:?}; tree: {b:?}"),
        (Err(a), Ok(b)) if a.reason == Reason::NoRule && b.kind == TREE_PROBE => {}
        (a, b) => panic!("the one-pass reader says {a:?}, the tree reader {b:?}"),
    }

    match decoded {
        Ok(event) => {
            assert_valid_event(&event);
            assert_eq!(event.source, subject);
            assert!(
                rules
                    .iter()
                    .any(|r| hub_plugin_sdk::pattern::kind_matches(r.subject(), &subject)),
                "no rule matches {subject:?}"
            );
        }
        Err(e) => assert_dead_letter(&e, &subject, body),
    }
}

/// RFC 7386 JSON merge patch, written from the RFC: what a profile update must do.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut merged = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            merged.remove(key);
        } else {
            let current = merged.get(key).cloned().unwrap_or(Value::Null);
            merged.insert(key.clone(), merge_patch(&current, value));
        }
    }
    Value::Object(merged)
}

/// What an update of a profile must come to.
#[derive(Debug, PartialEq)]
enum Expected {
    Stored(Value),
    NotAnObject,
    Invalid,
}

fn expected_update(actor: &str, before: Option<&Value>, input: &Value, merge: bool) -> Expected {
    if !input.is_object() {
        return Expected::NotAnObject;
    }
    if check_actor(actor).is_err() {
        return Expected::Invalid;
    }
    let empty = Value::Object(Map::new());
    let after = if merge {
        merge_patch(before.unwrap_or(&empty), input)
    } else {
        input.clone()
    };
    match rmp_serde::to_vec_named(&after) {
        Ok(stored) if stored.len() <= limits::MAX_PROFILE_BYTES => Expected::Stored(after),
        _ => Expected::Invalid,
    }
}

/// Profiles on sled in a temporary folder, for the `profile_patch` target; one per process.
pub struct ProfilePatch {
    profiles: Profiles,
    _db: Db,
    _dir: tempfile::TempDir,
}

impl Default for ProfilePatch {
    fn default() -> Self {
        Self::new()
    }
}

impl ProfilePatch {
    pub fn new() -> ProfilePatch {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let db = Db::open(dir.path(), 1000).expect("sled");
        ProfilePatch {
            profiles: db.profiles.clone(),
            _db: db,
            _dir: dir,
        }
    }

    /// The `profile_patch` target: `<actor>\n<stored profile: JSON on one line, or nothing>\n<patch>`.
    ///
    /// The stored profile is put in place with a replacement, then the patch is merged in, once
    /// through `Profiles::merge` (the admin API's `PATCH`) and once through a NATS message on
    /// `profiles.<actor>`. Properties: both give what RFC 7386 says (checked against
    /// [`merge_patch`]), or refuse for the documented reason (not an object, actor id or size
    /// out of bounds, not JSON) and leave what was stored; what is stored reads back as it was
    /// answered; merging the same patch again changes nothing.
    pub fn run(&self, data: &[u8]) {
        let ([actor, stored], patch_bytes) = split_lines(data);
        let actor = text(actor);
        let stored: Option<Value> = serde_json::from_slice(stored).ok();
        let before = self.reset(&actor, stored.as_ref());

        let patch: Option<Value> = serde_json::from_slice(patch_bytes).ok();
        let expected = patch
            .as_ref()
            .map(|p| expected_update(&actor, before.as_ref(), p, true));
        if let (Some(patch), Some(expected)) = (&patch, &expected) {
            let merged = self.profiles.merge(&actor, patch);
            self.check(&actor, before.as_ref(), expected, merged);
            if let Expected::Stored(_) = expected {
                let again = self.profiles.merge(&actor, patch);
                self.check(&actor, None, expected, again);
            }
        }

        assert_eq!(self.reset(&actor, stored.as_ref()), before);
        let subject = format!("profiles.{actor}");
        let decoder = crate::ingress::Decoder::Profile {
            prefix: "profiles.".into(),
            profiles: Some(self.profiles.clone()),
            tenants: crate::tenant::Tenants::default(),
        };
        let over_nats = decoder
            .decode(&subject, None, patch_bytes, &crate::ingress::IdGen::new())
            .map(|_| ());
        let now = self.profiles.get(&actor).expect("sled reads");
        match (over_nats, expected) {
            (Err(e), _) if actor.is_empty() => assert_eq!(e.reason, Reason::Invalid),
            (Err(e), None) => assert_eq!(e.reason, Reason::Undecodable, "{e:?}"),
            (Ok(()), Some(Expected::Stored(v))) => assert_eq!(now, Some(v), "over NATS"),
            (Err(e), Some(Expected::NotAnObject | Expected::Invalid)) => {
                assert_eq!(e.reason, Reason::Invalid, "{e:?}");
                assert_eq!(now, before, "a refused update over NATS changed the profile");
            }
            (got, expected) => panic!("over NATS: {got:?}, expected {expected:?}"),
        }
        self.profiles.remove(&actor).expect("sled removes");
    }

    /// Store `profile` (or nothing) as the actor's profile; what is stored after.
    fn reset(&self, actor: &str, profile: Option<&Value>) -> Option<Value> {
        self.profiles.remove(actor).expect("sled removes");
        let profile = profile?;
        let expected = expected_update(actor, None, profile, false);
        let replaced = self.profiles.replace(actor, profile);
        self.check(actor, None, &expected, replaced);
        self.profiles.get(actor).expect("sled reads")
    }

    /// `got` is what `expected` says; `before` (when known) is still stored after a refusal.
    fn check(&self, actor: &str, before: Option<&Value>, expected: &Expected, got: Result<Value, ProfileError>) {
        let now = self.profiles.get(actor).expect("sled reads");
        match (got, expected) {
            (Ok(v), Expected::Stored(e)) => {
                assert_eq!(&v, e, "the answer");
                assert_eq!(now.as_ref(), Some(e), "what is stored");
            }
            (Err(ProfileError::NotAnObject), Expected::NotAnObject)
            | (Err(ProfileError::Invalid(_)), Expected::Invalid) => {
                if before.is_some() {
                    assert_eq!(now.as_ref(), before, "a refused update changed the profile");
                }
            }
            (got, expected) => panic!("profile update of {actor:?}: {got:?}, expected {expected:?}"),
        }
    }
}

/// The admin token of the `rest_api` harness.
pub const ADMIN_TOKEN: &str = "fuzz-admin-token";
/// The push secret of the `rest_api` harness (device tokens are HMACs of the actor with it).
pub const PUSH_SECRET: &str = "fuzz-push-secret";
/// Requests per `rest_api` input, separated by [`REQUEST_SEPARATOR`].
const MAX_REQUESTS: usize = 4;
const REQUEST_SEPARATOR: &[u8] = b"\n===\n";
/// The plugin the registry holds at the start of every input.
const PLUGIN: &str = "bare";

/// A hub without NATS for the `rest_api` target: the whole HTTP router (admin API, health,
/// metrics, push) over real state on sled in a temporary folder, a real registry and one shard
/// thread (whose egress is captured). The NATS client never connects, so `/healthz` says
/// `degraded`. Made once per process; each input starts from the same state (see
/// [`RestApi::restore`]).
pub struct RestApi {
    tokio: tokio::runtime::Runtime,
    app: axum::Router,
    db: Db,
    registry: Arc<Registry>,
    policies: PolicyStore,
    out: Captured,
    wasm: bytes::Bytes,
    _committer: Committer,
    _dir: tempfile::TempDir,
}

impl Default for RestApi {
    fn default() -> Self {
        Self::new()
    }
}

/// One fuzzed request, as the checks need it.
struct Sent {
    method: Method,
    /// The path's segments, as the handlers see them once decoded.
    segments: Vec<String>,
    path: String,
    authorized: bool,
    body: bytes::Bytes,
}

impl Sent {
    fn route(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({} body bytes)", self.method, self.path, self.body.len())
    }
}

/// What the answers of one input so far say is stored.
#[derive(Default)]
struct Model {
    /// Profiles by actor (none at the start of an input).
    profiles: HashMap<String, Value>,
    /// Policies set by a `PUT` that succeeded.
    policies: Option<Value>,
    plugins_changed: bool,
}

/// Percent-encode what may not stand in a URI as it is (and `%`, so the handlers see `raw`).
fn encode(raw: &[u8], keep: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request from `<METHOD> <path>[?query]\n<Name: value lines>\n\n<body>`.
fn parse_request(raw: &[u8]) -> Option<(Request<Body>, Sent)> {
    let ([first], rest) = split_lines(raw);
    let space = first.iter().position(|&b| b == b' ').unwrap_or(first.len());
    let method = Method::from_bytes(&first[..space]).ok()?;
    let target = first.get(space + 1..).unwrap_or_default();
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], Some(&target[q + 1..])),
        None => (target, None),
    };
    let path = path.strip_prefix(b"/").unwrap_or(path);
    const PATH_KEEP: &[u8] = b"-._~!$&'()*+,;=:@";
    let raw_segments: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let mut uri = String::new();
    for segment in &raw_segments {
        uri.push('/');
        uri.push_str(&encode(segment, PATH_KEEP));
    }
    if let Some(query) = query {
        uri.push('?');
        uri.push_str(&encode(query, b"-._~!$&'()*+,;=:@/?"));
    }
    let uri: Uri = uri.parse().ok()?;

    let mut request = Request::builder().method(method.clone()).uri(uri);
    let mut rest = rest;
    let mut authorized = false;
    loop {
        let ([line], after) = split_lines(rest);
        rest = after;
        if line.is_empty() {
            break;
        }
        let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
        let (name, value) = (
            line[..colon].trim_ascii(),
            line.get(colon + 1..).unwrap_or_default().trim_ascii(),
        );
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) else {
            continue;
        };
        // The server frames the body; the body is what it is.
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::AUTHORIZATION {
            authorized |= value.to_str().ok().and_then(bearer).is_some_and(|t| t == ADMIN_TOKEN);
        }
        request = request.header(name, value);
    }
    let body = bytes::Bytes::copy_from_slice(rest);
    if !body.is_empty() {
        request = request.header(header::CONTENT_LENGTH, body.len());
    }
    let request = request.body(Body::from(body.clone())).ok()?;
    let sent = Sent {
        method,
        segments: raw_segments.iter().map(|s| text(s)).collect(),
        path: text(target),
        authorized,
        body,
    };
    Some((request, sent))
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case, RFC 9110).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl RestApi {
    pub fn new() -> RestApi {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let _entered = tokio.enter();
        let dir = tempfile::tempdir().expect("a temporary folder");
        let db = Db::open(dir.path(), 1000).expect("sled");
        let limits = PluginLimits::default();
        let max_module_bytes = limits.max_module_bytes;
        let runtime = Runtime::new(limits).expect("wasm runtime");
        let (router, mut receivers) = Router::new(1, 64);
        let registry = Registry::open(runtime, db.sled(), router.clone()).expect("registry");
        registry.start().expect("registry starts");
        let policies = PolicyStore::open(db.sled(), &Policies::default()).expect("policies");
        let (egress, out) = Egress::captured();
        let push_config = PushConfig {
            secret: Some(PUSH_SECRET.into()),
            ..PushConfig::default()
        };
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let push = PushHub::start(&push_config, listen, egress.clone());
        let stats = Arc::new(PluginStats::new(1));
        let (mut wheels, _) = db.load_timers(1, |_| 0).expect("timers");
        let (committer, commits) = Committer::start(4, None).expect("committer");
        let sinks = Sinks::start(&Default::default(), push.clone(), egress.clone());
        let setup = ShardSetup {
            id: 0,
            rx: receivers.remove(0),
            router: router.clone(),
            egress: egress.clone(),
            live: registry.live().clone(),
            stats: stats.clone(),
            db: db.clone(),
            timers: wheels.remove(0),
            quotas: Default::default(),
            commits,
            engine: EngineConfig::default(),
            policies: policies.clone(),
            sinks: sinks.clone(),
            admission: Default::default(),
            checkpoints: crate::durable::Checkpoints::load(db.sled(), 1, |_| 0, &[])
                .expect("checkpoints")
                .remove(0),
            handoffs: crate::durable::Handoffs::load(db.sled(), false, 1, |_| 0)
                .expect("handoffs")
                .remove(0),
            keep_events: false,
            cluster: None,
        };
        std::thread::Builder::new()
            .name("fuzz-shard".into())
            .spawn(move || Shard::new(setup).run())
            .expect("shard thread");
        let nats = tokio
            .block_on(
                async_nats::ConnectOptions::new()
                    .retry_on_initial_connect()
                    .connect("nats://127.0.0.1:1"),
            )
            .expect("a client that connects in the background");
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let (status, _sampling) = {
            let _in_runtime = tokio.enter();
            crate::status::StatusBoard::start(crate::status::Sources {
                metrics: metrics.clone(),
                registry: registry.clone(),
                stats: stats.clone(),
                input: crate::config::InputMode::Core,
                queue_capacity: 1024,
                kept: None,
                tenants: Default::default(),
            })
        };
        let app = crate::http::router(crate::http::HttpState {
            metrics,
            nats: nats.clone(),
            api: ApiState {
                tenants: crate::tenant::Tenants::default(),
                db: db.clone(),
                router,
                registry: registry.clone(),
                stats,
                profiles: db.profiles.clone(),
                policies: policies.clone(),
                auth: Auth::token(ADMIN_TOKEN),
                max_module_bytes,
                // No server behind the client: the dead-letter calls answer 503.
                dead_letters: None,
                nats,
                status,
                sinks,
                backtests: None,
                cluster: None,
            },
            push,
        });
        let wasm = std::fs::read(std::path::Path::new(crate::FIXTURE_PLUGINS).join("bare.wasm"))
            .expect("bare.wasm, built with the engine");
        let harness = RestApi {
            tokio,
            app,
            db,
            registry,
            policies,
            out,
            wasm: wasm.into(),
            _committer: committer,
            _dir: dir,
        };
        harness.restore(&Model {
            plugins_changed: true,
            ..Model::default()
        });
        harness
    }

    /// The `rest_api` target: up to four requests separated by `\n===\n`, each
    /// `<METHOD> <path>[?query]\n<Name: value lines>\n\n<body>` (the path and query are
    /// percent-encoded where they must be, so the handlers see the bytes as written).
    ///
    /// Properties: no answer is a server error, except `/healthz` saying 503 without NATS; every
    /// error answer is JSON `{"error": "<text>"}`; every other answer is JSON, except the
    /// metrics text and the push stream; no `/api/` call but the OpenAPI document succeeds
    /// without the admin token; a profile answered after `PUT` or `PATCH` is the body, or the
    /// body merged into the profile as RFC 7386 says, and `GET /api/actors/{id}` shows what the
    /// answers before said; `GET /api/policies` shows the policies a `PUT` answered.
    ///
    /// Returns the status of each request sent (a line that is no request is skipped).
    pub fn run(&self, data: &[u8]) -> Vec<u16> {
        let mut model = Model::default();
        let statuses = self.tokio.block_on(async {
            let mut statuses = Vec::new();
            for raw in requests(data).take(MAX_REQUESTS) {
                let Some((request, sent)) = parse_request(raw) else {
                    continue;
                };
                let response = self.app.clone().oneshot(request).await.unwrap_or_else(|e| match e {});
                statuses.push(response.status().as_u16());
                check(&sent, response, &mut model).await;
            }
            statuses
        });
        self.restore(&model);
        statuses
    }

    /// Back to the state every input starts from: no profiles, the default policies, and the
    /// plugin at versions 1 and 2 (2 active, so a rollback has somewhere to go).
    fn restore(&self, model: &Model) {
        self.db.profiles.clear().expect("sled clears");
        if model.policies.is_some() {
            self.policies.replace(Policies::default()).expect("policies");
        }
        drop(self.out.take());
        if !model.plugins_changed {
            return;
        }
        let registry = &self.registry;
        self.tokio.block_on(async {
            let records = registry.plugins().expect("registry");
            // Rolling back and enabling (one instantiation at most) undo most changes; a plugin
            // deleted or given another version is made again.
            if let [record] = records.as_slice()
                && record.name == PLUGIN
                && record.versions.iter().map(|v| v.version).eq([1, 2])
            {
                if record.active != 2 {
                    registry.rollback(PLUGIN, Some(2)).await.expect("rollback");
                }
                if !record.enabled {
                    registry.set_enabled(PLUGIN, true).await.expect("enable");
                }
                return;
            }
            for record in records {
                registry.delete(&record.name).await.expect("delete");
            }
            registry
                .upload(PLUGIN, self.wasm.clone(), Some(serde_json::json!({})))
                .await
                .expect("upload");
            registry
                .set_config(PLUGIN, serde_json::json!({"fuzz": true}))
                .await
                .expect("config");
        });
    }
}

/// The requests of a `rest_api` input.
fn requests(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let data = rest?;
        match data
            .windows(REQUEST_SEPARATOR.len())
            .position(|w| w == REQUEST_SEPARATOR)
        {
            Some(i) => {
                rest = Some(&data[i + REQUEST_SEPARATOR.len()..]);
                Some(&data[..i])
            }
            None => {
                rest = None;
                Some(data)
            }
        }
    })
}

fn content_type(response: &axum::response::Response) -> String {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The properties of one answer (see [`RestApi::run`]), and what it says is stored.
async fn check(sent: &Sent, response: axum::response::Response, model: &mut Model) {
    let status = response.status();
    let route = sent.route();
    let healthz = route == ["healthz"];
    assert!(
        !status.is_server_error() || (healthz && status == StatusCode::SERVICE_UNAVAILABLE),
        "{sent:?} answered {status}"
    );
    let content_type = content_type(&response);
    if content_type.starts_with("text/event-stream") {
        // A device's stream stays open: its answer is all there is to check.
        assert!(
            route.len() == 2 && route[0] == "push" && status == StatusCode::OK,
            "{sent:?}: a stream"
        );
        return;
    }
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("an answer's body");
    if sent.method == Method::HEAD {
        return;
    }
    if route == ["metrics"] && status == StatusCode::OK {
        assert!(content_type.starts_with("text/plain"), "{sent:?}: {content_type}");
        return;
    }
    assert!(
        content_type.starts_with("application/json"),
        "{sent:?} answered {status} as {content_type:?}: {}",
        String::from_utf8_lossy(&body)
    );
    let answer: Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{sent:?}: the answer is not JSON: {e}"));
    if status.is_client_error() {
        let error = answer.get("error").and_then(Value::as_str);
        assert!(
            answer.as_object().is_some_and(|o| o.len() == 1) && error.is_some_and(|e| !e.is_empty()),
            "{sent:?} answered {status} with {answer}"
        );
        return;
    }
    let api = route.first() == Some(&"api");
    if status.is_success() && api && route != ["api", "openapi.json"] {
        assert!(sent.authorized, "{sent:?} succeeded without the admin token");
    }
    if !status.is_success() {
        return;
    }
    let sent_json = || serde_json::from_slice::<Value>(&sent.body).expect("a body the handler took");
    match (&sent.method, route.as_slice()) {
        (&Method::PUT, ["api", "actors", id, "profile"]) => {
            let body = sent_json();
            assert_eq!(answer, body, "{sent:?}: the profile answered is not the one sent");
            model.profiles.insert((*id).to_owned(), answer);
        }
        (&Method::PATCH, ["api", "actors", id, "profile"]) => {
            let before = model
                .profiles
                .get(*id)
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new()));
            let expected = merge_patch(&before, &sent_json());
            assert_eq!(answer, expected, "{sent:?}: not the merge of the patch into {before}");
            model.profiles.insert((*id).to_owned(), answer);
        }
        (&Method::GET, ["api", "actors", id]) => {
            let stored = model.profiles.get(*id).cloned().unwrap_or(Value::Null);
            assert_eq!(answer["actor"], Value::from(*id), "{sent:?}");
            assert_eq!(answer["profile"], stored, "{sent:?}: another profile than stored");
        }
        (&Method::DELETE, ["api", "actors", id]) => {
            let had = model.profiles.remove(*id).is_some();
            assert_eq!(answer["actor"], Value::from(*id), "{sent:?}");
            assert_eq!(
                answer["profile"],
                Value::from(had),
                "{sent:?}: erased a profile that was not there, or not one that was"
            );
        }
        (&Method::GET, ["api", "policies"]) => {
            if let Some(policies) = &model.policies {
                assert_eq!(&answer, policies, "{sent:?}: other policies than set");
            }
        }
        (&Method::PUT, ["api", "policies"]) => model.policies = Some(answer),
        (m, ["api", "plugins", ..]) if *m != Method::GET => model.plugins_changed = true,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::AssertUnwindSafe;
    use std::path::PathBuf;

    /// The inputs of `hub/fuzz/corpus/<target>/`: the seeds and every finding.
    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| {
                let path = entry.expect("a corpus entry").path();
                let data = std::fs::read(&path).expect("a corpus file");
                (path, data)
            })
            .collect();
        inputs.sort();
        assert!(
            inputs.len() >= 5,
            "{}: a corpus of {} inputs",
            dir.display(),
            inputs.len()
        );
        inputs
    }

    /// Run every input of `target`'s corpus, naming the ones whose properties do not hold.
    fn replay(target: &str, run: impl Fn(&[u8])) {
        let failed: Vec<String> = corpus(target)
            .into_iter()
            .filter_map(|(path, data)| {
                std::panic::catch_unwind(AssertUnwindSafe(|| run(&data)))
                    .err()
                    .map(|_| path.display().to_string())
            })
            .collect();
        assert!(failed.is_empty(), "failed: {failed:#?}");
    }

    #[test]
    fn envelope_corpus() {
        replay("envelope", envelope);
    }

    #[test]
    fn ingest_corpus() {
        replay("ingest", ingest);
    }

    #[test]
    fn profile_patch_corpus() {
        let harness = ProfilePatch::new();
        replay("profile_patch", |data| harness.run(data));
    }

    #[test]
    fn rest_api_corpus() {
        let harness = RestApi::new();
        replay("rest_api", |data| {
            harness.run(data);
        });
    }

    /// The seeds reach the handlers they are written for, and each input starts from the same
    /// state: what makes the fuzzer's inputs worth running.
    #[test]
    fn rest_api_seeds_reach_their_handlers() {
        let harness = RestApi::new();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/rest_api");
        let run = |seed: &str| harness.run(&std::fs::read(dir.join(seed)).expect("a seed"));
        for _ in 0..2 {
            assert_eq!(run("healthz"), [503]);
            assert_eq!(run("metrics"), [200]);
            assert_eq!(run("openapi"), [200]);
            assert_eq!(run("plugins-no-token"), [401, 401, 401]);
            assert_eq!(run("plugin-show"), [200, 404, 404]);
            assert_eq!(run("plugin-config"), [200, 200]);
            assert_eq!(run("plugin-rollback"), [200, 200, 404, 400]);
            assert_eq!(run("plugin-enable-disable"), [200, 200, 200, 200]);
            assert_eq!(run("plugin-delete"), [200, 404, 200]);
            assert_eq!(run("plugin-upload-garbage"), [422]);
            assert_eq!(run("plugin-upload-wrong-type"), [415, 400]);
            assert_eq!(run("profile-cycle"), [200, 200, 200, 200]);
            assert_eq!(run("profile-bad"), [400, 400, 400]);
            assert_eq!(run("policies"), [200, 200, 200]);
            assert_eq!(run("policies-bad"), [422, 422, 422, 422]);
            assert_eq!(run("push-token"), [200, 401, 401, 401]);
            assert_eq!(run("unknown-routes"), [404, 401, 404, 405]);
        }
    }

    #[test]
    fn inputs_split_into_lines_and_requests() {
        let (lines, rest) = split_lines::<2>(b"a\nb\nc\nd");
        assert_eq!((lines, rest), ([&b"a"[..], b"b"], &b"c\nd"[..]));
        let (lines, rest) = split_lines::<3>(b"a");
        assert_eq!((lines, rest), ([&b"a"[..], b"", b""], &b""[..]));
        let all: Vec<_> = requests(b"GET /a\n===\nGET /b\n===\n").collect();
        assert_eq!(all, [&b"GET /a"[..], b"GET /b", b""]);
    }

    #[test]
    fn the_merge_patch_model_follows_the_rfc_examples() {
        // RFC 7386, appendix A (a few of its cases).
        let cases = [
            (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
            (
                r#"{"a":{"b":"c"}}"#,
                r#"{"a":{"b":"d","c":null}}"#,
                r#"{"a":{"b":"d"}}"#,
            ),
            (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"["a","b"]"#, r#"["c","d"]"#, r#"["c","d"]"#),
            (r#"{"e":null}"#, r#"{"a":1}"#, r#"{"e":null,"a":1}"#),
            (r#"{}"#, r#"{"a":{"bb":{"ccc":null}}}"#, r#"{"a":{"bb":{}}}"#),
        ];
        for (target, patch, result) in cases {
            let parse = |s: &str| serde_json::from_str::<Value>(s).expect("json");
            assert_eq!(
                merge_patch(&parse(target), &parse(patch)),
                parse(result),
                "{target} + {patch}"
            );
        }
    }
}
