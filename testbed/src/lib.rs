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
//! - [`report_html`]: the run's self-contained `report.html` with SVG plots.
//! - [`report_markdown`]: `summary.json` as Markdown for CI job summaries.
//! - [`progress`]: progress display for people.
//! - [`clean`]: leftovers of killed runs.
//! - [`bench`]: benchmarks behind `cargo xtask bench`.
//! - [`xmsg`]: xMsg, ERSAP's control plane: messages, proxy, registrar and clients.

pub mod artifacts;
pub mod autoscaler;
pub mod backends;
pub mod bench;
pub mod clean;
pub mod faults;
pub mod instance;
pub mod progress;
pub mod report_html;
pub mod report_markdown;
pub mod results;
pub mod run;
pub mod scenario;
pub mod xmsg;
