//! Benchmarks run by `cargo xtask bench`.
//!
//! - [`backends`]: provisioning and instance start of the process, docker and slurm backends.
//! - [`compare`]: a candidate `benchmarks.json` against a baseline, with a Markdown table.
//! - [`dataplane`]: raw loopback TCP throughput against a source → processor → sink chain of
//!   `mock-ersap` processes.
//! - [`provision`]: the docker backend's provisioning of a topology against Compose.
//! - [`scenarios`]: the recovery, rescale and nightly suites of fixture scenarios.
//! - [`sim`]: wall time and simulated events per second of the `sim` backend as topologies grow.

pub mod backends;
pub mod compare;
pub mod dataplane;
pub mod provision;
pub mod scenarios;
pub mod sim;
