//! The cost of turning one NATS message into an event: a raw clickstream message through an
//! ingest rule, and an event envelope in JSON and in MessagePack.
//!
//! `cargo bench -p hub --bench ingress_decode`

use criterion::{Criterion, criterion_group, criterion_main};
use hub::config::Config;
use hub::ingress::{CompiledRule, IdGen, RuleSet, decode_envelope, decode_raw};
use hub::tenant::Tenants;
use std::hint::black_box;

fn decode(c: &mut Criterion) {
    let ids = IdGen::new();
    let tenants = Tenants::default();
    let rules = RuleSet::new(
        Config::local_default()
            .ingest
            .iter()
            .map(|r| CompiledRule::compile(r).expect("rule"))
            .collect(),
    );
    let view =
        br#"{"visitor":"c123","event_id":"w42","url":"/p/a1","product":{"sku":"A1","name":"Shoes","price":59.9}}"#;
    c.bench_function("raw web.page_view through the ingest rule", |b| {
        b.iter(|| {
            black_box(decode_raw(
                &rules,
                "web.page_view",
                None,
                black_box(view),
                &ids,
                &tenants,
            ))
            .expect("event")
        })
    });

    let json =
        br#"{"id":"p42","kind":"payment.failed","actor":"c123","payload":{"amount":20,"reason":"card_declined"}}"#;
    c.bench_function("JSON envelope", |b| {
        b.iter(|| {
            black_box(decode_envelope(
                "events.payment.failed",
                None,
                black_box(json),
                "events.",
                &ids,
                &tenants,
            ))
            .expect("event")
        })
    });

    let value: serde_json::Value = serde_json::from_slice(json).expect("json");
    let msgpack = rmp_serde::to_vec_named(&value).expect("msgpack");
    c.bench_function("MessagePack envelope", |b| {
        b.iter(|| {
            black_box(decode_envelope(
                "events.payment.failed",
                None,
                black_box(&msgpack),
                "events.",
                &ids,
                &tenants,
            ))
            .expect("event")
        })
    });
}

criterion_group!(benches, decode);
criterion_main!(benches);
