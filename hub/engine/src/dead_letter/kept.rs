//! Dead letters are kept, not only published: a JetStream stream (`[dead_letters]`, with limits
//! of age and size) captures `hub.dlq.>`, so an operator can list them by reason, inspect one,
//! and replay it once its cause is fixed. A replayed letter leaves the stream; if it fails again,
//! a new letter says why.
//!
//! Where a replay goes depends on what the letter holds:
//! - an input that did not decode or fit a rule: the same bytes, to the subject it arrived on;
//! - an event a plugin failed on: its envelope, to `events.<kind>`, for that plugin only
//!   ([`REPLAY_FOR`]), so the plugins that handled it the first time do not run twice;
//! - another event (hop limit, reserved kind): its envelope, to `events.<kind>`, for every
//!   subscriber;
//! - a timer: set again, due now, for its plugin and actor (through the actor's shard);
//! - a rendered delivery (a webhook that failed, a sink's full queue): handed to its channel's
//!   sink again, with the same id, so a receiver that deduplicates sees it once.

use super::Reason;
use crate::config::DeadLettersConfig;
use crate::delivery::Delivery;
use crate::egress::{headers, subjects};
use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, stream as js_stream};
use base64::Engine as _;
use serde::Serialize;
use std::collections::BTreeMap;

/// The header that makes a replayed event reach one plugin only.
pub const REPLAY_FOR: &str = "Hub-Replay-For";

/// How many stored letters a listing looks at, at most, to find the ones asked for.
const SCAN_LIMIT: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum KeptError {
    #[error("cannot create or update the dead-letter stream {stream}: {source}")]
    Stream {
        stream: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error("the dead-letter stream cannot be read: {0}")]
    Read(String),
    #[error("no dead letter {0} (replayed, expired, or never stored)")]
    NotFound(u64),
    #[error("dead letter {seq} cannot be replayed: {why}")]
    NotReplayable { seq: u64, why: String },
    #[error("cannot publish the replay of dead letter {seq}: {detail}")]
    Publish { seq: u64, detail: String },
}

/// A stored letter as the API lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LetterSummary {
    pub seq: u64,
    pub reason: String,
    pub detail: String,
    pub plugin: Option<String>,
    /// The subject the input arrived on (`plugin:<name>` for emitted events, `timer` for timers).
    pub subject: String,
    pub event_id: Option<String>,
    pub actor: Option<String>,
    /// The actor's tenant, or the tenant the message named; absent: the default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When it was stored, ms since the epoch.
    pub at: i64,
    pub size: usize,
}

/// One letter with its headers and body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Letter {
    #[serde(flatten)]
    pub summary: LetterSummary,
    pub headers: BTreeMap<String, String>,
    /// The body as text when it is UTF-8…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// …else base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

/// Where a replay goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Replay {
    /// Publish `body` on `subject` with `headers`.
    Publish {
        subject: String,
        headers: HeaderMap,
        body: bytes::Bytes,
    },
    /// Set timer `id` of `plugin` for `actor` again, due now.
    Timer {
        plugin: String,
        actor: String,
        id: String,
        payload: Vec<u8>,
    },
    /// Hand a rendered delivery to its channel's sink again.
    Deliver(Delivery),
}

/// A stored letter, as read from the stream.
pub struct Stored(StreamMessage);

impl Stored {
    pub fn seq(&self) -> u64 {
        self.0.sequence
    }

    pub fn summary(&self) -> LetterSummary {
        summarize(&self.0)
    }
}

/// The dead-letter stream.
#[derive(Clone)]
pub struct KeptLetters {
    stream: js_stream::Stream,
    /// Where events are published (`events` → `events.<kind>`).
    events_subject: String,
}

impl KeptLetters {
    /// Create the stream, or bring its limits up to date.
    pub async fn ensure(
        client: &async_nats::Client,
        config: &DeadLettersConfig,
        events_subject: &str,
    ) -> Result<KeptLetters, KeptError> {
        let js = jetstream::new(client.clone());
        let wanted = js_stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", subjects::DEAD_LETTERS)],
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            storage: js_stream::StorageType::File,
            discard: js_stream::DiscardPolicy::Old,
            ..Default::default()
        };
        js.create_or_update_stream(wanted)
            .await
            .map_err(|source| KeptError::Stream {
                stream: config.stream.clone(),
                source,
            })?;
        let stream = js
            .get_stream(&config.stream)
            .await
            .map_err(|e| KeptError::Read(e.to_string()))?;
        Ok(KeptLetters {
            stream,
            events_subject: events_subject.to_owned(),
        })
    }

    /// Stored letters by reason (what the stream holds now).
    pub async fn counts(&self) -> Result<BTreeMap<String, u64>, KeptError> {
        use futures::TryStreamExt;
        let filter = format!("{}.>", subjects::DEAD_LETTERS);
        let mut info = self
            .stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| KeptError::Read(e.to_string()))?;
        let mut counts = BTreeMap::new();
        while let Some((subject, n)) = info.try_next().await.map_err(|e| KeptError::Read(e.to_string()))? {
            if let Some(reason) = reason_of(&subject) {
                counts.insert(reason.to_owned(), n as u64);
            }
        }
        Ok(counts)
    }

    /// The newest `limit` letters, of `reason` if given, newest first.
    pub async fn list(&self, reason: Option<&str>, limit: usize) -> Result<Vec<LetterSummary>, KeptError> {
        Ok(self.newest(reason, limit).await?.iter().map(Stored::summary).collect())
    }

    /// The newest `limit` letters, of `reason` if given, whole, newest first.
    pub async fn newest(&self, reason: Option<&str>, limit: usize) -> Result<Vec<Stored>, KeptError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| KeptError::Read(e.to_string()))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut found = Vec::new();
        let mut seq = last;
        while seq >= first.max(1) && found.len() < limit && last - seq < SCAN_LIMIT {
            // Gaps (replayed or deleted letters) answer "not found": skip them.
            if let Ok(message) = self.stream.get_raw_message(seq).await
                && reason.is_none_or(|r| reason_of(&message.subject) == Some(r))
            {
                found.push(Stored(message));
            }
            seq -= 1;
        }
        Ok(found)
    }

    /// One letter, whole.
    pub async fn get(&self, seq: u64) -> Result<Letter, KeptError> {
        let message = self
            .stream
            .get_raw_message(seq)
            .await
            .map_err(|_| KeptError::NotFound(seq))?;
        let headers = message
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                )
            })
            .collect();
        let (body, body_base64) = match std::str::from_utf8(&message.payload) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&message.payload)),
            ),
        };
        Ok(Letter {
            summary: summarize(&message),
            headers,
            body,
            body_base64,
        })
    }

    /// Letter `seq`, whole.
    pub async fn stored(&self, seq: u64) -> Result<Stored, KeptError> {
        self.stream
            .get_raw_message(seq)
            .await
            .map(Stored)
            .map_err(|_| KeptError::NotFound(seq))
    }

    /// Where a stored letter would be replayed to.
    pub fn replay_of(&self, letter: &Stored) -> Result<Replay, KeptError> {
        replay_of(letter.seq(), &letter.0, &self.events_subject)
    }

    /// Forget letter `seq`: it was replayed.
    /// Delete every kept letter of `tenant` (erasing it): read once through an ordered
    /// consumer of its own, from the oldest. How many.
    pub async fn remove_of_tenant(&self, tenant: &str) -> Result<usize, KeptError> {
        use futures::StreamExt;
        let read = |e: String| KeptError::Read(e);
        let mut consumer = self
            .stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .map_err(|e| read(e.to_string()))?;
        if consumer.info().await.map_err(|e| read(e.to_string()))?.num_pending == 0 {
            return Ok(0);
        }
        let mut messages = consumer.messages().await.map_err(|e| read(e.to_string()))?;
        let mut removed = 0;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| read(e.to_string()))?;
            let info = message.info().map_err(|e| read(e.to_string()))?;
            let (seq, left) = (info.stream_sequence, info.pending);
            let theirs = message
                .headers
                .as_ref()
                .and_then(|h| h.get(crate::tenant::HEADER))
                .is_some_and(|t| t.as_str() == tenant);
            if theirs {
                self.remove(seq).await?;
                removed += 1;
            }
            if left == 0 {
                break;
            }
        }
        Ok(removed)
    }

    pub async fn remove(&self, seq: u64) -> Result<(), KeptError> {
        self.stream
            .delete_message(seq)
            .await
            .map(|_| ())
            .map_err(|e| KeptError::Read(e.to_string()))
    }
}

fn reason_of(subject: &str) -> Option<&str> {
    subject
        .strip_prefix(subjects::DEAD_LETTERS)
        .and_then(|s| s.strip_prefix('.'))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_owned())
}

fn summarize(message: &StreamMessage) -> LetterSummary {
    let h = &message.headers;
    LetterSummary {
        seq: message.sequence,
        reason: reason_of(&message.subject).unwrap_or("unknown").to_owned(),
        detail: header(h, headers::DLQ_REASON).unwrap_or_default(),
        plugin: header(h, headers::PLUGIN),
        subject: header(h, headers::DLQ_SUBJECT).unwrap_or_default(),
        event_id: header(h, headers::EVENT_ID),
        actor: header(h, headers::ACTOR),
        tenant: header(h, crate::tenant::HEADER),
        at: (message.time.unix_timestamp_nanos() / 1_000_000) as i64,
        size: message.payload.len(),
    }
}

/// The headers a dead-lettered message arrived with: the letter's, without the hub's own
/// (`Hub-…`, but `Hub-Tenant`) and the server's (`Nats-…`: its id would make the replay a
/// duplicate of the input).
fn original_headers(letter: &HeaderMap) -> HeaderMap {
    super::headers_where(letter, |name| {
        let hubs = name.starts_with("Hub-") && name != crate::tenant::HEADER;
        !hubs && !name.starts_with("Nats-")
    })
}

/// Where a stored letter goes when replayed (see the module docs).
fn replay_of(seq: u64, message: &StreamMessage, events_subject: &str) -> Result<Replay, KeptError> {
    let summary = summarize(message);
    let refuse = |why: &str| KeptError::NotReplayable {
        seq,
        why: why.to_owned(),
    };
    let reason = Reason::ALL
        .into_iter()
        .find(|r| r.as_str() == summary.reason)
        .ok_or_else(|| refuse("its reason is not one this hub knows"))?;
    let body = bytes::Bytes::from(message.payload.to_vec());
    match reason {
        _ if summary.subject == "timer" => {
            let (Some(plugin), Some(actor), Some(id)) = (summary.plugin, summary.actor, summary.event_id) else {
                return Err(refuse("it does not name the timer's plugin, actor and id"));
            };
            Ok(Replay::Timer {
                plugin,
                actor: crate::tenant::qualify(summary.tenant.as_deref(), &actor),
                id,
                payload: message.payload.to_vec(),
            })
        }
        // An input that no plugin saw: refused as it came, or past its tenant's rate (core
        // mode's `quota` letter, without a plugin). It goes back where it arrived, as it came.
        _ if matches!(reason, Reason::Undecodable | Reason::Invalid | Reason::NoRule)
            || (reason == Reason::Quota && summary.plugin.is_none()) =>
        {
            if summary.subject.is_empty() || !crate::event::is_subject_safe(&summary.subject) {
                return Err(refuse("it does not say which subject it arrived on"));
            }
            Ok(Replay::Publish {
                subject: summary.subject,
                headers: original_headers(&message.headers),
                body,
            })
        }
        Reason::SinkOverflow | Reason::WebhookFailed | Reason::WebhookRejected => {
            let channel = summary
                .subject
                .strip_prefix(subjects::DELIVERIES)
                .and_then(|s| s.strip_prefix('.'))
                .filter(|c| !c.is_empty());
            let target = header(&message.headers, headers::TARGET);
            let (Some(channel), Some(id), Some(actor), Some(target)) =
                (channel, summary.event_id, summary.actor, target)
            else {
                return Err(refuse(
                    "it does not name the delivery's channel, id, actor and target (a letter of an older hub)",
                ));
            };
            Ok(Replay::Deliver(Delivery {
                id,
                actor: crate::tenant::qualify(summary.tenant.as_deref(), &actor),
                channel: channel.to_owned(),
                target,
                plugin: summary.plugin.unwrap_or_default(),
                body,
            }))
        }
        _ => {
            #[derive(serde::Deserialize)]
            struct Kind {
                kind: String,
            }
            let kind = serde_json::from_slice::<Kind>(&message.payload)
                .map_err(|_| refuse("its body is not an event envelope"))?
                .kind;
            let mut headers = HeaderMap::new();
            let one_plugin = !matches!(reason, Reason::HopLimit | Reason::ReservedKind);
            if let Some(plugin) = summary.plugin.filter(|_| one_plugin) {
                headers.insert(REPLAY_FOR, plugin.as_str());
            }
            Ok(Replay::Publish {
                subject: format!("{events_subject}.{kind}"),
                headers,
                body,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::DeadLetter;
    use crate::event::Event;
    use proptest::prelude::*;

    /// A letter as the stream hands it back: what `into_outbound` published, stored at `seq`.
    fn stored(letter: DeadLetter, seq: u64) -> StreamMessage {
        let out = letter.into_outbound();
        StreamMessage {
            subject: out.subject.into(),
            sequence: seq,
            headers: out.headers.unwrap_or_default(),
            payload: out.payload,
            time: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn text() -> impl Strategy<Value = String> {
        // Header values are one line: what `header_safe` keeps of any text.
        "[a-zA-Z0-9 ._:>*-]{1,40}"
    }

    proptest! {
        #[test]
        fn a_stored_letter_reads_back_as_it_was_written(
            detail in text(), local in "[a-z0-9]{1,20}", id in "[a-z0-9-]{1,20}", plugin in "[a-z-]{1,20}",
            kind in "[a-z]{1,10}\\.[a-z]{1,10}", payload in proptest::collection::vec(any::<u8>(), 0..64),
            seq in 1u64..u64::MAX, tenant in proptest::option::of("[a-z]{1,6}"),
        ) {
            let actor = crate::tenant::qualify(tenant.as_deref(), &local);
            let event = Event { id: id.clone(), kind: kind.clone(), actor: actor.clone(), time: 1, source: "events.x".into(), payload: vec![0x80] };
            let message = stored(DeadLetter::event(Reason::Trap, detail.clone(), &event).plugin(&plugin), seq);
            let summary = summarize(&message);
            prop_assert_eq!(summary.seq, seq);
            prop_assert_eq!(&summary.reason, "trap");
            prop_assert_eq!(summary.detail.trim(), detail.trim());
            prop_assert_eq!(summary.plugin.as_deref(), Some(plugin.as_str()));
            prop_assert_eq!(summary.actor.as_deref(), Some(local.as_str()));
            prop_assert_eq!(&summary.tenant, &tenant);
            prop_assert_eq!(summary.event_id.as_deref(), Some(id.as_str()));
            match replay_of(seq, &message, "events") {
                Ok(Replay::Publish { subject, headers, .. }) => {
                    prop_assert_eq!(subject, format!("events.{kind}"));
                    prop_assert_eq!(headers.get(REPLAY_FOR).map(|v| v.as_str().to_owned()), Some(plugin.clone()));
                }
                other => prop_assert!(false, "{other:?}"),
            }

            let timer = stored(DeadLetter::timer(Reason::Disabled, detail, &actor, &id, &payload).plugin(&plugin), seq);
            prop_assert_eq!(
                replay_of(seq, &timer, "events").ok(),
                Some(Replay::Timer { plugin: plugin.clone(), actor: actor.clone(), id: id.clone(), payload: payload.clone() })
            );

            let delivery = Delivery { id, actor, channel: "crm".into(), target: kind, plugin, body: payload.into() };
            let letter = stored(DeadLetter::delivery(Reason::WebhookFailed, "503", &delivery), seq);
            prop_assert_eq!(replay_of(seq, &letter, "events").ok(), Some(Replay::Deliver(delivery)));
        }
    }

    /// Core mode's letter of an input past its tenant's rate: its tenant may be named by its
    /// subject alone, and the input may not be an envelope, so it goes back as it came.
    #[test]
    fn an_input_refused_past_its_tenants_rate_replays_on_its_own_subject_with_its_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("Trace", "t1");
        let letter = DeadLetter::message(
            Reason::Quota,
            "past its rate",
            "tenant.acme.web.visit",
            Some(&headers),
            bytes::Bytes::from_static(b"raw,not,an,envelope"),
        )
        .of_tenant(Some("acme"));
        match replay_of(3, &stored(letter, 3), "events") {
            Ok(Replay::Publish { subject, headers, body }) => {
                assert_eq!(subject, "tenant.acme.web.visit");
                assert_eq!(headers.get("Trace").map(|v| v.as_str()), Some("t1"));
                assert_eq!(headers.get(REPLAY_FOR), None);
                assert_eq!(&body[..], b"raw,not,an,envelope");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_letter_without_the_headers_of_later_versions_still_reads_and_says_why_it_cannot_replay() {
        let message = StreamMessage {
            subject: "hub.dlq.disabled".into(),
            sequence: 7,
            headers: HeaderMap::new(),
            payload: bytes::Bytes::from_static(b"\x80"),
            time: time::OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(summarize(&message).reason, "disabled");
        assert!(matches!(
            replay_of(7, &message, "events"),
            Err(KeptError::NotReplayable { seq: 7, .. })
        ));
        let raw = StreamMessage {
            subject: "hub.dlq.undecodable".into(),
            ..message
        };
        // An input letter that does not say where it came from cannot go back there.
        assert!(replay_of(7, &raw, "events").is_err());
    }
}
