//! Running plugins offline: one plugin or a chain of them (mapper → scenario → delivery) on the
//! production runtime and sandbox (same wasmtime settings, deadline and memory cap), against
//! state, timers and profiles in memory, on a **virtual clock** driven by the events' times. A
//! 30-minute window passes in no time, and timers fire in due order between the events, as
//! they would have fired on a running hub.
//!
//! What it does as the hub does: which plugins an event reaches (subscriptions, with actions
//! going to the delivery plugins subscribed to `action.<name>`), emitted events running before
//! the next input, the hop limit, the ids of outputs (derived from the cause), atomic calls, and
//! the dead letter of every input or call that fails. What it leaves out: the arbiter's contact
//! policies (it shows what the plugins propose, all of it delivered), quarantine (a trapping
//! plugin is restarted for every call), and NATS.
//!
//! Used by `hub plugin test`, and by backtests (a recorded range through two versions, each on
//! its own [`Offline`]).

use crate::dead_letter::Reason;
use crate::delivery::Dispatch;
use crate::event::{Action, Event, MsgpackAsJson, derived_id};
use crate::ingress::IngressError;
use crate::runtime::{CallError, MemoryStores, Output, PluginInstance, PluginModule};
use crate::state::{DueTimer, PluginSlot};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// What caused a plugin call (or what an input-level dead letter is about).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// An input, an emitted event, or an action handed to a delivery plugin (kind `action.…`).
    Event {
        id: String,
        kind: String,
        actor: String,
    },
    Timer {
        id: String,
        actor: String,
        due: i64,
    },
    /// A line of the input file that did not become an event.
    Line {
        line: usize,
    },
}

/// One record of a run: an output of a call, or the dead letter of an input or a call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// The virtual clock when it happened (ms since the epoch).
    pub at: i64,
    /// The plugin called (absent for an input refused before any plugin saw it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    pub cause: Cause,
    #[serde(flatten)]
    pub what: What,
    /// How long the call took, in µs of wall time (not part of a golden comparison).
    pub micros: u64,
}

/// What a record holds. Payloads are shown as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    Emit {
        kind: String,
        actor: String,
        id: String,
        payload: serde_json::Value,
    },
    Action {
        name: String,
        category: String,
        priority: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        dedup_key: Option<String>,
        actor: String,
        id: String,
        payload: serde_json::Value,
    },
    Deliver {
        channel: String,
        target: String,
        /// The body as text when it is UTF-8…
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        /// …else as hex.
        #[serde(skip_serializing_if = "Option::is_none")]
        body_hex: Option<String>,
    },
    DeadLetter {
        reason: String,
        detail: String,
    },
}

/// Calls and their times for one plugin, for the summary of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PluginRun {
    pub name: String,
    pub calls: u64,
    pub errors: u64,
    /// µs per call, in call order.
    #[serde(skip)]
    pub micros: Vec<u64>,
}

impl PluginRun {
    /// The `q` quantile (0–1) of the call times, in µs.
    pub fn quantile(&self, q: f64) -> u64 {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let Some(last) = sorted.len().checked_sub(1) else {
            return 0;
        };
        sorted[((last as f64) * q).round() as usize]
    }
}

struct Loaded {
    name: Arc<str>,
    source: String,
    module: Arc<PluginModule>,
    instance: Option<PluginInstance>,
    run: PluginRun,
}

/// Plugins running on a virtual clock, fed one event at a time; see the module docs.
pub struct Offline {
    plugins: Vec<Loaded>,
    stores: Option<Box<MemoryStores>>,
    clock: i64,
    hop_limit: u8,
    /// Events emitted during the current input, run before the next one, with their hop count.
    chain: VecDeque<(Event, u8)>,
    /// Actions proposed during the current input, handed to delivery plugins once the chain ran.
    proposed: Vec<Action>,
}

impl Offline {
    /// Plugins in the order they are called for an event they share (the order given). Each
    /// runs under its own name from `describe()`.
    pub fn new(modules: Vec<Arc<PluginModule>>, hop_limit: u8) -> Offline {
        Offline::with_stores(modules, hop_limit, MemoryStores::default())
    }

    /// As [`Offline::new`], on `stores` (e.g. reading a running hub's profiles).
    pub fn with_stores(modules: Vec<Arc<PluginModule>>, hop_limit: u8, stores: MemoryStores) -> Offline {
        let plugins = modules
            .into_iter()
            .map(|module| {
                let name: Arc<str> = module.name().into();
                Loaded {
                    source: format!("plugin:{name}"),
                    run: PluginRun {
                        name: name.to_string(),
                        ..PluginRun::default()
                    },
                    name,
                    module,
                    instance: None,
                }
            })
            .collect();
        Offline {
            plugins,
            stores: Some(Box::new(stores)),
            clock: i64::MIN,
            hop_limit,
            chain: VecDeque::new(),
            proposed: Vec::new(),
        }
    }

    /// Seed an actor's profile (a MessagePack map).
    pub fn put_profile(&mut self, actor: &str, profile: Vec<u8>) {
        self.stores_mut().put_profile(actor, profile);
    }

    /// The virtual clock: the latest event time or timer due so far (`None` before any).
    pub fn clock(&self) -> Option<i64> {
        (self.clock != i64::MIN).then_some(self.clock)
    }

    /// Timers still pending, earliest first.
    pub fn pending(&self) -> Vec<DueTimer> {
        self.stores.as_ref().map(|s| s.pending()).unwrap_or_default()
    }

    /// Per-plugin calls and times so far.
    pub fn runs(&self) -> impl Iterator<Item = &PluginRun> {
        self.plugins.iter().map(|p| &p.run)
    }

    /// Record an input that could not become an event, as the hub would dead-letter it.
    pub fn refused(&self, line: usize, error: &IngressError) -> Record {
        Record {
            at: self.clock().unwrap_or(0),
            plugin: None,
            cause: Cause::Line { line },
            what: What::DeadLetter {
                reason: error.reason.as_str().to_owned(),
                detail: error.detail.clone(),
            },
            micros: 0,
        }
    }

    /// Run one input: first the timers due by its time, then the event and everything it
    /// causes. The clock never goes back: an event older than the clock runs at the clock.
    pub fn input(&mut self, event: Event, out: &mut impl FnMut(Record)) {
        self.advance(event.time, out);
        self.clock = self.clock.max(event.time);
        if let Err(detail) = crate::event::check_input_kind(&event.kind) {
            out(Record {
                at: self.clock,
                plugin: None,
                cause: event_cause(&event),
                what: What::DeadLetter {
                    reason: Reason::ReservedKind.as_str().to_owned(),
                    detail,
                },
                micros: 0,
            });
            return;
        }
        self.chain.push_back((event, 0));
        self.run_chain(out);
    }

    /// Move the clock to `until`, firing every timer due by then in due order (with what they
    /// cause).
    pub fn advance(&mut self, until: i64, out: &mut impl FnMut(Record)) {
        while let Some(timer) = self.stores_mut().pop_due(until) {
            self.clock = self.clock.max(timer.due);
            match self.plugins.iter().position(|p| *p.name == *timer.owner) {
                Some(p) => self.call(p, Call::Timer(&timer), out),
                None => out(Record {
                    at: self.clock,
                    plugin: Some(timer.owner.clone()),
                    cause: timer_cause(&timer),
                    what: What::DeadLetter {
                        reason: Reason::NoPlugin.as_str().to_owned(),
                        detail: format!(
                            "timer {:?} belongs to plugin {:?}, which is not loaded",
                            timer.id, timer.owner
                        ),
                    },
                    micros: 0,
                }),
            }
            self.run_chain(out);
        }
        self.clock = self.clock.max(until);
    }

    /// Run the queued events' subscribers, then hand the proposed actions to the delivery
    /// plugins subscribed to them; what those emit runs in turn.
    fn run_chain(&mut self, out: &mut impl FnMut(Record)) {
        loop {
            while let Some((event, hops)) = self.chain.pop_front() {
                for p in self.subscribers(&event.kind) {
                    self.call(p, Call::Event(&event, hops), out);
                }
            }
            if self.proposed.is_empty() {
                return;
            }
            for action in std::mem::take(&mut self.proposed) {
                let kind = Dispatch::action_kind(&action.name);
                let routed = Dispatch::action_event(&action, kind, Instant::now());
                for p in self.subscribers(&routed.event.kind) {
                    self.call(p, Call::Event(&routed.event, 0), out);
                }
            }
        }
    }

    fn subscribers(&self, kind: &str) -> Vec<usize> {
        (0..self.plugins.len())
            .filter(|&p| self.plugins[p].module.description.takes(kind))
            .collect()
    }

    fn call(&mut self, p: usize, call: Call<'_>, out: &mut impl FnMut(Record)) {
        let now = self.clock;
        let plugin = &mut self.plugins[p];
        // Starting an instance is not part of a call's time: the hub does it ahead of events.
        let ready = match plugin.instance.as_mut() {
            Some(instance) if !instance.is_poisoned() => Ok(instance),
            Some(instance) => instance.recover().map(|()| instance),
            None => PluginInstance::new(plugin.module.clone(), plugin.name.clone(), PluginSlot(p as u16))
                .map(|i| plugin.instance.insert(i)),
        };
        let started = Instant::now();
        let result = ready.and_then(|instance| match call {
            Call::Event(event, _) => instance.on_event(&mut self.stores, event, now),
            Call::Timer(timer) => instance.on_timer(&mut self.stores, timer, now),
        });
        let micros = started.elapsed().as_micros() as u64;
        plugin.run.calls += 1;
        plugin.run.micros.push(micros);
        let cause = call.cause();
        let name = plugin.name.clone();
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(e) => {
                plugin.run.errors += 1;
                out(failed(now, &name, cause, &e, micros));
                return;
            }
        };
        let (cause_id, actor, hops) = match call {
            Call::Event(e, hops) => (e.id.clone(), e.actor.as_str(), hops),
            Call::Timer(t) => (t.cause_id(), t.actor.as_str(), 0),
        };
        for (index, output) in outputs.into_iter().enumerate() {
            let id = derived_id(&cause_id, &name, index);
            let record = |what| Record {
                at: now,
                plugin: Some(name.to_string()),
                cause: cause.clone(),
                what,
                micros,
            };
            match output {
                Output::Emit {
                    kind,
                    actor: target,
                    payload,
                } => {
                    let event = Event {
                        id: id.clone(),
                        kind: kind.clone(),
                        actor: target.map_or_else(|| actor.to_owned(), |t| crate::tenant::sibling(actor, &t)),
                        time: now,
                        source: self.plugins[p].source.clone(),
                        payload,
                    };
                    if hops >= self.hop_limit {
                        let detail = format!(
                            "event chain longer than the hop limit of {} (last plugin {name})",
                            self.hop_limit
                        );
                        out(record(What::DeadLetter {
                            reason: Reason::HopLimit.as_str().to_owned(),
                            detail,
                        }));
                        continue;
                    }
                    out(record(What::Emit {
                        kind,
                        actor: event.actor.clone(),
                        id,
                        payload: as_json(&event.payload),
                    }));
                    self.chain.push_back((event, hops + 1));
                }
                Output::Action {
                    name: action,
                    category,
                    priority,
                    dedup_key,
                    payload,
                } => {
                    out(record(What::Action {
                        name: action.clone(),
                        category: category.clone(),
                        priority,
                        dedup_key: dedup_key.clone(),
                        actor: actor.to_owned(),
                        id: id.clone(),
                        payload: as_json(&payload),
                    }));
                    self.proposed.push(Action {
                        id,
                        name: action,
                        category,
                        priority,
                        dedup_key,
                        actor: actor.to_owned(),
                        plugin: name.to_string(),
                        cause: cause_id.clone(),
                        time: now,
                        payload,
                    });
                }
                Output::Deliver { channel, target, body } => {
                    let (body, body_hex) = match String::from_utf8(body) {
                        Ok(text) => (Some(text), None),
                        Err(e) => (None, Some(hex::encode(e.as_bytes()))),
                    };
                    out(record(What::Deliver {
                        channel,
                        target: if target.is_empty() { actor.to_owned() } else { target },
                        body,
                        body_hex,
                    }));
                }
            }
        }
    }

    fn stores_mut(&mut self) -> &mut MemoryStores {
        self.stores
            .as_deref_mut()
            .expect("the stores are handed back after every plugin call")
    }
}

/// One plugin call's argument.
#[derive(Clone, Copy)]
enum Call<'a> {
    /// With the number of plugin hops that produced it.
    Event(&'a Event, u8),
    Timer(&'a DueTimer),
}

impl Call<'_> {
    fn cause(&self) -> Cause {
        match self {
            Call::Event(e, _) => event_cause(e),
            Call::Timer(t) => timer_cause(t),
        }
    }
}

fn event_cause(e: &Event) -> Cause {
    Cause::Event {
        id: e.id.clone(),
        kind: e.kind.clone(),
        actor: e.actor.clone(),
    }
}

fn timer_cause(t: &DueTimer) -> Cause {
    Cause::Timer {
        id: t.id.clone(),
        actor: t.actor.clone(),
        due: t.due,
    }
}

/// The dead letter of a failed call, worded as the hub's.
fn failed(at: i64, plugin: &str, cause: Cause, e: &CallError, micros: u64) -> Record {
    Record {
        at,
        plugin: Some(plugin.to_owned()),
        cause,
        what: What::DeadLetter {
            reason: e.reason().as_str().to_owned(),
            detail: format!("plugin {plugin}: {e}"),
        },
        micros,
    }
}

/// A MessagePack payload as JSON; one that is not MessagePack shows as the reason why.
pub(crate) fn as_json(payload: &[u8]) -> serde_json::Value {
    serde_json::to_value(MsgpackAsJson(payload))
        .unwrap_or_else(|e| serde_json::Value::String(format!("<payload is not MessagePack: {e}>")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginLimits;
    use crate::runtime::Runtime;
    use serde_json::json;

    const MINUTE: i64 = 60_000;
    const T0: i64 = 1_796_000_000_000;

    fn module(runtime: &Arc<Runtime>, file: &str, config: serde_json::Value) -> Arc<PluginModule> {
        let path = [crate::EXAMPLE_PLUGINS, crate::REFERENCE_PLUGINS, crate::FIXTURE_PLUGINS]
            .iter()
            .map(|dir| std::path::Path::new(dir).join(file))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{file} is built"));
        let wasm = std::fs::read(path).expect("readable");
        Arc::new(PluginModule::load(runtime, &wasm, &config).expect("loads"))
    }

    fn event(id: &str, kind: &str, actor: &str, time: i64, payload: serde_json::Value) -> Event {
        Event {
            id: id.into(),
            kind: kind.into(),
            actor: actor.into(),
            time,
            source: "test".into(),
            payload: rmp_serde::to_vec_named(&payload).expect("payload"),
        }
    }

    fn run(offline: &mut Offline, events: Vec<Event>) -> Vec<Record> {
        let mut records = Vec::new();
        for e in events {
            offline.input(e, &mut |r| records.push(r));
        }
        records
    }

    fn add_to_cart(id: &str, visitor: &str, time: i64) -> Event {
        let click = json!({"type": "add_to_cart", "visitor": visitor, "product": {"sku": "A1", "name": "Shoes", "price": 59.9}, "qty": 1});
        event(id, "web.add_to_cart", visitor, time, click)
    }

    #[test]
    fn a_mapper_scenario_and_delivery_chain_runs_on_the_clock_of_the_events() {
        let runtime = Runtime::new(PluginLimits::default()).expect("runtime");
        let routes =
            json!({"routes": [{"actions": "offer.*", "channel": "push", "title": "Hi {name}", "text": "Your cart"}]});
        let mut offline = Offline::new(
            vec![
                module(&runtime, "clickstream.wasm", json!({})),
                module(&runtime, "cart_abandonment.wasm", json!({"window": "30m"})),
                module(&runtime, "notify.wasm", routes),
            ],
            8,
        );
        offline.put_profile("u1", rmp_serde::to_vec_named(&json!({"name": "Ada"})).expect("profile"));

        // u1 leaves a cart; u2's later click moves the clock past u1's 30-minute window.
        let records = run(
            &mut offline,
            vec![add_to_cart("e1", "u1", T0), add_to_cart("e2", "u2", T0 + 31 * MINUTE)],
        );
        let kinds: Vec<(&str, i64)> = records
            .iter()
            .map(|r| match &r.what {
                What::Emit { kind, .. } => (kind.as_str(), r.at),
                What::Action { name, .. } => (name.as_str(), r.at),
                What::Deliver { channel, .. } => (channel.as_str(), r.at),
                What::DeadLetter { reason, .. } => (reason.as_str(), r.at),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("cart.updated", T0),
                ("offer.cart_reminder", T0 + 30 * MINUTE),
                ("push", T0 + 30 * MINUTE),
                ("cart.updated", T0 + 31 * MINUTE),
            ],
            "{records:#?}"
        );
        let What::Deliver { target, body, .. } = &records[2].what else {
            unreachable!("checked above")
        };
        assert_eq!(target, "u1");
        assert!(body.as_deref().is_some_and(|b| b.contains("Hi Ada")), "{body:?}");
        // u2's window is still open: its timer waits until the clock is moved on.
        assert_eq!(offline.pending().len(), 1);
        let mut later = Vec::new();
        offline.advance(T0 + 61 * MINUTE, &mut |r| later.push(r));
        assert_eq!(later.len(), 2, "{later:#?}");
        assert!(offline.pending().is_empty());
    }

    #[test]
    fn the_same_inputs_give_the_same_records() {
        let runtime = Runtime::new(PluginLimits::default()).expect("runtime");
        let records = || {
            let mut offline = Offline::new(
                vec![
                    module(&runtime, "clickstream.wasm", json!({})),
                    module(&runtime, "cart_abandonment.wasm", json!({})),
                ],
                8,
            );
            let mut all = run(&mut offline, vec![add_to_cart("e1", "u1", T0)]);
            offline.advance(T0 + 120 * MINUTE, &mut |r| all.push(r));
            all.into_iter().map(|r| Record { micros: 0, ..r }).collect::<Vec<_>>()
        };
        let first = records();
        assert_eq!(first.len(), 2);
        assert_eq!(first, records());
    }

    #[test]
    fn a_trap_is_dead_lettered_as_the_hub_would_and_the_plugin_runs_on() {
        let runtime = Runtime::new(PluginLimits::default()).expect("runtime");
        let mut offline = Offline::new(vec![module(&runtime, "chaos.wasm", json!({}))], 8);
        let records = run(
            &mut offline,
            vec![
                event("p", "chaos.panic", "a", T0, json!({})),
                event("l", "chaos.loop", "a", T0 + 1, json!({})),
                event("ok", "chaos.ping", "a", T0 + 2, json!({})),
                event("echo", "chaos.echo", "a", T0 + 3, json!({})),
            ],
        );
        let reasons: Vec<&str> = records
            .iter()
            .map(|r| match &r.what {
                What::DeadLetter { reason, .. } => reason.as_str(),
                What::Emit { kind, .. } => kind.as_str(),
                _ => "other",
            })
            .collect();
        // An endless chain of echoes stops at the hop limit, as on the hub.
        let mut expected = vec!["panic", "deadline", "chaos.pong"];
        expected.extend(std::iter::repeat_n("chaos.echo", 8));
        expected.push("hop_limit");
        assert_eq!(reasons, expected, "{records:#?}");
        let run = offline.runs().next().expect("one plugin");
        assert_eq!(run.errors, 2);
    }

    #[test]
    fn a_runaway_plugin_is_stopped_after_the_epoch_ticker_rested() {
        let limits = PluginLimits {
            call_timeout_ms: 20,
            call_wall_timeout_ms: 50,
            ..PluginLimits::default()
        };
        let runtime = Runtime::new(limits).expect("runtime");
        let mut offline = Offline::new(vec![module(&runtime, "chaos.wasm", json!({}))], 8);
        let rested = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            runtime.ticker_resting()
        });
        assert!(rested, "no call for longer than the wall-clock cap: the ticker rests");
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(run(&mut offline, vec![event("l", "chaos.loop", "a", T0, json!({}))]));
        });
        let records = stopped
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the call that woke the ticker is stopped");
        assert!(
            matches!(&records[..], [Record { what: What::DeadLetter { reason, .. }, .. }] if reason == "deadline"),
            "{records:#?}"
        );
    }

    #[test]
    fn an_input_of_a_reserved_kind_is_refused_before_any_plugin() {
        let runtime = Runtime::new(PluginLimits::default()).expect("runtime");
        let mut offline = Offline::new(vec![module(&runtime, "notify.wasm", json!({"routes": []}))], 8);
        let records = run(&mut offline, vec![event("x", "action.offer.x", "a", T0, json!({}))]);
        assert!(
            matches!(&records[..], [Record { plugin: None, what: What::DeadLetter { reason, .. }, .. }] if reason == "reserved_kind"),
            "{records:#?}"
        );
    }
}
