//! The shard's logic without NATS: a shard over a real sled and real plugin components built
//! from `plugins/`, whose egress is captured, driven turn by turn on the test's thread.

use super::*;
use crate::actor::ActorState;
use crate::arbiter::Policies;
use crate::config::{EngineConfig, PluginLimits, PushConfig};
use crate::delivery::push::PushHub;
use crate::egress::Captured;
use crate::registry::LivePlugin;
use crate::runtime::{PluginModule, Runtime};
use crate::state::Committer;
use serde_json::json;
use std::collections::BTreeMap;

/// A shard of one, the plugins it runs, and what it publishes.
struct Harness {
    shard: Shard,
    out: Captured,
    _dir: tempfile::TempDir,
    _committer: Committer,
    _tokio: tokio::runtime::Runtime,
}

/// `plugins`: (file in the build's plugin folders, config), each for every tenant.
fn harness(plugins: &[(&str, serde_json::Value)], policies: Policies) -> Harness {
    harness_for(plugins, policies, crate::tenant::Scope::default())
}

/// [`harness`] with each plugin loaded for the tenants of `tenants`.
fn harness_for(plugins: &[(&str, serde_json::Value)], policies: Policies, tenants: crate::tenant::Scope) -> Harness {
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    let _entered = tokio.enter();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path(), 1000).expect("sled");
    let runtime = Runtime::new(PluginLimits::default()).expect("runtime");
    let live = Arc::new(Live::new(1));
    let loaded = plugins
        .iter()
        .map(|(file, config)| {
            let path = [crate::FIXTURE_PLUGINS, crate::REFERENCE_PLUGINS]
                .iter()
                .map(|folder| std::path::Path::new(folder).join(file))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{file} is built with the workspace"));
            let wasm = std::fs::read(path).expect("plugin");
            let module = PluginModule::load(&runtime, &wasm, config).expect("plugin loads");
            Arc::new(LivePlugin {
                name: module.name().into(),
                version: 1,
                module: Arc::new(module),
                shadow: None,
                tenants: tenants.clone(),
            })
        })
        .collect();
    live.publish(loaded, Vec::new());
    let (router, mut receivers) = Router::new(1, 64);
    let (egress, out) = Egress::captured();
    let push = PushHub::start(
        &PushConfig::default(),
        "127.0.0.1:0".parse().expect("addr"),
        egress.clone(),
    );
    let (mut wheels, _) = db.load_timers(1, |_| 0).expect("timers");
    let (committer, commits) = Committer::start(4, None).expect("committer");
    let shard = Shard::new(ShardSetup {
        id: 0,
        rx: receivers.remove(0),
        router,
        egress: egress.clone(),
        live,
        stats: Arc::new(PluginStats::new(1)),
        policies: crate::arbiter::PolicyStore::open(db.sled(), &policies).expect("policies"),
        admission: Default::default(),
        checkpoints: crate::durable::Checkpoints::load(db.sled(), 1, |_| 0, &[])
            .expect("checkpoints")
            .remove(0),
        handoffs: crate::durable::Handoffs::load(db.sled(), false, 1, |_| 0)
            .expect("handoffs")
            .remove(0),
        keep_events: false,
        cluster: None,
        db,
        timers: wheels.remove(0),
        quotas: Default::default(),
        commits,
        engine: EngineConfig::default(),
        sinks: Sinks::start(&BTreeMap::new(), push, egress),
    });
    Harness {
        shard,
        out,
        _dir: dir,
        _committer: committer,
        _tokio: tokio,
    }
}

fn input(kind: &str, actor: &str, id: &str) -> Routed {
    Routed {
        event: Event {
            id: id.into(),
            kind: kind.into(),
            actor: actor.into(),
            time: now_ms(),
            source: "test".into(),
            payload: vec![0x80],
        },
        hops: 0,
        received: Instant::now(),
        input: None,
        only: None,
    }
}

impl Harness {
    /// One turn's work for one input: run it, fire what came due, publish.
    fn turn(&mut self, routed: Routed) -> Vec<String> {
        self.shard.process(routed);
        self.tick()
    }

    /// Fire the timers that came due and publish; the subjects published, in order.
    fn tick(&mut self) -> Vec<String> {
        self.shard.fire_due_timers();
        self.shard.egress.flush();
        self.out.take().into_iter().map(|m| m.subject).collect()
    }

    fn inspect(&mut self, actor: &str) -> ActorState {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.shard.answer(actor, ActorRequest::Inspect(reply));
        answer.blocking_recv().expect("the shard answers")
    }
}

fn notify_on(channel: &str) -> serde_json::Value {
    json!({"routes": [{"actions": ">", "channel": channel}]})
}

#[test]
fn a_delivery_does_not_overtake_an_event_emitted_earlier_in_its_turn() {
    // bare emits `bare.counted` and proposes `offer.bare`; notify renders the offer for a
    // channel with no sink configured, so it is published on `hub.deliveries.crm`.
    let mut h = harness(
        &[("bare.wasm", json!({})), ("notify.wasm", notify_on("crm"))],
        Policies::default(),
    );
    let published = h.turn(input("bare.offer", "ann", "e1"));
    assert_eq!(published, ["hub.events.bare.counted", "hub.deliveries.crm"]);
}

#[test]
fn an_action_no_delivery_plugin_renders_goes_to_hub_actions() {
    let mut h = harness(&[("bare.wasm", json!({}))], Policies::default());
    let published = h.turn(input("bare.offer", "ann", "e1"));
    assert_eq!(published, ["hub.events.bare.counted", "hub.actions.offer.bare"]);
    let ledger = h.inspect("ann").actions;
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].decision, "delivered");
}

#[test]
fn a_held_action_waits_on_the_arbiters_own_timer_then_goes_out() {
    let policies: Policies =
        serde_json::from_value(json!({"categories": {"offer": {"priority": 1, "hold": "20ms"}}})).expect("policies");
    let mut h = harness(&[("bare.wasm", json!({}))], policies);
    assert_eq!(h.turn(input("bare.offer", "ann", "e1")), ["hub.events.bare.counted"]);

    let view = h.inspect("ann");
    assert_eq!(view.actions[0].decision, "held");
    assert_eq!(view.timers.len(), 1);
    assert_eq!(
        view.timers[0].plugin, HELD_ACTIONS,
        "the arbiter owns the timer, no plugin"
    );

    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(h.tick(), ["hub.actions.offer.bare"]);
    let view = h.inspect("ann");
    assert!(view.timers.is_empty());
    let decisions: Vec<_> = view.actions.iter().map(|a| a.decision.as_str()).collect();
    assert_eq!(decisions, ["delivered"], "the release replaced the held entry");
}

#[test]
fn a_timer_whose_plugin_does_not_run_is_dead_lettered() {
    let mut h = harness(&[("bare.wasm", json!({}))], Policies::default());
    home(&mut h.shard.stores)
        .timers
        .set("gone", "ann", "t1", now_ms(), vec![0x80]);
    assert_eq!(h.tick(), ["hub.dlq.no_plugin"]);
}

#[test]
fn regression_a_timer_of_a_tenant_its_plugin_no_longer_serves_is_dead_lettered_not_run() {
    use crate::tenant::{Scope, qualify};
    let mut h = harness_for(
        &[("bare.wasm", json!({}))],
        Policies::default(),
        Scope::of(Some(&["acme".to_owned()])),
    );
    let timers = &mut home(&mut h.shard.stores).timers;
    timers.set("bare", &qualify(Some("globex"), "ann"), "t1", now_ms(), vec![0x80]);
    assert_eq!(h.tick(), ["hub.dlq.no_plugin"]);

    let timers = &mut home(&mut h.shard.stores).timers;
    timers.set("bare", &qualify(Some("acme"), "ann"), "t2", now_ms(), vec![0x80]);
    assert_eq!(h.tick(), ["hub.events.bare.timer"], "its own tenant's timers still run");
}

#[test]
fn a_plugin_timer_runs_the_plugin_and_what_it_emits() {
    let mut h = harness(&[("bare.wasm", json!({}))], Policies::default());
    home(&mut h.shard.stores)
        .timers
        .set("bare", "ann", "t1", now_ms(), vec![0x80]);
    assert_eq!(h.tick(), ["hub.events.bare.timer"]);
}

#[test]
fn an_input_of_a_reserved_action_kind_is_dead_lettered() {
    let mut h = harness(&[("notify.wasm", notify_on("crm"))], Policies::default());
    assert_eq!(
        h.turn(input("action.offer.bare", "ann", "e1")),
        ["hub.dlq.reserved_kind"]
    );
}

#[test]
fn a_failed_call_is_dead_lettered_and_leaves_no_state() {
    let mut h = harness(&[("bare.wasm", json!({}))], Policies::default());
    assert_eq!(h.turn(input("bare.fail", "ann", "e1")), ["hub.dlq.plugin_error"]);
    assert!(h.inspect("ann").state.is_empty());
    h.turn(input("bare.offer", "ann", "e2"));
    assert_eq!(h.inspect("ann").state["bare"].len(), 1);
}

#[test]
fn erasing_an_actor_removes_its_state_timers_and_ledger() {
    let mut h = harness(&[("bare.wasm", json!({}))], Policies::default());
    h.turn(input("bare.offer", "ann", "e1"));
    h.turn(input("bare.offer", "bob", "e2"));
    home(&mut h.shard.stores)
        .timers
        .set("bare", "ann", "t1", now_ms() + 60_000, vec![0x80]);

    let (reply, answer) = tokio::sync::oneshot::channel();
    h.shard.answer("ann", ActorRequest::Erase(reply));
    let erased = answer.blocking_recv().expect("answer").expect("erased");
    assert_eq!((erased.state_keys, erased.timers, erased.actions), (1, 1, 1));

    let ann = h.inspect("ann");
    assert!(ann.state.is_empty() && ann.timers.is_empty() && ann.actions.is_empty());
    let bob = h.inspect("bob");
    assert_eq!((bob.state.len(), bob.actions.len()), (1, 1), "other actors keep theirs");
}
