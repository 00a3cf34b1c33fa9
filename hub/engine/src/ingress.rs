//! Where events enter: core NATS subscriptions on `events.>` (envelopes in JSON or MessagePack)
//! and on the subjects of ingest rules (raw legacy messages); and profile updates on
//! `profiles.<actor>` (JSON objects merged into the actor's profile). Each message is decoded into an
//! [`Event`](crate::event::Event) and routed to its actor's shard; anything that cannot be
//! decoded goes to `hub.dlq.<reason>` with the reason, so nothing is dropped silently.

mod envelope;
pub mod pull;
mod rules;
pub mod stream;
mod transcode;

pub use envelope::decode_envelope;
pub use rules::{CompiledRule, RuleSet, decode_raw};

use crate::config::NatsConfig;
use crate::dead_letter::{DeadLetter, Reason};
use crate::egress::Egress;
use crate::event::{Event, Routed};
use crate::router::Router;
use crate::state::{ProfileError, Profiles};
use crate::tenant::{self, Tenants};
use futures::StreamExt;
use hub_plugin_sdk::pattern::kind_matches;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why an input could not become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct IngressError {
    /// `Undecodable`, `Invalid` or `NoRule`.
    pub reason: Reason,
    pub detail: String,
}

impl IngressError {
    pub fn undecodable(detail: impl Into<String>) -> Self {
        IngressError {
            reason: Reason::Undecodable,
            detail: detail.into(),
        }
    }

    /// A stored input of a subject no ingest rule takes since the configuration changed.
    pub fn no_rule_now(subject: &str) -> Self {
        IngressError {
            reason: Reason::NoRule,
            detail: format!("no ingest rule takes subject {subject} any more"),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        IngressError {
            reason: Reason::Invalid,
            detail: detail.into(),
        }
    }
}

/// Core mode's tenant `rate`s, shared by every subscription's task. With no stream to keep them
/// waiting in, a tenant's inputs past its rate (a second's worth saved up) are dead-lettered as
/// `quota`: kept and replayable, neither dropped nor let through to slow the others.
#[derive(Clone, Default)]
struct CoreRates(Arc<HashMap<String, (u32, Mutex<crate::durable::Bucket>)>>);

impl CoreRates {
    fn new(tenants: &Tenants) -> CoreRates {
        let rates = tenants.names().filter_map(|tenant| {
            let rate = tenants.rate(tenant)?;
            let bucket = crate::durable::Bucket::new(f64::from(rate), 1.0);
            Some((tenant.to_owned(), (rate, Mutex::new(bucket))))
        });
        CoreRates(Arc::new(rates.collect()))
    }

    /// Why an input of `actor` is refused, if its tenant is past its rate; takes its token if not.
    fn refuse(&self, actor: &str) -> Option<IngressError> {
        if self.0.is_empty() {
            return None;
        }
        let tenant = tenant::split(actor).0?;
        let (rate, bucket) = self.0.get(tenant)?;
        let mut bucket = bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if bucket.has_room() {
            bucket.take();
            return None;
        }
        metrics::counter!(crate::metrics::TENANT_QUOTA_REFUSALS, "tenant" => tenant.to_owned(), "quota" => "rate")
            .increment(1);
        Some(IngressError {
            reason: Reason::Quota,
            detail: format!(
                "tenant {tenant:?} is past its rate of {rate} inputs/s; in core mode there is no stream to keep the rest waiting in (replay it, or run in durable mode)"
            ),
        })
    }
}

/// Put the event's actor in the tenant the input names (`claimed` by its envelope or ingest
/// rule, or its `Hub-Tenant` header; see [`Tenants::resolve`]).
pub(crate) fn assign_tenant(
    event: &mut Event,
    claimed: Option<&str>,
    headers: Option<&async_nats::HeaderMap>,
    tenants: &Tenants,
) -> Result<(), IngressError> {
    if let Some(tenant) = tenants.resolve(claimed, headers).map_err(IngressError::invalid)? {
        event.actor = tenant::qualify(Some(tenant), &event.actor);
    }
    Ok(())
}

/// How a reader of inputs tells whose an input is: the declared tenants, and the prefix of their
/// own subjects (`<prefix>.<tenant>.<subject>`) where it reads those.
#[derive(Clone)]
pub struct TenantInputs {
    /// Set where tenants are declared and their own subjects read.
    prefix: Option<String>,
    declared: Tenants,
}

impl TenantInputs {
    /// A reader of tenants' own subjects (`[nats] tenants_subject` is `prefix`) among others,
    /// when tenants are declared.
    pub fn new(prefix: &str, tenants: &Tenants) -> TenantInputs {
        TenantInputs {
            prefix: tenants.names().next().map(|_| prefix.to_owned()),
            declared: tenants.clone(),
        }
    }

    /// A reader of the shared subjects alone.
    fn shared(tenants: &Tenants) -> TenantInputs {
        TenantInputs {
            prefix: None,
            declared: tenants.clone(),
        }
    }

    /// Decode an input as what it stands for: one published on a tenant's own subjects as
    /// `<subject>` with its tenant named as a `Hub-Tenant` header would name it (so its
    /// envelope, ingest rule or header may name it too, but no other one); any other as it came.
    pub(crate) fn decode_as_published<T>(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        decode: impl FnOnce(&str, Option<&async_nats::HeaderMap>) -> Result<T, IngressError>,
    ) -> Result<T, IngressError> {
        match self
            .prefix
            .as_deref()
            .map(|p| on_tenant_subject(p, subject, headers))
            .transpose()?
            .flatten()
        {
            Some((standing_for, headers)) => decode(standing_for, Some(&headers)),
            None => decode(subject, headers),
        }
    }

    /// The declared tenant an input belongs to before it is read: the one whose own subject it
    /// came on, else the one its `Hub-Tenant` header names. Its dead letter, should it not be
    /// read, is that tenant's; a name no one declared is left to the letter's detail.
    pub(crate) fn tenant_of<'a>(
        &self,
        subject: &'a str,
        headers: Option<&'a async_nats::HeaderMap>,
    ) -> Option<&'a str> {
        let own = self.prefix.as_deref().and_then(|p| tenant::on_own_subject(p, subject));
        let named = match own {
            Some((tenant, _)) => tenant,
            None => headers?.get(tenant::HEADER)?.as_str(),
        };
        (named != tenant::DEFAULT && self.declared.knows(named)).then_some(named)
    }

    /// An input that could not be read, as its tenant's dead letter.
    pub(crate) fn dead_letter(&self, e: IngressError, subject: &str, msg: &async_nats::Message) -> DeadLetter {
        DeadLetter::message(e.reason, e.detail, subject, msg.headers.as_ref(), msg.payload.clone())
            .of_tenant(self.tenant_of(subject, msg.headers.as_ref()))
    }
}

/// The subject an input on a tenant's own subject stands for, and its headers naming its
/// tenant; `None` for an input on the shared subjects.
fn on_tenant_subject<'a>(
    prefix: &str,
    subject: &'a str,
    headers: Option<&async_nats::HeaderMap>,
) -> Result<Option<(&'a str, async_nats::HeaderMap)>, IngressError> {
    let Some((tenant, standing_for)) = tenant::on_own_subject(prefix, subject) else {
        return Ok(None);
    };
    let mut headers = headers.cloned().unwrap_or_default();
    if let Some(named) = headers.get(tenant::HEADER)
        && named.as_str() != tenant
    {
        return Err(IngressError::invalid(format!(
            "the input names two tenants: {tenant:?} by its subject, and {:?} in its {} header",
            named.as_str(),
            tenant::HEADER
        )));
    }
    headers.insert(tenant::HEADER, tenant);
    Ok(Some((standing_for, headers)))
}

/// The plugin a replayed dead letter is for (`Hub-Replay-For`), if it is one.
pub(crate) fn replayed_for(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(crate::dead_letter::REPLAY_FOR))
        .map(|v| v.as_str().to_owned())
}

/// What an input that lacks them gets as its id and time: in core mode, ids unique per process
/// start and message and the time of arrival; for an input from the input stream, both come
/// from its place there ([`IdGen::for_stream_input`]), so an input delivered again gets the same
/// ones, and its outputs the same ids.
pub struct IdGen {
    prefix: String,
    seq: AtomicU64,
    time: Option<i64>,
}

impl IdGen {
    pub fn new() -> IdGen {
        IdGen {
            prefix: format!("{:x}", crate::event::now_ms()),
            seq: AtomicU64::new(0),
            time: None,
        }
    }

    /// For the input at sequence `seq` of the input stream (`own` None) or of tenant `own`'s
    /// own stream, stored by the server at `stored` (ms). A tenant's stream has a prefix of its
    /// own, apart from the input stream's sequences (or two tenants' inputs without ids, at the
    /// same sequence of their streams, would get the same ids, and so would their outputs).
    pub fn for_stream_input(own: Option<&str>, seq: u64, stored: i64) -> IdGen {
        IdGen {
            prefix: match own {
                Some(tenant) => format!("{tenant}.in{seq}"),
                None => format!("in{seq}"),
            },
            seq: AtomicU64::new(0),
            time: Some(stored),
        }
    }

    /// For an input a producer published to `partition` (cluster mode), at sequence `seq` of
    /// that partition's stream: a prefix of its own, apart from the input stream's sequences.
    pub fn for_partition_input(partition: u16, seq: u64, stored: i64) -> IdGen {
        IdGen {
            prefix: format!("part{partition}.{seq}"),
            seq: AtomicU64::new(0),
            time: Some(stored),
        }
    }

    /// For line `line` of a recorded file run offline: ids from the line number, and the
    /// virtual clock `clock` as the time of an event that has none, so a run is reproducible.
    pub fn for_recorded(line: usize, clock: i64) -> IdGen {
        IdGen {
            prefix: format!("line{line}"),
            seq: AtomicU64::new(0),
            time: Some(clock),
        }
    }

    /// What every id starts with: for a stream input, its place (a cluster's forward of it
    /// carries it as its `Nats-Msg-Id`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn next(&self) -> String {
        format!("{}-{}", self.prefix, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// The time for an input that has none.
    pub fn time(&self) -> i64 {
        self.time.unwrap_or_else(crate::event::now_ms)
    }
}

impl Default for IdGen {
    fn default() -> Self {
        Self::new()
    }
}

/// What one subscription turns messages into.
pub(crate) enum Decoder {
    Envelope {
        prefix: String,
        tenants: Tenants,
    },
    Raw {
        rules: RuleSet,
        tenants: Tenants,
    },
    /// Not events: merge patches for the profile of the actor named by the subject's tail, in
    /// the tenant of its `Hub-Tenant` header (left alone when there are no profiles to merge
    /// into: inputs read back for a backtest).
    Profile {
        prefix: String,
        profiles: Option<Profiles>,
        tenants: Tenants,
    },
}

impl Decoder {
    /// Decode one message: an event to route, `None` when it was handled here (a profile
    /// update), or why it cannot be used.
    pub(crate) fn decode(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        ids: &IdGen,
    ) -> Result<Option<Event>, IngressError> {
        match self {
            Decoder::Profile {
                profiles: Some(profiles),
                ..
            } => update_profile(profiles, &self.actor_of(subject, headers, payload, ids)?, payload).map(|()| None),
            Decoder::Profile { profiles: None, .. } => Ok(None),
            Decoder::Envelope { prefix, tenants } => {
                decode_envelope(subject, headers, payload, prefix, ids, tenants).map(Some)
            }
            Decoder::Raw { rules, tenants } => decode_raw(rules, subject, headers, payload, ids, tenants).map(Some),
        }
    }

    /// The actor an input is for, without acting on it: what partitions inputs (a profile
    /// update names its actor in the subject; an event is decoded to find it).
    pub(crate) fn actor_of(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        ids: &IdGen,
    ) -> Result<String, IngressError> {
        match self {
            Decoder::Profile { prefix, tenants, .. } => {
                let actor = subject
                    .strip_prefix(prefix.as_str())
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| IngressError::invalid("a profile update needs the actor as the subject's tail"))?;
                let tenant = tenants.resolve(None, headers).map_err(IngressError::invalid)?;
                Ok(tenant::qualify(tenant, actor))
            }
            Decoder::Envelope { prefix, tenants } => {
                decode_envelope(subject, headers, payload, prefix, ids, tenants).map(|e| e.actor)
            }
            Decoder::Raw { rules, tenants } => {
                decode_raw(rules, subject, headers, payload, ids, tenants).map(|e| e.actor)
            }
        }
    }
}

/// Every subject the hub takes input on, with what decodes it: `<events>.>`, `<profiles>.>`,
/// and each ingest rule's subject (rules on one subject are tried in order).
pub(crate) fn decoders(
    nats: &NatsConfig,
    rules: Vec<CompiledRule>,
    tenants: &Tenants,
    profiles: Option<Profiles>,
) -> Vec<(String, Decoder)> {
    let [events, people] = envelope_subjects(nats);
    let mut decoders = vec![
        (
            events,
            Decoder::Envelope {
                prefix: format!("{}.", nats.events_subject),
                tenants: tenants.clone(),
            },
        ),
        (
            people,
            Decoder::Profile {
                prefix: format!("{}.", nats.profiles_subject),
                profiles,
                tenants: tenants.clone(),
            },
        ),
    ];
    let mut by_subject: Vec<(String, Vec<CompiledRule>)> = Vec::new();
    for rule in rules {
        match by_subject.iter_mut().find(|(s, _)| *s == rule.subject()) {
            Some((_, list)) => list.push(rule),
            None => by_subject.push((rule.subject().to_owned(), vec![rule])),
        }
    }
    decoders.extend(by_subject.into_iter().map(|(s, rules)| {
        (
            s,
            Decoder::Raw {
                rules: RuleSet::new(rules),
                tenants: tenants.clone(),
            },
        )
    }));
    decoders
}

/// Inputs read back from the input stream, decoded as the hub decoded them when they arrived
/// (same rules, same ids and times from their place in the stream), without acting on any:
/// profile updates are recognised and left alone. For backtests.
pub struct RecordedInputs {
    decoders: Vec<(String, Decoder)>,
}

impl RecordedInputs {
    pub fn new(nats: &NatsConfig, rules: Vec<CompiledRule>, tenants: &Tenants) -> RecordedInputs {
        RecordedInputs {
            decoders: decoders(nats, rules, tenants, None),
        }
    }

    /// The event of the input at stream sequence `seq`, stored at `stored` (ms): `None` for
    /// what is not an event (a profile update).
    pub fn decode(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        seq: u64,
        stored: i64,
    ) -> Result<Option<Event>, IngressError> {
        let Some((_, decoder)) = self.decoders.iter().find(|(p, _)| kind_matches(p, subject)) else {
            return Err(IngressError::no_rule_now(subject));
        };
        decoder.decode(subject, headers, payload, &IdGen::for_stream_input(None, seq, stored))
    }
}

/// The subjects of envelopes and profile updates (`<events>.>`, `<profiles>.>`); the ingest
/// rules' subjects come on top.
fn envelope_subjects(nats: &NatsConfig) -> [String; 2] {
    [
        format!("{}.>", nats.events_subject),
        format!("{}.>", nats.profiles_subject),
    ]
}

/// The subjects of the input stream: every input subject, minus those another one covers (a
/// stream refuses overlapping subjects).
pub fn stream_subjects(nats: &NatsConfig, rules: &[CompiledRule]) -> Vec<String> {
    let mut all = Vec::from(envelope_subjects(nats));
    all.extend(rules.iter().map(|r| r.subject().to_owned()));
    let mut kept: Vec<String> = Vec::new();
    for (i, subject) in all.iter().enumerate() {
        let covered = all
            .iter()
            .enumerate()
            .any(|(j, other)| j != i && covers(other, subject) && (!covers(subject, other) || j < i));
        if !covered && !kept.contains(subject) {
            kept.push(subject.clone());
        }
    }
    kept
}

/// Whether every subject `b` matches is matched by `a` (NATS wildcards: `*` one token, a final
/// `>` one or more).
fn covers(a: &str, b: &str) -> bool {
    let mut bs = b.split('.');
    for token in a.split('.') {
        match (token, bs.next()) {
            (">", Some(_)) => return true,
            ("*", Some(t)) if t != ">" => {}
            (t, Some(u)) if t == u => {}
            _ => return false,
        }
    }
    bs.next().is_none()
}

/// The running subscriptions, or the durable consumer.
pub struct Ingress {
    client: async_nats::Client,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Durable mode: the consumer's task, which acknowledges inputs until the committer stops.
    durable: Option<stream::Consumer>,
}

impl Ingress {
    /// Core mode: subscribe to `<events_subject>.>`, `<profiles_subject>.>` and every ingest
    /// rule's subject.
    pub async fn start(
        client: &async_nats::Client,
        nats: &NatsConfig,
        rules: Vec<CompiledRule>,
        tenants: &Tenants,
        router: Router,
        egress: Egress,
        profiles: Profiles,
    ) -> Result<Ingress, async_nats::SubscribeError> {
        let (stop, stopped) = watch::channel(false);
        let ids = Arc::new(IdGen::new());
        let rates = CoreRates::new(tenants);
        let mut subscriptions: Vec<(String, Decoder, TenantInputs)> =
            decoders(nats, rules.clone(), tenants, Some(profiles.clone()))
                .into_iter()
                .map(|(subject, decoder)| (subject, decoder, TenantInputs::shared(tenants)))
                .collect();
        // Each tenant's own subjects too, when tenants are declared.
        if tenants.names().next().is_some() {
            let prefix = &nats.tenants_subject;
            let own = TenantInputs::new(prefix, tenants);
            subscriptions.extend(
                decoders(nats, rules, tenants, Some(profiles))
                    .into_iter()
                    .map(|(subject, decoder)| (format!("{prefix}.*.{subject}"), decoder, own.clone())),
            );
        }
        let mut tasks = Vec::new();
        for (subject, decoder, tenants) in subscriptions {
            let sub = client.subscribe(subject.clone()).await?;
            tracing::info!(subject, "ingress subscribed");
            let task = Task {
                decoder,
                tenants,
                router: router.clone(),
                egress: egress.clone(),
                ids: ids.clone(),
                rates: rates.clone(),
                events_in: metrics::counter!(crate::metrics::EVENTS_IN, "subject" => subject),
                tenant_events: tenant::Counted::new(crate::metrics::TENANT_EVENTS_IN),
            };
            tasks.push(tokio::spawn(task.run(sub, stopped.clone())));
        }
        round_trip(client).await?;
        Ok(Ingress {
            client: client.clone(),
            stop,
            tasks,
            durable: None,
        })
    }

    /// Durable mode: read the input stream through the hub's durable consumer (see
    /// `ingress::stream`), acknowledging inputs as the committer reports them on disk.
    pub async fn start_durable(
        client: &async_nats::Client,
        nats: &NatsConfig,
        rules: Vec<CompiledRule>,
        tenants: &Tenants,
        input: stream::Source,
        wiring: stream::Wiring,
        profiles: Profiles,
    ) -> Result<Ingress, stream::StreamError> {
        let (stop, stopped) = watch::channel(false);
        let decoders = decoders(nats, rules, tenants, Some(profiles));
        let consumer = stream::Consumer::start(client, input, decoders, wiring, stopped).await?;
        Ok(Ingress {
            client: client.clone(),
            stop,
            tasks: Vec::new(),
            durable: Some(consumer),
        })
    }

    /// Stop taking input: in core mode, everything the server routed to the hub before this
    /// call is still routed to the shards before it returns; in durable mode, what was not
    /// routed stays in the stream. Returns what acknowledges the last inputs (durable mode):
    /// finish it once the committer has stopped.
    pub async fn stop(self) -> Option<stream::Consumer> {
        if self.durable.is_none()
            && let Err(e) = round_trip(&self.client).await
        {
            tracing::warn!(error = %e, "no round trip with NATS at shutdown; in-flight input may be lost");
        }
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut durable = self.durable?;
        durable.stopped().await;
        Some(durable)
    }
}

/// A round trip to the server (see [`crate::egress::round_trip`]): once it is back, every
/// subscription made before is in place at the server (start), and every message routed to us
/// before is in our subscriptions' buffers (stop).
async fn round_trip(client: &async_nats::Client) -> Result<(), async_nats::SubscribeError> {
    if !crate::egress::round_trip(client, crate::limits::SUBSCRIBE_CONFIRM_TIMEOUT).await {
        tracing::warn!(timeout = ?crate::limits::SUBSCRIBE_CONFIRM_TIMEOUT, "no answer from NATS to a round trip");
    }
    Ok(())
}

struct Task {
    decoder: Decoder,
    /// With a prefix on a subscription to tenants' own subjects.
    tenants: TenantInputs,
    router: Router,
    egress: Egress,
    ids: Arc<IdGen>,
    rates: CoreRates,
    events_in: metrics::Counter,
    tenant_events: tenant::Counted,
}

impl Task {
    async fn run(mut self, mut sub: async_nats::Subscriber, mut stopped: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                msg = sub.next() => match msg {
                    Some(msg) => if !self.handle(msg).await { return },
                    None => return,
                },
                _ = stopped.changed() => break,
            }
        }
        // `Ingress::stop` made a round trip first, so everything the server routed to us is in
        // this subscription's buffer: unsubscribe, and route it all until the stream ends. (async-
        // nats' own `drain` does not wait for the server's answer, so it can drop messages still
        // on the way.) The deadline only matters if the connection is down.
        if sub.unsubscribe().await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + crate::limits::INGRESS_DRAIN_TIMEOUT;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
            if !self.handle(msg).await {
                return;
            }
        }
    }

    /// Decode and route one message; false once the shards are gone.
    async fn handle(&mut self, msg: async_nats::Message) -> bool {
        let received = Instant::now();
        let (decoder, ids) = (&self.decoder, &self.ids);
        let decoded = self
            .tenants
            .decode_as_published(&msg.subject, msg.headers.as_ref(), |subject, headers| {
                decoder.decode(subject, headers, &msg.payload, ids)
            });
        match decoded {
            Ok(Some(event)) => {
                if let Some(refused) = self.rates.refuse(&event.actor) {
                    let letter = DeadLetter::message(
                        refused.reason,
                        refused.detail,
                        &msg.subject,
                        msg.headers.as_ref(),
                        msg.payload.clone(),
                    )
                    .of_tenant(tenant::split(&event.actor).0);
                    self.egress.send(letter.into_outbound()).await;
                    return true;
                }
                self.events_in.increment(1);
                self.tenant_events.count(&event.actor);
                let routed = Routed {
                    event,
                    hops: 0,
                    received,
                    input: None,
                    only: replayed_for(msg.headers.as_ref()),
                };
                self.router.route(routed).await.is_ok()
            }
            Ok(None) => true,
            Err(e) => {
                self.dead_letter(&msg, e).await;
                true
            }
        }
    }

    async fn dead_letter(&self, msg: &async_nats::Message, e: IngressError) {
        let letter = self.tenants.dead_letter(e, &msg.subject, msg);
        self.egress.send(letter.into_outbound()).await;
    }
}

/// Merge a `profiles.<actor>` message (a JSON object) into the profile of `actor` (its key).
fn update_profile(profiles: &Profiles, actor: &str, payload: &[u8]) -> Result<(), IngressError> {
    let patch: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| IngressError::undecodable(format!("profile update is not JSON: {e}")))?;
    match profiles.merge(actor, &patch) {
        Ok(_) => Ok(()),
        Err(e @ (ProfileError::NotAnObject | ProfileError::Invalid(_))) => Err(IngressError::invalid(e.to_string())),
        Err(e) => {
            tracing::error!(actor, error = %e, "profile update failed");
            Err(IngressError::invalid(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::TenantConfig;
    use std::collections::BTreeMap;

    #[test]
    fn an_unreadable_inputs_tenant_is_its_own_subjects_else_its_headers_if_declared() {
        let declared = BTreeMap::from([("acme".to_owned(), TenantConfig::default())]);
        let inputs = TenantInputs::new("tenant", &Tenants::new(&declared).expect("tenants"));
        let naming = |tenant: &str| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(tenant::HEADER, tenant);
            headers
        };
        let of =
            |subject, headers: Option<&async_nats::HeaderMap>| inputs.tenant_of(subject, headers).map(str::to_owned);
        assert_eq!(of("tenant.acme.events.order", None).as_deref(), Some("acme"));
        assert_eq!(of("tenant.nobody.events.order", None), None);
        assert_eq!(of("events.order", Some(&naming("acme"))).as_deref(), Some("acme"));
        assert_eq!(of("events.order", Some(&naming("nobody"))), None);
        assert_eq!(of("events.order", Some(&naming(tenant::DEFAULT))), None);
        assert_eq!(of("events.order", None), None);
    }
}
