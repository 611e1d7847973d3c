//! The node agent: the main process of a node container, `mock-ersap --node-agent`.
//!
//! A `FROM scratch` image has no shell and no `sleep`, so the mock binary itself keeps the
//! container alive while the harness starts instances in it with `docker exec`. The agent
//! prints one line on stderr, which the harness waits for, and then waits for SIGTERM or
//! SIGINT.

use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};

/// The command-line flag that selects the node agent; it must be the first argument.
pub const NODE_AGENT_FLAG: &str = "--node-agent";
/// The line the agent prints on stderr once it waits for signals.
pub const READY_MESSAGE: &str = "testbed node agent ready";

/// Checks whether the process was started as a node agent.
pub fn requested() -> bool {
    std::env::args_os().nth(1).is_some_and(|first| first == NODE_AGENT_FLAG)
}

/// Runs the node agent until SIGTERM or SIGINT.
///
/// The signals are blocked and then taken with `sigwait`. A blocked signal stays pending even
/// for PID 1 of a container, which the kernel otherwise spares from every signal it has no
/// handler for, so `docker stop` ends the agent at once instead of after its grace period.
pub fn run() -> ExitCode {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(error) = signals.thread_block() {
        eprintln!("error: cannot block SIGTERM and SIGINT: {error}");
        return ExitCode::from(1);
    }
    eprintln!("{READY_MESSAGE}");
    match signals.wait() {
        Ok(signal) => {
            eprintln!("node agent stopping on {signal}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: waiting for a signal failed: {error}");
            ExitCode::from(1)
        }
    }
}
