//! Raw messages through ingest rules (fixed sets, or a rule made from the input): see
//! `hub::fuzzing::ingest`.
#![no_main]

#[global_allocator]
static ALLOC: hub_fuzz::Capped = hub_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub::fuzzing::ingest(data));
