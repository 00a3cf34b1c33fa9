//! The second generation of the `counter` fixture: the same code, so a swap between the two
//! changes only what `counted` reports as its generation.

const GENERATION: u32 = 2;

include!("../../counter/src/plugin.rs");
