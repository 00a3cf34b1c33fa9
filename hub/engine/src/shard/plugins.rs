//! The plugins a shard runs: one instance per live plugin, each under a [`Supervisor`], which of
//! them take a given event kind, and calling one with what it is about.
//!
//! The set follows the registry's live set between batches: an instance whose version is
//! unchanged is kept, a new version starts afresh (its state and timers carry over: they belong
//! to the name), and so each event is handled by exactly one version.

use crate::dead_letter::{DeadLetter, Reason};
use crate::event::{Routed, now_ms};
use crate::limits::{KIND_CACHE_LIMIT, LATENCY_SAMPLE_EVERY, MAX_QUARANTINE, TRAPS_BEFORE_QUARANTINE};
use crate::metrics as m;
use crate::registry::{Live, LivePlugin, LiveSet};
use crate::runtime::{CallError, MemoryStores, Output, PluginInstance, ShardStores};
use crate::shadow::{ShadowBook, Side};
use crate::state::{Db, DueTimer, PluginSlot, StateCache};
use crate::stats::{Pending, PluginStats};
use rustc_hash::FxHashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Each shadow's cache of the profiles, per shard.
const SHADOW_PROFILE_CACHE_BYTES: usize = 4 << 20;

/// What a plugin call is about (an action for a delivery plugin comes as an event of kind
/// `action.<name>`).
pub(super) enum Cause<'a> {
    Event(&'a Routed),
    Timer(&'a DueTimer),
}

impl Cause<'_> {
    fn dead_letter(&self, reason: Reason, detail: String, plugin: &str) -> DeadLetter {
        match self {
            Cause::Event(r) => DeadLetter::event(reason, detail, &r.event),
            Cause::Timer(t) => DeadLetter::timer(reason, detail, &t.actor, &t.id, &t.payload),
        }
        .plugin(plugin)
    }
}

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

/// One running plugin and its counters.
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
    /// Where this plugin's outcomes are compared, when it is a shadow or has one.
    watch: Option<(Side, Arc<ShadowBook>)>,
    /// A shadow's state and timers: in memory, so a shadow adds nothing to the shard's commits
    /// (see `crate::shadow`).
    memory: Option<Box<MemoryStores>>,
}

impl Loaded {
    /// Count a failed call; true when it starts a quarantine.
    fn failed(&mut self, trapped: bool) -> bool {
        self.errors.increment(1);
        self.pending.errors += 1;
        trapped && self.supervisor.trapped(Instant::now())
    }
}

pub(super) struct Plugins {
    shard: usize,
    loaded: Vec<Loaded>,
    by_name: FxHashMap<Arc<str>, usize>,
    /// Plugins subscribed to each kind seen, cleared when the set changes.
    subscribers: FxHashMap<String, Rc<[usize]>>,
    /// State cache slot of every plugin name this shard has run (a name keeps its slot).
    slots: FxHashMap<Arc<str>, PluginSlot>,
    live: Arc<Live>,
    /// The live set this shard runs.
    set: Arc<LiveSet>,
    stats: Arc<PluginStats>,
    db: Db,
}

impl Plugins {
    pub fn new(shard: usize, live: Arc<Live>, stats: Arc<PluginStats>, db: Db) -> Plugins {
        Plugins {
            shard,
            loaded: Vec::new(),
            by_name: FxHashMap::default(),
            subscribers: FxHashMap::default(),
            slots: FxHashMap::default(),
            live,
            set: Arc::new(LiveSet::default()),
            stats,
            db,
        }
    }

    /// Whether the registry has published a newer live set than the one running.
    pub fn outdated(&self) -> bool {
        self.live.generation() != self.set.generation
    }

    /// Switch to the newest live set. Runs between batches.
    pub fn adopt(&mut self, state: &mut StateCache) {
        let set = self.live.load();
        let mut old: FxHashMap<Arc<str>, Loaded> = self.loaded.drain(..).map(|l| (l.name.clone(), l)).collect();
        for live in &set.plugins {
            match old.remove(&live.name) {
                Some(kept) if Arc::ptr_eq(&kept.live, live) => self.loaded.push(kept),
                previous => {
                    if let Some(mut prev) = previous {
                        self.stats.fold(self.shard, &prev.name, &mut prev.pending);
                    }
                    let started = self.start(live, state);
                    self.loaded.push(started);
                }
            }
        }
        for (name, mut gone) in old {
            self.stats.fold(self.shard, &name, &mut gone.pending);
        }
        // A shadow's book, for its own calls and its active version's.
        for plugin in &mut self.loaded {
            plugin.watch = plugin.live.shadow.clone().map(|book| (Side::Shadow, book));
        }
        let books: Vec<Arc<ShadowBook>> = self.loaded.iter().filter_map(|p| p.live.shadow.clone()).collect();
        for book in books {
            if let Some(active) = self.loaded.iter_mut().find(|p| *p.name == *book.plugin) {
                active.watch = Some((Side::Active, book));
            }
        }
        self.by_name = self
            .loaded
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        self.subscribers.clear();
        self.live.adopted(self.shard, set.generation);
        self.set = set;
    }

    fn start(&mut self, live: &Arc<LivePlugin>, state: &mut StateCache) -> Loaded {
        let name = live.name.clone();
        let memory = live.shadow.as_ref().map(|_| {
            Box::new(MemoryStores::reading_profiles(
                self.db.profiles.cache(SHADOW_PROFILE_CACHE_BYTES),
            ))
        });
        let slot = match memory {
            // The shadow's stores are its own: any slot will do.
            Some(_) => PluginSlot(0),
            None => *self
                .slots
                .entry(name.clone())
                .or_insert_with(|| match self.db.state_tree(&name) {
                    Ok(tree) => state.add_plugin(tree),
                    Err(e) => {
                        tracing::error!(plugin = %name, error = %e, "cannot open the plugin's state tree");
                        PluginSlot::PROBE
                    }
                }),
        };
        let (instance, failed) = PluginInstance::starting(live.module.clone(), name.clone(), slot);
        if let Some(e) = failed {
            tracing::error!(plugin = %name, shard = self.shard, error = %e, "plugin did not start; retried on its next event");
        }
        // Per-shard series: shards never share a metric's atomics on the hot path.
        let labels = [("plugin", name.to_string()), ("shard", self.shard.to_string())];
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
            watch: None,
            memory,
        }
    }

    /// Plugins subscribed to `kind` ([`Description::takes`](crate::runtime::Description::takes)),
    /// cached per kind.
    pub fn subscribers_of(&mut self, kind: &str) -> Rc<[usize]> {
        if let Some(list) = self.subscribers.get(kind) {
            return list.clone();
        }
        if self.subscribers.len() >= KIND_CACHE_LIMIT {
            self.subscribers.clear();
        }
        let list: Rc<[usize]> = self
            .loaded
            .iter()
            .enumerate()
            .filter(|(_, p)| p.instance.module().description.takes(kind))
            .map(|(i, _)| i)
            .collect();
        self.subscribers.insert(kind.to_owned(), list.clone());
        list
    }

    /// The running plugin named `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The dead letter of a timer whose plugin does not run for it (disabled, not loaded, or
    /// no longer serving the tenant of its actor).
    pub fn orphaned(&self, timer: &DueTimer) -> DeadLetter {
        let disabled = self.set.disabled.iter().any(|d| **d == *timer.owner);
        let (reason, state) = if disabled {
            (Reason::Disabled, "disabled".to_owned())
        } else if self.find(&timer.owner).is_some() {
            let tenant = crate::tenant::name_of(&timer.actor);
            (Reason::NoPlugin, format!("not serving tenant {tenant:?}"))
        } else {
            (Reason::NoPlugin, "not loaded".to_owned())
        };
        let detail = format!(
            "timer {:?} belongs to plugin {:?}, which is {state}",
            timer.id, timer.owner
        );
        DeadLetter::timer(reason, detail, &timer.actor, &timer.id, &timer.payload).plugin(&timer.owner)
    }

    /// A shadow's timer due at `now` or before, with the shadow that set it.
    pub fn due_shadow_timer(&mut self, now: i64) -> Option<(usize, DueTimer)> {
        self.loaded
            .iter_mut()
            .enumerate()
            .find_map(|(p, l)| Some((p, l.memory.as_mut()?.pop_due(now)?)))
    }

    /// When the earliest shadow timer is due.
    pub fn next_shadow_due(&self) -> Option<i64> {
        self.loaded.iter().filter_map(|l| l.memory.as_ref()?.next_due()).min()
    }

    /// Erase `actor` from the shadows' memory too.
    pub fn forget_in_shadows(&mut self, actor: &str) {
        for memory in self.loaded.iter_mut().filter_map(|l| l.memory.as_mut()) {
            memory.forget_actor(actor);
        }
    }

    /// Where plugin `p`'s outcomes are compared: it is a shadow, or has one.
    pub fn watch(&self, p: usize) -> Option<&(Side, Arc<ShadowBook>)> {
        self.loaded[p].watch.as_ref()
    }

    pub fn name(&self, p: usize) -> &Arc<str> {
        &self.loaded[p].name
    }

    /// Whether plugin `p` runs for the tenant of actor `key`.
    pub fn takes(&self, p: usize, key: &str) -> bool {
        self.loaded[p].live.tenants.takes(key)
    }

    /// What events plugin `p` emits carry as their `source`.
    pub fn source(&self, p: usize) -> &str {
        &self.loaded[p].source
    }

    /// The state cache slot of every plugin name this shard has run.
    pub fn slots(&self) -> &FxHashMap<Arc<str>, PluginSlot> {
        &self.slots
    }

    /// Call plugin `p` for an event or a timer and supervise the outcome: its outputs, or the
    /// dead letter of the cause when the call failed, was refused (quarantine), or the plugin
    /// could not be restarted.
    pub fn call(
        &mut self,
        p: usize,
        stores: &mut Option<Box<ShardStores>>,
        cause: &Cause<'_>,
    ) -> Result<Vec<Output>, Box<DeadLetter>> {
        let now = Instant::now();
        let plugin = &mut self.loaded[p];
        if plugin.supervisor.quarantined(now) {
            let detail = format!("plugin {} is quarantined after repeated traps", plugin.name);
            return Err(Box::new(cause.dead_letter(Reason::Quarantined, detail, &plugin.name)));
        }
        if plugin.instance.is_poisoned()
            && let Err(e) = plugin.instance.recover()
        {
            if plugin.failed(true) {
                self.quarantine_started(p);
            }
            let plugin = &self.loaded[p];
            let detail = format!("plugin {} could not be restarted: {e}", plugin.name);
            return Err(Box::new(cause.dead_letter(e.reason(), detail, &plugin.name)));
        }
        let wall = now_ms();
        let result = match (cause, plugin.memory.is_some()) {
            (Cause::Event(r), false) => plugin.instance.on_event(stores, &r.event, wall),
            (Cause::Timer(t), false) => plugin.instance.on_timer(stores, t, wall),
            (Cause::Event(r), true) => plugin.instance.on_event(&mut plugin.memory, &r.event, wall),
            (Cause::Timer(t), true) => plugin.instance.on_timer(&mut plugin.memory, t, wall),
        };
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
                Ok(outputs)
            }
            Err(e) => Err(Box::new(self.call_failed(p, cause, e))),
        }
    }

    fn call_failed(&mut self, p: usize, cause: &Cause<'_>, e: CallError) -> DeadLetter {
        let plugin = &mut self.loaded[p];
        tracing::warn!(plugin = %plugin.name, reason = %e.reason(), error = %e, "plugin call failed");
        let started = plugin.failed(e.is_trap());
        if e.is_trap() {
            // Re-create the instance now so the next event does not pay for it.
            if let Err(again) = plugin.instance.recover() {
                tracing::warn!(plugin = %plugin.name, error = %again, "plugin could not be restarted");
            }
        }
        if started {
            self.quarantine_started(p);
        }
        let name = &self.loaded[p].name;
        cause.dead_letter(e.reason(), format!("plugin {name}: {e}"), name)
    }

    fn quarantine_started(&self, p: usize) {
        let plugin = &self.loaded[p];
        if let Some(until) = plugin.supervisor.until {
            self.stats.quarantined(self.shard, &plugin.name, until);
        }
        let name = plugin.name.to_string();
        metrics::counter!(m::PLUGIN_QUARANTINES, "plugin" => name.clone()).increment(1);
        tracing::error!(
            plugin = name,
            shard = self.shard,
            "plugin quarantined after repeated traps"
        );
    }

    /// Fold the call counts into the admin API's statistics.
    pub fn fold_stats(&mut self) {
        for plugin in &mut self.loaded {
            self.stats.fold(self.shard, &plugin.name, &mut plugin.pending);
        }
    }
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
