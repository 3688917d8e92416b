//! x402d: a self-hosted x402 facilitator and settlement engine.
//!
//! Rooms, and the one direction data flows between them:
//! `http → facilitator → (exact, ledger, settlement) → chain`, with `protocol` (pure wire types)
//! and `config` usable from anywhere.

pub mod chain;
pub mod client;
pub mod clock;
pub mod config;
pub mod dev;
pub mod exact;
pub mod facilitator;
pub mod http;
pub mod ledger;
pub mod limits;
pub mod merchant;
pub mod protocol;
pub mod settlement;
pub mod storage;
pub mod telemetry;
