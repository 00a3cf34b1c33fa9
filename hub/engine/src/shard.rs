//! A shard: one OS thread that owns a slice of the actors and runs the plugin chain for their
//! events, one event at a time, in arrival order.
//!
//! Each turn of the loop takes a micro-batch from the shard's queue, runs every subscribed plugin
//! for each event (and for the events those plugins emit for actors of this shard), fires the
//! timers that came due, hands events for other shards to their queues, and commits the state
//! cache to sled once per commit interval. Outputs are published at the end of the turn that
//! produced them, without waiting for the commit: their ids are derived from the cause, so a
//! replay yields the same ids (DESIGN §7).
//! The actions of an input are judged by the arbiter when the input is done (`shard/actions.rs`).
//!
//! Everything a shard touches is its own (plugin instances, state cache, timer wheel), so the
//! hot path takes no lock shared with other shards.

use crate::actor::{ActorRequest, ActorState, Erased, PendingTimer, decode_value};
use crate::arbiter::PolicyStore;
use crate::dead_letter::{DeadLetter, Reason};
use crate::delivery::Sinks;
use crate::egress::{Batcher, Egress, Outbound, subjects};
use crate::event::{ACTION_KIND_PREFIX, Action, Event, Routed, derived_id, now_ms};
use crate::limits::{KIND_CACHE_LIMIT, LATENCY_SAMPLE_EVERY, MAX_QUARANTINE, TRAPS_BEFORE_QUARANTINE};
use crate::metrics as m;
use crate::registry::{Live, LivePlugin, LiveSet};
use crate::router::{Router, ShardMsg};
use crate::runtime::{CallError, Output, PluginInstance, ShardStores};
use crate::state::{Applied, Commit, CommitQueue, DueTimer, PluginSlot, StateCache, TimerWheel};
use crate::stats::{Pending, PluginStats};
use bytes::Bytes;
use hub_plugin_sdk::pattern::kind_matches;
use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod actions;
use actions::Proposal;

/// How a shard is set up; built on the hub's thread, consumed by the shard's own thread.
pub struct ShardSetup {
    pub id: usize,
    pub rx: flume::Receiver<ShardMsg>,
    pub router: Router,
    pub egress: Egress,
    pub live: Arc<Live>,
    pub stats: Arc<PluginStats>,
    pub db: crate::state::Db,
    pub timers: TimerWheel,
    pub commits: CommitQueue,
    pub engine: crate::config::EngineConfig,
    pub policies: PolicyStore,
    pub sinks: Sinks,
}

/// The key of an actor's action ledger in the `actions` tree.
const LEDGER_KEY: &str = "ledger";
/// The owner of the durable timers of held actions (not a plugin name: those have no dots).
const ARBITER_TIMERS: &str = "hub.arbiter";

/// A supervisor in the Akka sense: restarts a trapping plugin at once, and quarantines it with
/// exponential back-off when it keeps trapping, so one bad plugin cannot eat a shard's time.
#[derive(Default)]
struct Supervisor {
    consecutive_traps: u32,
    quarantines: u32,
    until: Option<Instant>,
}

impl Supervisor {
    fn quarantined(&mut self, now: Instant) -> bool {
        match self.until {
            Some(t) if now < t => true,
            Some(_) => {
                self.until = None;
                false
            }
            None => false,
        }
    }

    fn succeeded(&mut self) {
        self.consecutive_traps = 0;
        self.quarantines = 0;
    }

    /// Record a trap; true when it starts a quarantine.
    fn trapped(&mut self, now: Instant) -> bool {
        self.consecutive_traps += 1;
        if self.consecutive_traps < TRAPS_BEFORE_QUARANTINE {
            return false;
        }
        self.consecutive_traps = 0;
        let backoff = Duration::from_secs(1u64 << self.quarantines.min(16)).min(MAX_QUARANTINE);
        self.quarantines += 1;
        self.until = Some(now + backoff);
        true
    }
}

struct Loaded {
    name: Arc<str>,
    /// The live version this instance runs; compared by pointer when the live set changes.
    live: Arc<LivePlugin>,
    source: String,
    instance: PluginInstance,
    supervisor: Supervisor,
    calls: metrics::Counter,
    errors: metrics::Counter,
    latency: metrics::Histogram,
    /// Calls counted towards the next latency sample.
    sampled: u32,
    /// Counts for the admin API, folded into [`PluginStats`] at each commit.
    pending: Pending,
}

/// What a plugin call is about (an action for a delivery plugin comes as an event of kind
/// `action.<name>`).
enum Cause<'a> {
    Event(&'a Routed),
    Timer(&'a DueTimer),
}

pub struct Shard {
    id: usize,
    rx: flume::Receiver<ShardMsg>,
    router: Router,
    /// What this turn of the loop publishes (handed to NATS at the end of the turn).
    egress: Batcher,
    plugins: Vec<Loaded>,
    by_name: FxHashMap<Arc<str>, usize>,
    /// The live set this shard runs.
    live: Arc<Live>,
    live_set: Arc<LiveSet>,
    stats: Arc<PluginStats>,
    db: crate::state::Db,
    /// State cache slot of every plugin name this shard has run (a name keeps its slot).
    slots: FxHashMap<Arc<str>, PluginSlot>,
    /// Cache slot of the actors' action ledgers.
    actions_slot: PluginSlot,
    policies: PolicyStore,
    sinks: Sinks,
    /// Actions proposed while handling the current input, judged together when it is done.
    proposed: Vec<Proposal>,
    /// Deliveries handed to the sinks so far (tells whether delivery plugins took an action).
    deliveries_made: u64,
    /// Delivery counters by channel, kept like `decisions`.
    deliveries: FxHashMap<String, metrics::Counter>,
    /// Decision counters by category and reason, so the hot path neither registers nor allocates.
    decisions: FxHashMap<String, FxHashMap<&'static str, metrics::Counter>>,
    subscribers: FxHashMap<String, Rc<[usize]>>,
    stores: Option<Box<ShardStores>>,
    /// Emitted events for this shard's own actors, processed before the next input.
    local: VecDeque<Routed>,
    /// Emitted events for other shards whose queues were full; retried every turn, in order.
    outbox: Vec<VecDeque<Routed>>,
    hop_limit: u8,
    batch_size: usize,
    commit_every: Duration,
    next_commit: Instant,
    commits: CommitQueue,
    commit_seq: u64,
    applied: Applied,
    queue_depth: metrics::Gauge,
    timers_pending: metrics::Gauge,
    timers_fired: metrics::Counter,
    actions_out: metrics::Counter,
    events_emitted: metrics::Counter,
    event_to_action: metrics::Histogram,
}

impl Shard {
    /// Set up the shard and instantiate the live plugins. Runs on the shard's own thread.
    pub fn new(setup: ShardSetup) -> Shard {
        let shard = setup.id.to_string();
        let shards = setup.router.shard_count();
        let commit_every = Duration::from_millis(setup.engine.commit_interval_ms.max(1));
        let mut state = StateCache::new(setup.engine.cache_entries);
        let actions_slot = state.add_plugin(setup.db.actions.clone());
        let mut this = Shard {
            id: setup.id,
            rx: setup.rx,
            router: setup.router,
            egress: Batcher::new(setup.egress),
            plugins: Vec::new(),
            by_name: FxHashMap::default(),
            live_set: Arc::new(LiveSet::default()),
            live: setup.live,
            stats: setup.stats,
            db: setup.db.clone(),
            slots: FxHashMap::default(),
            actions_slot,
            policies: setup.policies,
            sinks: setup.sinks,
            proposed: Vec::new(),
            decisions: FxHashMap::default(),
            deliveries_made: 0,
            deliveries: FxHashMap::default(),
            subscribers: FxHashMap::default(),
            stores: Some(Box::new(ShardStores {
                state,
                timers: setup.timers,
                profiles: setup.db.profiles.clone(),
            })),
            local: VecDeque::new(),
            outbox: (0..shards).map(|_| VecDeque::new()).collect(),
            hop_limit: setup.engine.hop_limit,
            batch_size: setup.engine.batch_size.max(1),
            commit_every,
            next_commit: Instant::now() + commit_every,
            commits: setup.commits,
            commit_seq: 0,
            applied: Applied::default(),
            queue_depth: metrics::gauge!(m::SHARD_QUEUE_DEPTH, "shard" => shard.clone()),
            timers_pending: metrics::gauge!(m::TIMERS_PENDING, "shard" => shard.clone()),
            timers_fired: metrics::counter!(m::TIMERS_FIRED, "shard" => shard.clone()),
            actions_out: metrics::counter!(m::ACTIONS_OUT, "shard" => shard.clone()),
            events_emitted: metrics::counter!(m::EVENTS_EMITTED, "shard" => shard.clone()),
            event_to_action: metrics::histogram!(m::EVENT_TO_ACTION_SECONDS, "shard" => shard),
        };
        this.adopt_live_set();
        this
    }

    /// Switch to the newest live set: keep instances whose version is unchanged, start new
    /// versions (their state and timers carry over: they belong to the name), drop the rest.
    /// Runs between batches, so each event is handled by exactly one version.
    fn adopt_live_set(&mut self) {
        let set = self.live.load();
        let mut old: FxHashMap<Arc<str>, Loaded> = self.plugins.drain(..).map(|l| (l.name.clone(), l)).collect();
        for live in &set.plugins {
            match old.remove(&live.name) {
                Some(kept) if Arc::ptr_eq(&kept.live, live) => self.plugins.push(kept),
                previous => {
                    if let Some(mut prev) = previous {
                        self.stats.fold(self.id, &prev.name, &mut prev.pending);
                    }
                    let loaded = self.start_plugin(live);
                    self.plugins.push(loaded);
                }
            }
        }
        for (name, mut gone) in old {
            self.stats.fold(self.id, &name, &mut gone.pending);
        }
        self.by_name = self
            .plugins
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        self.subscribers.clear();
        self.live.adopted(self.id, set.generation);
        self.live_set = set;
    }

    fn start_plugin(&mut self, live: &Arc<LivePlugin>) -> Loaded {
        let name = live.name.clone();
        let slot = match self.slots.get(&name) {
            Some(slot) => *slot,
            None => {
                let slot = match self.db.state_tree(&name) {
                    Ok(tree) => self.stores().state.add_plugin(tree),
                    Err(e) => {
                        tracing::error!(plugin = %name, error = %e, "cannot open the plugin's state tree");
                        PluginSlot::PROBE
                    }
                };
                self.slots.insert(name.clone(), slot);
                slot
            }
        };
        let (instance, failed) = PluginInstance::starting(live.module.clone(), name.clone(), slot);
        if let Some(e) = failed {
            tracing::error!(plugin = %name, shard = self.id, error = %e, "plugin did not start; retried on its next event");
        }
        // Per-shard series: shards never share a metric's atomics on the hot path.
        let labels = [("plugin", name.to_string()), ("shard", self.id.to_string())];
        Loaded {
            source: format!("plugin:{name}"),
            name,
            live: live.clone(),
            instance,
            supervisor: Supervisor::default(),
            calls: metrics::counter!(m::PLUGIN_CALLS, &labels),
            errors: metrics::counter!(m::PLUGIN_ERRORS, &labels),
            latency: metrics::histogram!(m::PLUGIN_CALL_SECONDS, &labels),
            sampled: 0,
            pending: Pending::new(),
        }
    }

    fn stores(&mut self) -> &mut ShardStores {
        self.stores
            .as_deref_mut()
            .expect("shard stores are handed back after every plugin call")
    }

    /// The shard's loop; returns after a `Stop` once its queue and outbox are empty.
    pub fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut stopping = false;
        loop {
            if self.live.generation() != self.live_set.generation {
                self.adopt_live_set();
            }
            let wake = self.next_wake();
            match self.rx.recv_deadline(wake) {
                Ok(msg) => batch.push(msg),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => stopping = true,
            }
            batch.extend(self.rx.try_iter().take(self.batch_size - batch.len()));
            for msg in batch.drain(..) {
                match msg {
                    ShardMsg::Event(routed) => self.process(routed),
                    ShardMsg::Reload => {}
                    ShardMsg::Actor { actor, request } => self.answer(&actor, request),
                    ShardMsg::Stop => stopping = true,
                }
            }
            self.fire_due_timers();
            self.flush_outbox();
            self.egress.flush();
            self.queue_depth.set(self.rx.len() as f64);
            if Instant::now() >= self.next_commit {
                self.commit();
            }
            if stopping && self.rx.is_empty() && self.outbox.iter().all(VecDeque::is_empty) {
                break;
            }
        }
        self.commit();
        self.egress.flush();
        tracing::debug!(shard = self.id, "shard stopped");
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = self.next_commit;
        if let Some(due) = self.stores.as_ref().and_then(|s| s.timers.next_due()) {
            let in_ms = (due - now_ms()).max(0) as u64;
            wake = wake.min(now + Duration::from_millis(in_ms));
        }
        if self.outbox.iter().any(|q| !q.is_empty()) {
            wake = wake.min(now + Duration::from_millis(1));
        }
        wake
    }

    /// Run the plugin chain for one event and for what it emits on this shard, then judge the
    /// actions they proposed.
    fn process(&mut self, routed: Routed) {
        if routed.event.kind.starts_with(ACTION_KIND_PREFIX) {
            let detail = format!(
                "event kinds starting with {ACTION_KIND_PREFIX:?} are reserved for actions on their way to delivery"
            );
            let letter = DeadLetter::event(Reason::ReservedKind, detail, &routed.event);
            self.egress.push(letter.into_outbound());
            return;
        }
        self.local.push_back(routed);
        self.run_local_chain();
    }

    /// Run the subscribers of every event queued for this shard's own actors, then judge the
    /// actions proposed on the way.
    fn run_local_chain(&mut self) {
        loop {
            while let Some(routed) = self.local.pop_front() {
                let subscribers = self.subscribers_of(&routed.event.kind);
                for &p in subscribers.iter() {
                    self.call(p, Cause::Event(&routed));
                }
            }
            if self.proposed.is_empty() {
                return;
            }
            // Delivery plugins may emit events in turn; those run before the next input.
            self.arbitrate();
        }
    }

    /// Plugins subscribed to `kind`, cached per kind. Subscriptions to actions (`action.…`) and
    /// to events are kept apart, so a plugin that takes every event (`>`) gets no actions.
    fn subscribers_of(&mut self, kind: &str) -> Rc<[usize]> {
        if let Some(list) = self.subscribers.get(kind) {
            return list.clone();
        }
        if self.subscribers.len() >= KIND_CACHE_LIMIT {
            self.subscribers.clear();
        }
        let list: Rc<[usize]> = self
            .plugins
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                let d = &p.instance.module().description;
                let action = kind.starts_with(ACTION_KIND_PREFIX);
                d.subscribes
                    .iter()
                    .any(|pat| pat.starts_with(ACTION_KIND_PREFIX) == action && kind_matches(pat, kind))
            })
            .map(|(i, _)| i)
            .collect();
        self.subscribers.insert(kind.to_owned(), list.clone());
        list
    }

    fn fire_due_timers(&mut self) {
        let now = now_ms();
        while let Some(timer) = self.stores().timers.pop_due(now) {
            self.timers_fired.increment(1);
            if timer.plugin == ARBITER_TIMERS {
                self.release_held(&timer);
                self.run_local_chain();
                continue;
            }
            match self.by_name.get(timer.plugin.as_str()).copied() {
                Some(p) => self.call(p, Cause::Timer(&timer)),
                None => {
                    let disabled = self.live_set.disabled.iter().any(|d| **d == *timer.plugin);
                    let (reason, state) = if disabled {
                        (Reason::Disabled, "disabled")
                    } else {
                        (Reason::NoPlugin, "not loaded")
                    };
                    let detail = format!(
                        "timer {:?} belongs to plugin {:?}, which is {state}",
                        timer.id, timer.plugin
                    );
                    let letter = DeadLetter::timer(reason, detail, &timer.id, &timer.payload).plugin(&timer.plugin);
                    self.egress.push(letter.into_outbound());
                }
            }
            // Emitted events of timers run like any others.
            self.run_local_chain();
        }
        let pending = self.stores().timers.len();
        self.timers_pending.set(pending as f64);
    }

    /// Call plugin `p` for an event or a timer, supervise the outcome, and route its outputs.
    fn call(&mut self, p: usize, cause: Cause<'_>) {
        let now = Instant::now();
        let plugin = &mut self.plugins[p];
        if plugin.supervisor.quarantined(now) {
            let err = format!("plugin {} is quarantined after repeated traps", plugin.name);
            self.dead_letter_cause(p, &cause, Reason::Quarantined, &err);
            return;
        }
        if plugin.instance.is_poisoned()
            && let Err(e) = plugin.instance.recover()
        {
            plugin.errors.increment(1);
            plugin.pending.errors += 1;
            if plugin.supervisor.trapped(now) {
                self.quarantine_started(p);
            }
            let detail = format!("plugin {} could not be restarted: {e}", self.plugins[p].name);
            self.dead_letter_cause(p, &cause, e.reason(), &detail);
            return;
        }
        let wall = now_ms();
        let result = match &cause {
            Cause::Event(r) => plugin.instance.on_event(&mut self.stores, &r.event, wall),
            Cause::Timer(t) => plugin.instance.on_timer(&mut self.stores, t, wall),
        };
        let plugin = &mut self.plugins[p];
        let took = now.elapsed();
        plugin.calls.increment(1);
        plugin.pending.record(took.as_micros() as u64);
        plugin.sampled = plugin.sampled.wrapping_add(1);
        if plugin.sampled.is_multiple_of(LATENCY_SAMPLE_EVERY) {
            plugin.latency.record(took.as_secs_f64());
        }
        match result {
            Ok(outputs) => {
                plugin.supervisor.succeeded();
                self.route_outputs(p, &cause, outputs);
            }
            Err(e) => self.call_failed(p, &cause, e),
        }
    }

    fn call_failed(&mut self, p: usize, cause: &Cause<'_>, e: CallError) {
        let plugin = &mut self.plugins[p];
        plugin.errors.increment(1);
        plugin.pending.errors += 1;
        tracing::warn!(plugin = %plugin.name, reason = %e.reason(), error = %e, "plugin call failed");
        if e.is_trap() {
            let started = plugin.supervisor.trapped(Instant::now());
            // Re-create the instance now so the next event does not pay for it.
            if let Err(again) = plugin.instance.recover() {
                tracing::warn!(plugin = %plugin.name, error = %again, "plugin could not be restarted");
            }
            if started {
                self.quarantine_started(p);
            }
        }
        let detail = format!("plugin {}: {e}", self.plugins[p].name);
        self.dead_letter_cause(p, cause, e.reason(), &detail);
    }

    fn quarantine_started(&mut self, p: usize) {
        let name = self.plugins[p].name.to_string();
        metrics::counter!(m::PLUGIN_QUARANTINES, "plugin" => name.clone()).increment(1);
        tracing::error!(
            plugin = name,
            shard = self.id,
            "plugin quarantined after repeated traps"
        );
    }

    fn dead_letter_cause(&mut self, p: usize, cause: &Cause<'_>, reason: Reason, detail: &str) {
        match cause {
            Cause::Event(r) => self.dead_letter_event(p, &r.event, reason, detail),
            Cause::Timer(t) => {
                let letter = DeadLetter::timer(reason, detail, &t.id, &t.payload).plugin(&self.plugins[p].name);
                self.egress.push(letter.into_outbound());
            }
        }
    }

    fn route_outputs(&mut self, p: usize, cause: &Cause<'_>, outputs: Vec<Output>) {
        if outputs.is_empty() {
            return;
        }
        let (cause_id, actor, hops, received) = match cause {
            Cause::Event(r) => (
                Cow::Borrowed(r.event.id.as_str()),
                r.event.actor.as_str(),
                r.hops,
                r.received,
            ),
            Cause::Timer(t) => (
                Cow::Owned(format!("timer:{}:{}:{}:{}", t.plugin, t.actor, t.id, t.due)),
                t.actor.as_str(),
                0,
                Instant::now(),
            ),
        };
        let now = now_ms();
        for (index, output) in outputs.into_iter().enumerate() {
            let id = derived_id(&cause_id, &self.plugins[p].name, index);
            match output {
                Output::Emit {
                    kind,
                    actor: target,
                    payload,
                } => {
                    let event = Event {
                        id,
                        kind,
                        actor: target.unwrap_or_else(|| actor.to_owned()),
                        time: now,
                        source: self.plugins[p].source.clone(),
                        payload,
                    };
                    self.emit(p, event, hops.saturating_add(1), received);
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
                        plugin: self.plugins[p].name.to_string(),
                        cause: cause_id.to_string(),
                        time: now,
                        payload,
                    };
                    self.propose(action, received);
                }
                Output::Deliver { channel, target, body } => {
                    let target = if target.is_empty() { actor.to_owned() } else { target };
                    self.deliver(p, id, actor, channel, target, body);
                }
            }
        }
    }

    /// Publish an emitted event on `hub.events.<kind>` and route it to its actor's shard. (Its
    /// kind, actor and size were checked with the call's outputs, see `runtime::outputs`.)
    fn emit(&mut self, p: usize, event: Event, hops: u8, received: Instant) {
        if hops > self.hop_limit {
            let detail = format!(
                "event chain longer than the hop limit of {} (last plugin {})",
                self.hop_limit, self.plugins[p].name
            );
            self.dead_letter_event(p, &event, Reason::HopLimit, &detail);
            return;
        }
        self.events_emitted.increment(1);
        match event.to_json() {
            // No headers: the id is in the body, and headers cost a hash map per message.
            Ok(body) => self.egress.push(Outbound {
                subject: subjects::join(subjects::EVENTS, &event.kind),
                headers: None,
                payload: Bytes::from(body),
            }),
            Err(e) => tracing::warn!(error = %e, kind = event.kind, "emitted event not representable as JSON"),
        }
        let shard = self.router.shard_of(&event.actor);
        let routed = Routed { event, hops, received };
        if shard == self.id {
            self.local.push_back(routed);
        } else {
            self.outbox[shard].push_back(routed);
        }
    }

    fn dead_letter_event(&mut self, p: usize, event: &Event, reason: Reason, detail: &str) {
        let letter = DeadLetter::event(reason, detail, event).plugin(&self.plugins[p].name);
        self.egress.push(letter.into_outbound());
    }

    /// Inspect or erase one actor for the admin API.
    fn answer(&mut self, actor: &str, request: ActorRequest) {
        match request {
            ActorRequest::Inspect(reply) => {
                let _ = reply.send(self.inspect(actor));
            }
            ActorRequest::Erase(reply) => {
                let _ = reply.send(self.erase(actor));
            }
        }
    }

    /// Each plugin's state (as the plugin would read it now) and the pending timers of `actor`.
    fn inspect(&mut self, actor: &str) -> ActorState {
        let mut view = ActorState::default();
        for plugin in self.db.state_plugins() {
            let entries = match self.slots.get(plugin.as_str()).copied() {
                Some(slot) => self
                    .stores()
                    .state
                    .actor_entries(slot, actor)
                    .map_err(|e| e.to_string()),
                None => self
                    .db
                    .state_tree(&plugin)
                    .map_err(|e| e.to_string())
                    .and_then(|tree| scan_actor(&tree, actor).map_err(|e| e.to_string())),
            };
            match entries {
                Ok(entries) if entries.is_empty() => {}
                Ok(entries) => {
                    let values = entries.into_iter().map(|(k, v)| (k, decode_value(&v))).collect();
                    view.state.insert(plugin, values);
                }
                Err(e) => view.errors.push(format!("state of plugin {plugin}: {e}")),
            }
        }
        view.timers = self
            .stores()
            .timers
            .of_actor(actor)
            .into_iter()
            .map(|t| PendingTimer {
                plugin: t.plugin,
                id: t.id,
                due: crate::event::rfc3339(t.due),
                payload: decode_value(&t.payload),
            })
            .collect();
        view.actions = self
            .ledger(actor)
            .entries
            .iter()
            .map(crate::actor::ActionRecord::from)
            .collect();
        view
    }

    /// Erase the actor's state in every plugin (loaded or not) and its pending timers. The
    /// deletions are committed like any write; state of plugins this shard does not run is
    /// removed from sled directly (no cache holds it).
    fn erase(&mut self, actor: &str) -> Result<Erased, String> {
        let mut erased = Erased::default();
        for plugin in self.db.state_plugins() {
            match self.slots.get(plugin.as_str()).copied() {
                Some(slot) => {
                    let state = &mut self.stores().state;
                    let entries = state.actor_entries(slot, actor).map_err(|e| e.to_string())?;
                    erased.state_keys += entries.len();
                    for (key, _) in entries {
                        state.set(slot, actor, &key, None);
                    }
                }
                None => {
                    let tree = self.db.state_tree(&plugin).map_err(|e| e.to_string())?;
                    for (key, _) in scan_actor(&tree, actor).map_err(|e| e.to_string())? {
                        let mut full = Vec::new();
                        crate::state::keys::state_key(&mut full, actor, &key);
                        tree.remove(full).map_err(|e| e.to_string())?;
                        erased.state_keys += 1;
                    }
                }
            }
        }
        erased.actions = self.ledger(actor).entries.len();
        let slot = self.actions_slot;
        self.stores().state.set(slot, actor, LEDGER_KEY, None);
        erased.timers = self.stores().timers.erase_actor(actor);
        // Make the erasure durable now rather than at the next interval.
        self.commit();
        Ok(erased)
    }

    /// Hand queued events to other shards, oldest first, without ever blocking.
    fn flush_outbox(&mut self) {
        for shard in 0..self.outbox.len() {
            while let Some(routed) = self.outbox[shard].pop_front() {
                match self.router.try_send(shard, ShardMsg::Event(routed)) {
                    Ok(()) => {}
                    Err(flume::TrySendError::Full(ShardMsg::Event(routed))) => {
                        self.outbox[shard].push_front(routed);
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(shard, "target shard stopped; emitted event dropped at shutdown");
                        break;
                    }
                }
            }
        }
    }

    /// Hand dirty state and timers to the committer, and trim the cache if it is too large.
    fn commit(&mut self) {
        for plugin in &mut self.plugins {
            self.stats.fold(self.id, &plugin.name, &mut plugin.pending);
        }
        let seq = self.commit_seq + 1;
        let applied = self.applied.get();
        let stores = self.stores();
        let mut batches = stores.state.take_commit(seq);
        batches.extend(stores.timers.take_commit());
        stores.state.evict(applied);
        if !batches.is_empty() {
            self.commit_seq = seq;
            self.commits.send(Commit {
                seq,
                batches,
                applied: self.applied.clone(),
            });
        }
        self.next_commit = Instant::now() + self.commit_every;
    }
}

/// The state entries of `actor` in a plugin tree no shard cache holds.
fn scan_actor(tree: &sled::Tree, actor: &str) -> Result<Vec<(String, Vec<u8>)>, sled::Error> {
    let mut prefix = Vec::new();
    crate::state::keys::push_actor(&mut prefix, actor);
    tree.scan_prefix(&prefix)
        .map(|item| {
            let (key, value) = item?;
            Ok((
                String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
                value.to_vec(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Supervisor;
    use crate::limits::{MAX_QUARANTINE, TRAPS_BEFORE_QUARANTINE};
    use std::time::{Duration, Instant};

    #[test]
    fn repeated_traps_quarantine_with_doubling_back_off() {
        let mut s = Supervisor::default();
        let t0 = Instant::now();
        for _ in 1..TRAPS_BEFORE_QUARANTINE {
            assert!(!s.trapped(t0));
        }
        assert!(s.trapped(t0), "the fifth consecutive trap starts a quarantine");
        assert!(s.quarantined(t0 + Duration::from_millis(999)));
        assert!(
            !s.quarantined(t0 + Duration::from_secs(1)),
            "first back-off is one second"
        );

        let t1 = t0 + Duration::from_secs(2);
        for _ in 1..TRAPS_BEFORE_QUARANTINE {
            s.trapped(t1);
        }
        assert!(s.trapped(t1));
        assert!(
            s.quarantined(t1 + Duration::from_millis(1999)),
            "the next one is two seconds"
        );
        assert!(!s.quarantined(t1 + Duration::from_secs(2)));
    }

    #[test]
    fn success_resets_the_count_and_back_off_is_capped() {
        let mut s = Supervisor::default();
        let t = Instant::now();
        for _ in 1..TRAPS_BEFORE_QUARANTINE {
            s.trapped(t);
        }
        s.succeeded();
        assert!(!s.trapped(t), "the count started again after a success");
        s.quarantines = 40;
        s.consecutive_traps = TRAPS_BEFORE_QUARANTINE - 1;
        assert!(s.trapped(t));
        assert!(!s.quarantined(t + MAX_QUARANTINE));
    }
}
