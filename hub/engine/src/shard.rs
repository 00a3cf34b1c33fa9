//! A shard: one OS thread that owns a slice of the actors and runs the plugin chain for their
//! events, one event at a time, in arrival order.
//!
//! Each turn of the loop ([`Shard::run`]) takes a micro-batch of work from the shard's queue
//! (events, actor requests, a stop) and the timers that came due. For each input it runs the
//! subscribed plugins ([`plugins`]), then the plugins subscribed to what they emitted for this
//! shard's actors ([`chain`]); the arbiter judges the actions they proposed ([`Judge`]); the
//! delivered ones go to their delivery plugins or to `hub.actions.<name>` ([`Dispatch`]).
//! Everything a turn publishes (emitted events, actions, deliveries, dead letters) goes into one
//! batch, handed to NATS in order at the end of the turn, without waiting for the commit: output
//! ids are derived from the cause, so a replay yields the same ids. State and timers are handed
//! to the committer once per commit interval.
//!
//! Everything a shard touches is its own (plugin instances, state cache, timer wheel), so the
//! hot path takes no lock shared with other shards.

mod chain;
mod plugins;
#[cfg(test)]
mod tests;

use crate::actor::ActorRequest;
use crate::arbiter::{Delivered, HELD_ACTIONS, Judge, PolicyStore};
use crate::cluster::Cluster;
use crate::dead_letter::{DeadLetter, Reason};
use crate::delivery::{Delivery, Dispatch, Sinks};
use crate::durable::{Checkpoints, Handoff, Handoffs};
use crate::egress::{Batcher, Egress, Outbound, subjects};
use crate::event::{Action, Event, Routed, derived_id, now_ms};
use crate::metrics as m;
use crate::registry::Live;
use crate::router::{Router, ShardMsg};
use crate::runtime::{Output, ShardStores};
use crate::shadow::Side;
use crate::state::{CommitQueue, Db, ShardCommits, StateCache, TimerWheel};
use crate::stats::PluginStats;
use bytes::Bytes;
use chain::Chain;
use plugins::{Cause, Plugins};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a shard is set up; built on the hub's thread, consumed by the shard's own thread.
pub struct ShardSetup {
    pub id: usize,
    pub rx: flume::Receiver<ShardMsg>,
    pub router: Router,
    pub egress: Egress,
    pub live: Arc<Live>,
    pub stats: Arc<PluginStats>,
    pub db: Db,
    pub timers: TimerWheel,
    /// Where the stored state and timers of tenants with quotas on them are counted.
    pub quotas: Arc<crate::quota::Quotas>,
    pub commits: CommitQueue,
    pub engine: crate::config::EngineConfig,
    pub policies: PolicyStore,
    pub sinks: Sinks,
    /// The inputs applied so far, per partition (durable mode).
    pub checkpoints: Checkpoints,
    /// Events emitted for other shards that cross through the `handoffs` tree (durable mode).
    pub handoffs: Handoffs,
    /// Inputs of each stream queued ahead of the shards, against their windows (durable mode
    /// with tenants' own streams).
    pub admission: Arc<crate::durable::Admission>,
    /// Whether emitted events carry their id as `Nats-Msg-Id`, for the output stream that
    /// keeps them (`[actions] keep_events`).
    pub keep_events: bool,
    /// Cluster mode: which partitions this instance processes, and where events emitted for
    /// another partition go.
    pub cluster: Option<ClusterLink>,
}

/// What a shard knows of the cluster.
#[derive(Clone)]
pub struct ClusterLink {
    pub cluster: Arc<Cluster>,
    /// The partition stream's subject prefix (`<subject>.<partition>`).
    pub subject: String,
    /// Where envelopes are taken in (`<events_subject>.<kind>`): an emitted event forwarded to
    /// its partition is decoded as an envelope published there.
    pub events_subject: String,
}

impl ClusterLink {
    /// An event emitted for an actor of `partition`, on its way there.
    fn forward(&self, event: &Event, hops: u8, partition: u16) -> Option<Outbound> {
        let body = match event.to_json() {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(error = %e, kind = event.kind, "emitted event not representable as JSON; not forwarded");
                return None;
            }
        };
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            crate::cluster::headers::SUBJECT,
            subjects::join(&self.events_subject, &event.kind).as_str(),
        );
        h.insert(crate::cluster::headers::HOPS, hops.to_string().as_str());
        h.insert(crate::egress::headers::MSG_ID, event.id.as_str());
        Some(Outbound {
            subject: format!("{}.{partition}", self.subject),
            headers: Some(h),
            payload: Bytes::from(body),
        })
    }
}

/// A shard's gauges and counters, registered once.
struct ShardMetrics {
    queue_depth: metrics::Gauge,
    timers_pending: metrics::Gauge,
    timers_fired: metrics::Counter,
    events_emitted: metrics::Counter,
    inputs_replayed: metrics::Counter,
    not_owned: metrics::Counter,
}

pub struct Shard {
    id: usize,
    rx: flume::Receiver<ShardMsg>,
    batch_size: usize,
    hop_limit: u8,
    db: Db,
    /// The plugins' state cache, timer wheel and profiles; lent to each plugin call.
    stores: Option<Box<ShardStores>>,
    plugins: Plugins,
    chain: Chain,
    judge: Judge,
    /// The actions the arbiter let through, on their way to delivery (a buffer kept for its
    /// capacity).
    delivered: Vec<Delivered>,
    dispatch: Dispatch,
    /// What this turn publishes, in order (handed to NATS at the end of the turn).
    egress: Batcher,
    commits: ShardCommits,
    /// Whether emitted events carry `Nats-Msg-Id` (see [`ShardSetup::keep_events`]).
    keep_events: bool,
    /// The inputs applied so far, per partition: a stream input at or below its partition's
    /// checkpoint was applied already (see `durable`).
    checkpoints: Checkpoints,
    admission: Arc<crate::durable::Admission>,
    /// The stream inputs this turn processed, (source, stored_ns): their lag ends when the turn
    /// hands its outputs to NATS, not when their own plugins return, so the guard also sees the
    /// rest of the turn they wait for.
    departing: Vec<(u16, i64)>,
    /// The ordinal of the last stream input handled (reported with each commit).
    handled: u64,
    cluster: Option<ClusterLink>,
    metrics: ShardMetrics,
}

impl Shard {
    /// Set up the shard and instantiate the live plugins. Runs on the shard's own thread.
    pub fn new(setup: ShardSetup) -> Shard {
        let label = setup.id.to_string();
        let mut state = StateCache::new(setup.engine.cache_entries).counting(setup.quotas);
        let judge = Judge::new(setup.policies, &setup.db, &mut state, setup.id);
        let commit_every = Duration::from_millis(setup.engine.commit_interval_ms.max(1));
        let mut shard = Shard {
            id: setup.id,
            rx: setup.rx,
            batch_size: setup.engine.batch_size.max(1),
            hop_limit: setup.engine.hop_limit,
            stores: Some(Box::new(ShardStores {
                state,
                timers: setup.timers,
                profiles: setup.db.profiles.cache(crate::limits::PROFILE_CACHE_BYTES),
            })),
            plugins: Plugins::new(setup.id, setup.live, setup.stats, setup.db.clone()),
            db: setup.db,
            chain: Chain::new(setup.id, setup.router, setup.handoffs),
            judge,
            delivered: Vec::new(),
            dispatch: Dispatch::new(setup.sinks),
            egress: Batcher::new(setup.egress),
            commits: ShardCommits::new(setup.id, setup.commits, commit_every),
            checkpoints: setup.checkpoints,
            admission: setup.admission,
            departing: Vec::new(),
            keep_events: setup.keep_events,
            handled: 0,
            cluster: setup.cluster,
            metrics: ShardMetrics {
                queue_depth: metrics::gauge!(m::SHARD_QUEUE_DEPTH, "shard" => label.clone()),
                timers_pending: metrics::gauge!(m::TIMERS_PENDING, "shard" => label.clone()),
                timers_fired: metrics::counter!(m::TIMERS_FIRED, "shard" => label.clone()),
                events_emitted: metrics::counter!(m::EVENTS_EMITTED, "shard" => label.clone()),
                inputs_replayed: metrics::counter!(m::INPUTS_REPLAYED, "shard" => label.clone()),
                not_owned: metrics::counter!(m::NOT_OWNED, "shard" => label),
            },
        };
        shard.plugins.adopt(&mut home(&mut shard.stores).state);
        shard
    }

    /// The shard's loop; returns after a `Stop` once its queue and outbox are empty.
    pub fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut stopping = false;
        for handoff in self.chain.take_restored() {
            self.take_handoff(handoff);
        }
        loop {
            if self.plugins.outdated() {
                let stores = home(&mut self.stores);
                self.plugins.adopt(&mut stores.state);
            }
            match self.rx.recv_deadline(self.next_wake()) {
                Ok(msg) => batch.push(msg),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => stopping = true,
            }
            batch.extend(self.rx.try_iter().take(self.batch_size - batch.len()));
            for msg in batch.drain(..) {
                match msg {
                    ShardMsg::Event(routed) => self.process(routed),
                    ShardMsg::Handoff(handoff) => self.take_handoff(handoff),
                    ShardMsg::Reload => {}
                    ShardMsg::Actor { actor, request } => self.answer(&actor, request),
                    ShardMsg::Adopt(adopt) => self.adopt(adopt),
                    ShardMsg::Actors { prefix, reply } => {
                        let stores = home(&mut self.stores);
                        let actors = stores
                            .timers
                            .actors_with_prefix(&prefix)
                            .chain(stores.state.actors_with_prefix(&prefix))
                            .map(str::to_owned)
                            .collect();
                        let _ = reply.send(actors);
                    }
                    ShardMsg::Stop => stopping = true,
                }
            }
            self.fire_due_timers();
            self.chain.flush_outbox(self.commits.applied());
            self.egress.flush();
            self.departed();
            self.metrics.queue_depth.set(self.rx.len() as f64);
            if Instant::now() >= self.commits.next() {
                self.commit();
            }
            if stopping && self.rx.is_empty() && !self.chain.waiting() {
                break;
            }
        }
        self.commit();
        self.egress.flush();
        self.departed();
        tracing::debug!(shard = self.id, "shard stopped");
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = self.commits.next();
        let wheel = self.stores.as_ref().and_then(|s| s.timers.next_due());
        if let Some(due) = wheel.into_iter().chain(self.plugins.next_shadow_due()).min() {
            let in_ms = (due - now_ms()).max(0) as u64;
            wake = wake.min(now + Duration::from_millis(in_ms));
        }
        if self.chain.waiting() || self.chain.handoffs_waiting() {
            wake = wake.min(now + Duration::from_millis(1));
        }
        wake
    }

    /// Run the plugin chain for one input event (unless it was applied before: see `durable`).
    fn process(&mut self, routed: Routed) {
        let ticket = routed.input;
        if let Some(ticket) = ticket {
            self.admission.taken(ticket.source);
            self.handled = ticket.ordinal;
            // A partition whose lease was lost since: its new owner reads the input again.
            if self
                .cluster
                .as_ref()
                .is_some_and(|c| !c.cluster.owns_actor(&routed.event.actor))
            {
                self.metrics.not_owned.increment(1);
                return;
            }
            let partition = Router::partition_of(&routed.event.actor);
            if !self.checkpoints.admit(ticket.source, partition, ticket.seq) {
                self.metrics.inputs_replayed.increment(1);
                return;
            }
        }
        if let Err(detail) = crate::event::check_input_kind(&routed.event.kind) {
            let letter = DeadLetter::event(Reason::ReservedKind, detail, &routed.event);
            self.egress.push(letter.into_outbound());
            return;
        }
        self.chain.push_local(routed);
        self.run_chain();
        if let Some(ticket) = ticket {
            self.departing.push((ticket.source, ticket.stored_ns));
        }
    }

    /// The turn's outputs are with NATS: the inputs that caused them are done.
    fn departed(&mut self) {
        for (source, stored_ns) in self.departing.drain(..) {
            self.admission.processed(source, stored_ns);
        }
    }

    /// Run an event another shard emitted for one of this shard's actors; its record in the
    /// `handoffs` tree goes with the commit that keeps its effects.
    fn take_handoff(&mut self, handoff: Handoff) {
        let Handoff { key, routed, .. } = handoff;
        self.chain.push_local(routed);
        self.run_chain();
        self.chain.handoff_done(key);
    }

    /// Run the subscribers of every event queued for this shard's own actors, then judge the
    /// actions proposed on the way and send the delivered ones on; delivery plugins may emit
    /// events in turn, which run before the next input.
    fn run_chain(&mut self) {
        loop {
            while let Some(routed) = self.chain.next_local() {
                let subscribers = self.plugins.subscribers_of(&routed.event.kind);
                for &p in subscribers.iter() {
                    if routed
                        .only
                        .as_deref()
                        .is_some_and(|only| **self.plugins.name(p) != *only)
                        || !self.plugins.takes(p, &routed.event.actor)
                    {
                        continue;
                    }
                    self.call(p, Cause::Event(&routed));
                }
            }
            if !self.judge.has_proposals() {
                return;
            }
            let mut delivered = std::mem::take(&mut self.delivered);
            let stores = home(&mut self.stores);
            self.judge.judge(stores, &mut delivered);
            for d in delivered.drain(..) {
                self.send_action(d.action, d.received);
            }
            // Keep the buffer's capacity for the next input.
            self.delivered = delivered;
        }
    }

    fn fire_due_timers(&mut self) {
        let now = now_ms();
        while let Some(timer) = home(&mut self.stores).timers.pop_due(now) {
            if self
                .cluster
                .as_ref()
                .is_some_and(|c| !c.cluster.owns_actor(&timer.actor))
            {
                home(&mut self.stores).timers.set_aside(&timer);
                self.metrics.not_owned.increment(1);
                continue;
            }
            self.metrics.timers_fired.increment(1);
            if timer.owner == HELD_ACTIONS {
                if let Err(letter) = self.judge.release(&timer) {
                    self.egress.push(letter.into_outbound());
                }
            } else {
                // A plugin rescoped away from the timer's tenant no longer runs for it.
                match self.plugins.find(&timer.owner) {
                    Some(p) if self.plugins.takes(p, &timer.actor) => self.call(p, Cause::Timer(&timer)),
                    _ => self.egress.push(self.plugins.orphaned(&timer).into_outbound()),
                }
            }
            // What a timer emits or releases runs like any input's.
            self.run_chain();
        }
        // A shadow's timers fire as its plugin's would; what it outputs goes nowhere.
        while let Some((p, timer)) = self.plugins.due_shadow_timer(now) {
            self.call(p, Cause::Timer(&timer));
        }
        let pending = home(&mut self.stores).timers.len();
        self.metrics.timers_pending.set(pending as f64);
    }

    /// Call plugin `p` and route its outputs, or publish the dead letter of a failed call. A
    /// shadow's outcome, and its active version's, go to their comparison; a shadow's go nowhere
    /// else.
    fn call(&mut self, p: usize, cause: Cause<'_>) {
        let result = self.plugins.call(p, &mut self.stores, &cause);
        if let Some((side, book)) = self.plugins.watch(p) {
            let (cause_key, event, actor) = match &cause {
                Cause::Event(r) => (Cow::Borrowed(r.event.id.as_str()), true, r.event.actor.as_str()),
                Cause::Timer(t) => (Cow::Owned(format!("timer:{}", t.id)), false, t.actor.as_str()),
            };
            book.record(*side, &cause_key, event, actor, &result);
            if *side == Side::Shadow {
                return;
            }
        }
        match result {
            Ok(outputs) if outputs.is_empty() => {}
            Ok(outputs) => self.route_outputs(p, &cause, outputs),
            Err(letter) => self.egress.push(letter.into_outbound()),
        }
    }

    /// Emitted events go on the chain, actions to the arbiter, deliveries to their sinks. (Their
    /// kinds, actors and sizes were checked with the call's outputs, see `runtime::outputs`.)
    fn route_outputs(&mut self, p: usize, cause: &Cause<'_>, outputs: Vec<Output>) {
        let (cause_id, actor, hops, received) = match cause {
            Cause::Event(r) => (
                Cow::Borrowed(r.event.id.as_str()),
                r.event.actor.as_str(),
                r.hops,
                r.received,
            ),
            Cause::Timer(t) => (Cow::Owned(t.cause_id()), t.actor.as_str(), 0, Instant::now()),
        };
        let now = now_ms();
        for (index, output) in outputs.into_iter().enumerate() {
            let id = derived_id(&cause_id, self.plugins.name(p), index);
            match output {
                Output::Emit {
                    kind,
                    actor: target,
                    payload,
                } => {
                    let event = Event {
                        id,
                        kind,
                        // The actor a plugin names is in its caller's tenant.
                        actor: target.map_or_else(|| actor.to_owned(), |t| crate::tenant::sibling(actor, &t)),
                        time: now,
                        source: self.plugins.source(p).to_owned(),
                        payload,
                    };
                    self.emit(p, event, actor, hops.saturating_add(1), received);
                }
                Output::Action {
                    name,
                    category,
                    priority,
                    dedup_key,
                    payload,
                } => {
                    let action = Action {
                        id,
                        name,
                        category,
                        priority,
                        dedup_key,
                        actor: actor.to_owned(),
                        plugin: self.plugins.name(p).to_string(),
                        cause: cause_id.to_string(),
                        time: now,
                        payload,
                    };
                    self.judge.propose(action, received);
                }
                Output::Deliver { channel, target, body } => {
                    let delivery = Delivery {
                        id,
                        actor: actor.to_owned(),
                        channel,
                        target: if target.is_empty() { actor.to_owned() } else { target },
                        plugin: self.plugins.name(p).to_string(),
                        body: Bytes::from(body),
                    };
                    if let Some(msg) = self.dispatch.deliver(delivery) {
                        self.egress.push(msg);
                    }
                }
            }
        }
    }

    /// Publish an emitted event on `hub.events.<kind>` and queue it for its actor's shard.
    fn emit(&mut self, p: usize, event: Event, from: &str, hops: u8, received: Instant) {
        if hops > self.hop_limit {
            let detail = format!(
                "event chain longer than the hop limit of {} (last plugin {})",
                self.hop_limit,
                self.plugins.name(p)
            );
            let letter = DeadLetter::event(Reason::HopLimit, detail, &event).plugin(self.plugins.name(p));
            self.egress.push(letter.into_outbound());
            return;
        }
        self.metrics.events_emitted.increment(1);
        match event.to_json() {
            // Headers only for the stream's dedup: the id is in the body, and headers cost a
            // hash map per message.
            Ok(body) => self.egress.push(Outbound {
                subject: subjects::join(subjects::EVENTS, &event.kind),
                headers: self.keep_events.then(|| {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert(crate::egress::headers::MSG_ID, event.id.as_str());
                    h
                }),
                payload: Bytes::from(body),
            }),
            Err(e) => tracing::warn!(error = %e, kind = event.kind, "emitted event not representable as JSON"),
        }
        // For an actor of another partition (cluster mode): through the partition stream to
        // whichever instance owns it, published before this shard's commit like any output.
        if let Some(link) = &self.cluster {
            // Another shard's actor too: the `handoffs` tree is this instance's disk, which a
            // partition's next owner does not have.
            let to = link.cluster.partition_of(&event.actor);
            if to != link.cluster.partition_of(from) || self.chain.shard_of(&event.actor) != self.id {
                if let Some(msg) = link.forward(&event, hops, to) {
                    self.egress.push(msg);
                }
                return;
            }
        }
        self.chain.route(Routed {
            event,
            hops,
            received,
            input: None,
            only: None,
        });
    }

    /// A delivered action goes to the delivery plugins subscribed to it; when none of them
    /// delivers it (none is subscribed, none has a route for it, or their calls failed), it goes
    /// to `hub.actions.<name>`.
    fn send_action(&mut self, action: Action, received: Instant) {
        let kind = Dispatch::action_kind(&action.name);
        let takers = self.plugins.subscribers_of(&kind);
        let made = self.dispatch.made();
        if !takers.is_empty() {
            let routed = Dispatch::action_event(&action, kind, received);
            for &p in takers.iter() {
                // A delivery plugin of other tenants does not deliver this one's actions.
                if self.plugins.takes(p, &action.actor) {
                    self.call(p, Cause::Event(&routed));
                }
            }
        }
        if self.dispatch.made() == made
            && let Some(msg) = Dispatch::action_message(&action)
        {
            self.egress.push(msg);
        }
    }

    /// Inspect or erase one actor for the admin API.
    fn answer(&mut self, actor: &str, request: ActorRequest) {
        let stores = home(&mut self.stores);
        match request {
            ActorRequest::Inspect(reply) => {
                let ledger = self.judge.ledger(&mut stores.state, actor);
                let view = crate::actor::inspect(&self.db, stores, self.plugins.slots(), &ledger, actor);
                let _ = reply.send(view);
            }
            ActorRequest::Rearm {
                plugin,
                id,
                payload,
                reply,
            } => {
                // Due now: it fires with the next timers, and is durable with the next commit.
                stores.timers.set(&plugin, actor, &id, now_ms(), payload);
                let _ = reply.send(());
            }
            ActorRequest::Erase(reply) => {
                self.plugins.forget_in_shadows(actor);
                let erased = crate::actor::erase(&self.db, stores, self.plugins.slots(), actor).map(|mut erased| {
                    erased.actions = self.judge.forget(&mut stores.state, actor);
                    erased
                });
                // Make the erasure durable now rather than at the next interval.
                self.commit();
                let _ = reply.send(erased);
            }
        }
    }

    /// Fold the plugins' counts into the API's statistics and hand what changed to the committer.
    /// Take a partition restored from the changelog: what was cached of its actors goes (sled
    /// holds the restored state), its timers and checkpoints come.
    fn adopt(&mut self, adopt: crate::router::Adopt) {
        if let Some(link) = &self.cluster {
            let stores = home(&mut self.stores);
            let of = |actor: &str| link.cluster.partition_of(actor) == adopt.partition;
            stores.state.forget(of);
            stores.timers.replace(of, adopt.timers);
            for (partition, seq) in adopt.checkpoints {
                self.checkpoints.restore(partition, seq);
            }
        }
        let _ = adopt.done.send(());
    }

    fn commit(&mut self) {
        self.plugins.fold_stats();
        let stores = home(&mut self.stores);
        let mut changes = Vec::new();
        if let Some(link) = &self.cluster {
            stores.state.log_changes(&link.cluster, &mut changes);
            stores.timers.log_changes(&link.cluster, &mut changes);
            self.checkpoints.log_changes(&link.cluster, &mut changes);
        }
        let seq = self.commits.upcoming();
        let durable = self
            .checkpoints
            .take_commit()
            .into_iter()
            .chain(self.chain.take_commit(seq));
        self.commits
            .commit(&mut stores.state, &mut stores.timers, durable, self.handled, changes);
    }
}

/// The shard's stores between plugin calls (a call lends them to the plugin's sandbox and always
/// hands them back).
fn home(stores: &mut Option<Box<ShardStores>>) -> &mut ShardStores {
    stores
        .as_deref_mut()
        .expect("shard stores are handed back after every plugin call")
}
