//! Backends the testbed provides for the orchestrator's [`orchestrator::backend::Backend`].

pub mod docker;
pub mod ersap;
pub mod process;
pub mod sim;
pub mod slurm;

/// Labels every resource a run creates carries, so that `clean` can find what a killed run
/// left behind.
#[derive(Debug, Clone)]
pub struct RunLabels {
    pub run_id: String,
    /// Process id of the harness; a resource whose harness is gone is left over.
    pub harness_pid: u32,
}

/// Environment variable that carries the run id into every instance process.
pub const RUN_ID_ENV: &str = "TESTBED_RUN_ID";
/// Environment variable that carries the harness pid into every instance process.
pub const HARNESS_PID_ENV: &str = "TESTBED_HARNESS_PID";
/// Environment variable that carries the run's control token into every instance.
pub const TOKEN_ENV: &str = "TESTBED_TOKEN";
