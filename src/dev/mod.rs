//! The developer's side: a local chain that looks like Base (`chain`), `x402d dev` on top of it
//! (`mode`), optionally forking a live chain (`fork`), and the load benchmarks (`bench`). Nothing
//! in the service imports this room; it imports the service.

pub mod bench;
pub mod chain;
pub mod fork;
pub mod merchant_bench;
pub mod mode;
pub mod openloop;
