//! Merge patches into stored profiles, over the admin API's path and over NATS: see
//! `hub::fuzzing::ProfilePatch`.
#![no_main]

use std::sync::LazyLock;

#[global_allocator]
static ALLOC: hub_fuzz::Capped = hub_fuzz::Capped;

/// Sled in a temporary folder, made once per process.
static HARNESS: LazyLock<hub::fuzzing::ProfilePatch> = LazyLock::new(hub::fuzzing::ProfilePatch::new);

libfuzzer_sys::fuzz_target!(|data: &[u8]| HARNESS.run(data));
