//! Writing plugins: `hub plugin new | build | test`, for Rust and Python, with no hub or NATS
//! running.

pub mod build;
pub mod new;
mod python;
pub mod test;
