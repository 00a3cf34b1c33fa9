//! Dead letters: whatever the hub cannot process goes to `hub.dlq.<reason>` with the reason for a
//! person in a header and the input as its body, so nothing is dropped silently and every letter
//! can be inspected and replayed. One type, [`DeadLetter`], built by a constructor per kind of
//! input; the reasons are a closed set, [`Reason`], with their subject tokens in one place.

mod kept;

pub use kept::{KeptError, KeptLetters, Letter, LetterSummary, REPLAY_FOR, Replay, Stored};

use crate::delivery::Delivery;
use crate::egress::{Outbound, headers, subjects};
use crate::event::Event;
use async_nats::HeaderMap;
use bytes::Bytes;

/// Why something went to the dead letters; its token is the last one of `hub.dlq.<reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An input that is neither JSON nor MessagePack of the expected shape.
    Undecodable,
    /// An input that decodes but breaks the input rules (`crate::limits`).
    Invalid,
    /// A raw message no ingest rule fits.
    NoRule,
    /// An input of a kind reserved for actions on their way to delivery (`action.…`).
    ReservedKind,
    /// A plugin call ran out of CPU time (or blocked past the wall-clock cap).
    Deadline,
    /// A plugin call hit the memory cap.
    Memory,
    Panic,
    Trap,
    /// The plugin returned an error.
    PluginError,
    /// A call returned an output the hub cannot route or publish.
    InvalidOutput,
    /// A call would have taken its tenant past a quota on stored state or pending timers, or
    /// (core mode) an input came past its tenant's rate.
    Quota,
    /// A chain of emitted events longer than the hop limit.
    HopLimit,
    /// The plugin is quarantined after repeated traps.
    Quarantined,
    /// A timer of a plugin that is not loaded.
    NoPlugin,
    /// A timer of a disabled plugin.
    Disabled,
    /// A delivery whose sink's queue was full.
    SinkOverflow,
    /// A webhook that kept failing.
    WebhookFailed,
    /// A webhook the receiver refused.
    WebhookRejected,
}

impl Reason {
    /// Every reason, for documentation and tests.
    pub const ALL: [Reason; 18] = [
        Reason::Undecodable,
        Reason::Invalid,
        Reason::NoRule,
        Reason::ReservedKind,
        Reason::Deadline,
        Reason::Memory,
        Reason::Panic,
        Reason::Trap,
        Reason::PluginError,
        Reason::InvalidOutput,
        Reason::Quota,
        Reason::HopLimit,
        Reason::Quarantined,
        Reason::NoPlugin,
        Reason::Disabled,
        Reason::SinkOverflow,
        Reason::WebhookFailed,
        Reason::WebhookRejected,
    ];

    /// The subject token and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Undecodable => "undecodable",
            Reason::Invalid => "invalid",
            Reason::NoRule => "no_rule",
            Reason::ReservedKind => "reserved_kind",
            Reason::Deadline => "deadline",
            Reason::Memory => "memory",
            Reason::Panic => "panic",
            Reason::Trap => "trap",
            Reason::PluginError => "plugin_error",
            Reason::InvalidOutput => "invalid_output",
            Reason::Quota => "quota",
            Reason::HopLimit => "hop_limit",
            Reason::Quarantined => "quarantined",
            Reason::NoPlugin => "no_plugin",
            Reason::Disabled => "disabled",
            Reason::SinkOverflow => "sink_overflow",
            Reason::WebhookFailed => "webhook_failed",
            Reason::WebhookRejected => "webhook_rejected",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why something could not be processed, and everything needed to inspect or replay it.
#[derive(Debug)]
pub struct DeadLetter {
    reason: Reason,
    /// What went wrong, for a person.
    detail: String,
    /// The subject the input arrived on (`plugin:<name>` for emitted events, `timer` for timers).
    subject: String,
    plugin: Option<String>,
    event_id: Option<String>,
    /// Whose it is, where the body does not say (a timer's payload, a rendered delivery).
    actor: Option<String>,
    /// Where a rendered delivery was going.
    target: Option<String>,
    /// The headers a message arrived with (its `Hub-Tenant`, an ingest rule's actor header),
    /// kept so a replay sends it as it came.
    original: Option<HeaderMap>,
    /// The declared tenant a message that has no actor yet belongs to (see [`DeadLetter::of_tenant`]).
    tenant: Option<String>,
    /// The original bytes, or the event's JSON envelope (replayable on `events.<kind>`).
    body: Bytes,
}

impl DeadLetter {
    /// A message as it arrived on `subject`, with its headers.
    pub fn message(
        reason: Reason,
        detail: impl Into<String>,
        subject: &str,
        headers: Option<&HeaderMap>,
        body: Bytes,
    ) -> DeadLetter {
        DeadLetter {
            reason,
            detail: detail.into(),
            subject: subject.to_owned(),
            plugin: None,
            event_id: None,
            actor: None,
            target: None,
            original: headers.cloned(),
            tenant: None,
            body,
        }
    }

    /// The declared tenant the message belongs to, as its subject or its `Hub-Tenant` header
    /// said before it could be read: the letter is counted for that tenant and carries the
    /// header, so the tenant's token lists it.
    pub fn of_tenant(mut self, tenant: Option<&str>) -> DeadLetter {
        self.tenant = tenant.map(str::to_owned);
        self
    }

    /// An event, as its JSON envelope (replayable on `events.<kind>`).
    pub fn event(reason: Reason, detail: impl Into<String>, event: &Event) -> DeadLetter {
        DeadLetter {
            reason,
            detail: detail.into(),
            subject: event.source.clone(),
            plugin: None,
            event_id: Some(event.id.clone()),
            actor: Some(event.actor.clone()),
            target: None,
            original: None,
            tenant: None,
            body: event.to_json().map(Bytes::from).unwrap_or_default(),
        }
    }

    /// A timer of `actor` that came due (its payload as the body).
    pub fn timer(reason: Reason, detail: impl Into<String>, actor: &str, id: &str, payload: &[u8]) -> DeadLetter {
        DeadLetter {
            reason,
            detail: detail.into(),
            subject: "timer".to_owned(),
            plugin: None,
            event_id: Some(id.to_owned()),
            actor: Some(actor.to_owned()),
            target: None,
            original: None,
            tenant: None,
            body: Bytes::copy_from_slice(payload),
        }
    }

    /// A rendered delivery (replaying it hands it to its channel's sink again).
    pub fn delivery(reason: Reason, detail: impl Into<String>, delivery: &Delivery) -> DeadLetter {
        DeadLetter {
            reason,
            detail: detail.into(),
            subject: subjects::join(subjects::DELIVERIES, &delivery.channel),
            plugin: Some(delivery.plugin.clone()),
            event_id: Some(delivery.id.clone()),
            actor: Some(delivery.actor.clone()),
            target: Some(delivery.target.clone()),
            original: None,
            tenant: None,
            body: delivery.body.clone(),
        }
    }

    /// The plugin involved.
    pub fn plugin(mut self, name: &str) -> DeadLetter {
        self.plugin = Some(name.to_owned());
        self
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }

    pub fn into_outbound(self) -> Outbound {
        metrics::counter!(crate::metrics::DEAD_LETTERS, "reason" => self.reason.as_str()).increment(1);
        let tenant = match (&self.actor, &self.tenant) {
            (Some(actor), _) => Some(crate::tenant::name_of(actor)),
            (None, tenant) => tenant.as_deref(),
        };
        if let Some(tenant) = tenant {
            metrics::counter!(crate::metrics::TENANT_DEAD_LETTERS, "tenant" => tenant.to_owned()).increment(1);
        }
        tracing::debug!(
            reason = self.reason.as_str(),
            detail = self.detail,
            subject = self.subject,
            "dead letter"
        );
        // The message's own headers first (not the server's `Nats-…`: a `Nats-Msg-Id` would
        // make the letter a duplicate of another); the hub's, set below, take precedence.
        let mut h = match &self.original {
            Some(original) => headers_where(original, |name| !name.starts_with("Nats-")),
            None => HeaderMap::new(),
        };
        h.insert(headers::DLQ_REASON, header_safe(&self.detail).as_str());
        h.insert(headers::DLQ_SUBJECT, header_safe(&self.subject).as_str());
        if let Some(p) = &self.plugin {
            h.insert(headers::PLUGIN, header_safe(p).as_str());
        }
        if let Some(id) = &self.event_id {
            h.insert(headers::EVENT_ID, header_safe(id).as_str());
        }
        if let Some(actor) = &self.actor {
            crate::tenant::insert_actor(&mut h, headers::ACTOR, actor, header_safe);
        } else if let Some(tenant) = &self.tenant {
            h.insert(crate::tenant::HEADER, tenant.as_str());
        }
        if let Some(target) = &self.target {
            h.insert(headers::TARGET, header_safe(target).as_str());
        }
        Outbound {
            subject: subjects::join(subjects::DEAD_LETTERS, self.reason.as_str()),
            headers: Some(h),
            payload: self.body,
        }
    }
}

/// The headers of `from` whose name `keep` takes, every value of each.
pub(crate) fn headers_where(from: &HeaderMap, keep: impl Fn(&str) -> bool) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (name, values) in from.iter().filter(|(name, _)| keep(name.as_ref())) {
        for value in values {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// Header values are one line of printable text.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_a_subject_token_of_its_own() {
        let tokens: std::collections::BTreeSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(tokens.len(), Reason::ALL.len());
        assert!(
            tokens
                .iter()
                .all(|t| crate::event::is_subject_safe(t) && !t.contains('.'))
        );
    }

    #[test]
    fn a_letter_carries_its_reason_and_input() {
        let out = DeadLetter::message(
            Reason::NoRule,
            "no rule\nfits",
            "web.x",
            None,
            Bytes::from_static(b"{}"),
        )
        .plugin("p")
        .into_outbound();
        assert_eq!(out.subject, "hub.dlq.no_rule");
        let h = out.headers.expect("headers");
        assert_eq!(h.get(headers::DLQ_REASON).map(|v| v.as_str()), Some("no rule fits"));
        assert_eq!(h.get(headers::PLUGIN).map(|v| v.as_str()), Some("p"));
        assert_eq!(&out.payload[..], b"{}");
    }
}
