//! The cost of one plugin call on a shard, without NATS: the example plugins called through the
//! real runtime (sandbox, host imports, write-behind state) on one thread.
//!
//! `cargo bench -p hub --bench plugin_call`

use criterion::{Criterion, criterion_group, criterion_main};
use hub::config::PluginLimits;
use hub::event::Event;
use hub::runtime::{PluginInstance, PluginModule, Runtime, ShardStores};
use hub::state::{Db, StateCache};
use std::hint::black_box;
use std::sync::Arc;

fn event(kind: &str, actor: &str, payload: serde_json::Value) -> Event {
    Event {
        id: "bench-1".into(),
        kind: kind.into(),
        actor: actor.into(),
        time: 1_767_225_600_000,
        source: "bench".into(),
        payload: rmp_serde::to_vec_named(&payload).expect("payload"),
    }
}

struct Setup {
    instance: PluginInstance,
    stores: Option<Box<ShardStores>>,
    _dir: tempfile::TempDir,
}

fn setup(file: &str, config: serde_json::Value) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path(), 50).expect("db");
    let runtime = Runtime::new(PluginLimits::default()).expect("runtime");
    let wasm = std::fs::read(format!("{}/{file}", hub::EXAMPLE_PLUGINS)).expect("plugin built");
    let module = Arc::new(PluginModule::load(&runtime, &wasm, &config).expect("valid plugin"));
    let mut cache = StateCache::new(1 << 20);
    let slot = cache.add_plugin(db.state_tree(module.name()).expect("tree"));
    let instance = PluginInstance::new(module, "bench".into(), slot).expect("instance");
    let stores = Some(Box::new(ShardStores {
        state: cache,
        timers: db.load_timers(1, |_| 0).expect("timers").0.remove(0),
        profiles: db.profiles.cache(hub::limits::PROFILE_CACHE_BYTES),
    }));
    Setup {
        instance,
        stores,
        _dir: dir,
    }
}

fn plugin_calls(c: &mut Criterion) {
    let mut payment = setup("payment_trouble.wasm", serde_json::json!({"threshold": 3}));
    let failed = event(
        "payment.failed",
        "c1",
        serde_json::json!({"amount": 20, "reason": "card_declined"}),
    );
    c.bench_function(
        "payment-trouble on_event (state get+set, hot cache, action every 3rd)",
        |b| {
            b.iter(|| {
                let out = payment.instance.on_event(&mut payment.stores, black_box(&failed), 0);
                black_box(out).expect("call");
            })
        },
    );

    let mut click = setup("clickstream.wasm", serde_json::json!({}));
    let view = event(
        "web.page_view",
        "u1",
        serde_json::json!({"url": "/p/a1", "product": {"sku": "A1", "name": "Shoes", "price": 59.9}}),
    );
    c.bench_function("clickstream on_event (decode, emit product.viewed)", |b| {
        b.iter(|| {
            let out = click.instance.on_event(&mut click.stores, black_box(&view), 0);
            black_box(out).expect("call");
        })
    });
}

criterion_group!(benches, plugin_calls);
criterion_main!(benches);
