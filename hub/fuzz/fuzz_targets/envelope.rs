//! Event envelopes on `events.>`, JSON and MessagePack: see `hub::fuzzing::envelope`.
#![no_main]

#[global_allocator]
static ALLOC: hub_fuzz::Capped = hub_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub::fuzzing::envelope(data));
