//! Names and labels of the Docker resources a run creates.
//!
//! Every name starts with `tb-<run id>-`, so two runs on one engine never collide, and every
//! container and network carries the labels below, so that teardown, the drop guard and
//! `testbed clean` find a run's resources by label alone.

use std::collections::HashMap;

use crate::backends::RunLabels;

/// Label with the value `1` on every image, container and network of the testbed.
pub const MANAGED: &str = "testbed";
/// Label with the run id.
pub const RUN_ID: &str = "testbed.run-id";
/// Label with the site of a node container or cluster network.
pub const SITE: &str = "testbed.site";
/// Label with the cluster of a node container or cluster network.
pub const CLUSTER: &str = "testbed.cluster";
/// Label with the node name of a node container.
pub const NODE: &str = "testbed.node";
/// Label with the process id of the harness that created the resource.
pub const HARNESS_PID: &str = "testbed.harness-pid";
/// Label with the host name of the machine the harness ran on; `clean` judges the harness pid
/// only on that machine.
pub const HARNESS_HOST: &str = "testbed.harness-host";

/// Name of the network every node joins for traffic between sites.
pub fn wan_network(run_id: &str) -> String {
    format!("tb-{run_id}-wan")
}

/// Name of the network of one cluster.
pub fn cluster_network(run_id: &str, site: &str, cluster: &str) -> String {
    format!("tb-{run_id}-{site}-{cluster}")
}

/// Name of the container of one node. Node names are unique in a topology.
pub fn node_container(run_id: &str, node: &str) -> String {
    format!("tb-{run_id}-{node}")
}

/// Docker filter value that selects every resource of one run.
pub fn run_filter(run_id: &str) -> String {
    format!("{RUN_ID}={run_id}")
}

/// Labels shared by every container and network of a run.
pub fn run_labels(labels: &RunLabels, host: &str) -> HashMap<String, String> {
    HashMap::from([
        (MANAGED.to_string(), "1".to_string()),
        (RUN_ID.to_string(), labels.run_id.clone()),
        (HARNESS_PID.to_string(), labels.harness_pid.to_string()),
        (HARNESS_HOST.to_string(), host.to_string()),
    ])
}

/// Labels of a node container, or of a cluster network when `node` is `None`.
pub fn placement_labels(
    labels: &RunLabels,
    host: &str,
    site: &str,
    cluster: &str,
    node: Option<&str>,
) -> HashMap<String, String> {
    let mut all = run_labels(labels, host);
    all.insert(SITE.to_string(), site.to_string());
    all.insert(CLUSTER.to_string(), cluster.to_string());
    if let Some(node) = node {
        all.insert(NODE.to_string(), node.to_string());
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_run_id() {
        let run = "20260101-120000-abc123";
        assert_eq!(wan_network(run), "tb-20260101-120000-abc123-wan");
        assert_eq!(cluster_network(run, "jlab", "farm"), "tb-20260101-120000-abc123-jlab-farm");
        assert_eq!(node_container(run, "farm-01"), "tb-20260101-120000-abc123-farm-01");
        assert_eq!(run_filter(run), "testbed.run-id=20260101-120000-abc123");
    }

    #[test]
    fn node_labels_name_the_placement() {
        let run = RunLabels { run_id: "r1".to_string(), harness_pid: 42 };
        let labels = placement_labels(&run, "ci-host", "jlab", "farm", Some("farm-01"));
        assert_eq!(labels[MANAGED], "1");
        assert_eq!(labels[RUN_ID], "r1");
        assert_eq!(labels[HARNESS_PID], "42");
        assert_eq!(labels[HARNESS_HOST], "ci-host");
        assert_eq!(labels[SITE], "jlab");
        assert_eq!(labels[CLUSTER], "farm");
        assert_eq!(labels[NODE], "farm-01");
        let network = placement_labels(&run, "ci-host", "jlab", "farm", None);
        assert!(!network.contains_key(NODE));
    }
}
