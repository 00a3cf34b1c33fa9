//! Integration tests: each starts its own `nats-server` (free port, JetStream in a temp dir),
//! runs a hub in-process with the real plugins built from `plugins/` for wasm32-wasip2, publishes
//! over NATS and asserts on what arrives over NATS.

mod support;

mod actors;
mod admin;
mod arbitration;
mod authoring;
mod backtest;
mod cluster;
mod dashboard;
mod dead_letters;
mod delivery;
mod durability;
mod ingress;
mod outside_input;
mod pipeline;
mod sandbox;
mod scenarios;
mod shadow;
mod swap;
mod tenants;
