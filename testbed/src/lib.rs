//! What the orchestrator is tested against, and the harness that runs it.
//!
//! - [`instance`]: the mock ERSAP instance (the `mock-ersap` binary): source, processor and
//!   sink roles, the framed TCP data plane with link emulation, and the HTTP control API with
//!   ERSAP reports and metrics.
//! - [`backends`]: implementations of the orchestrator's `Backend` trait (`process`).
//! - [`scenario`]: scenario files and their expectations.
//! - [`run`]: one run of a scenario from inputs to artifacts.
//! - [`results`]: exactly-once accounting, latency percentiles, the timeline.
//! - [`artifacts`]: writers for the run folder.
//! - [`progress`]: progress display for people.
//! - [`clean`]: leftovers of killed runs.
//! - [`bench`]: benchmarks behind `cargo xtask bench`.

pub mod artifacts;
pub mod backends;
pub mod bench;
pub mod clean;
pub mod instance;
pub mod progress;
pub mod results;
pub mod run;
pub mod scenario;
