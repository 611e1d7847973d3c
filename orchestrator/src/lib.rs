//! The orchestrator under test and its domain model.
//!
//! - [`model`]: topology (sites, clusters, nodes, links), workflow (stages from an ERSAP
//!   `services.yaml`), instances and their lifecycle.
//! - [`placement`]: the global level (stage to cluster) and the cluster level (replica to
//!   node), with capacity in cores.
//! - [`orchestrator`]: deploys a placed workflow through a [`backend::Backend`], links the
//!   stages, watches the instances and drains the stream.
//! - [`backend`]: the trait every backend implements, and the faults it can inject.
//! - [`detector`]: failure detection from heartbeats; [`autoscale`]: DS2-style replica counts.
//! - [`control`] and [`client`]: the control protocol of mock instances and its HTTP client.
//! - [`yaml`] and [`error`]: line-aware YAML loading and input errors that name the line.

pub mod autoscale;
pub mod backend;
pub mod client;
pub mod control;
pub mod detector;
pub mod error;
pub mod journal;
pub mod model;
pub mod orchestrator;
pub mod placement;
pub mod yaml;

pub use error::InputError;
