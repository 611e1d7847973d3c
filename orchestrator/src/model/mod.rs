//! The domain model: topology, workflow, placements and instances.

pub mod instance;
pub mod topology;
pub mod workflow;

pub use instance::{InstanceId, InstanceState, InvalidTransition};
pub use topology::{Cluster, ClusterId, Link, Node, NodeId, Site, SiteId, Topology};
pub use workflow::{Cost, CostMode, Lang, Stage, StageId, Workflow};
