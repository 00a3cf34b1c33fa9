//! A counting plugin, for testing hot swap: it is not an example to follow.
//!
//! Every `count.tick` increments the actor's count in state and emits `counted` with the new
//! count, this build's generation (1 here, 2 in `counter-v2`, which compiles the same code) and
//! the configured `label`. A `count.relay` of actor `a` emits a `count.tick` for `relayed:a`. Counts that run on without gaps or repeats across swaps prove that no
//! event was lost or handled twice and that state carried over.

const GENERATION: u32 = 1;

include!("plugin.rs");
