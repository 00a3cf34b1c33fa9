//! Requests to the whole HTTP router (admin API, health, metrics, push) of a hub without NATS:
//! see `hub::fuzzing::RestApi`.
#![no_main]

use std::sync::LazyLock;

#[global_allocator]
static ALLOC: hub_fuzz::Capped = hub_fuzz::Capped;

/// State on sled in a temporary folder, a registry and a shard thread, made once per process.
static HARNESS: LazyLock<hub::fuzzing::RestApi> = LazyLock::new(hub::fuzzing::RestApi::new);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    HARNESS.run(data);
});
