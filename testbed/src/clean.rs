//! Finding and removing what killed runs left behind.
//!
//! Every instance process carries `TESTBED_RUN_ID` and `TESTBED_HARNESS_PID` in its
//! environment. A process whose harness no longer exists is left over.

use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::backends::{HARNESS_PID_ENV, RUN_ID_ENV};

/// An instance process whose harness is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftoverProcess {
    pub pid: i32,
    pub run_id: String,
    pub harness_pid: i32,
}

/// Lists instance processes of runs whose harness process no longer exists.
pub fn leftover_processes() -> Vec<LeftoverProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let mut run_id = None;
        let mut harness_pid = None;
        for variable in environ.split(|byte| *byte == 0) {
            let text = String::from_utf8_lossy(variable);
            if let Some(value) = text.strip_prefix(&format!("{RUN_ID_ENV}=")) {
                run_id = Some(value.to_string());
            } else if let Some(value) = text.strip_prefix(&format!("{HARNESS_PID_ENV}=")) {
                harness_pid = value.parse::<i32>().ok();
            }
        }
        if let (Some(run_id), Some(harness_pid)) = (run_id, harness_pid) {
            if !process_exists(harness_pid) {
                found.push(LeftoverProcess { pid, run_id, harness_pid });
            }
        }
    }
    found
}

/// Kills the given processes with SIGKILL; returns how many were still there to kill.
pub fn kill_processes(processes: &[LeftoverProcess]) -> usize {
    processes
        .iter()
        .filter(|process| kill(Pid::from_raw(process.pid), Signal::SIGKILL).is_ok())
        .count()
}

fn process_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}
