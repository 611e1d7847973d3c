//! Benchmarks run by `cargo xtask bench`.
//!
//! - [`dataplane`]: raw loopback TCP throughput against a source → processor → sink chain of
//!   `mock-ersap` processes.

pub mod dataplane;
