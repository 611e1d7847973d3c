//! `mock-ersap`: one mock ERSAP service replica, steered over HTTP by the testbed.
//!
//! Exit codes: 0 after `POST /stop`, SIGTERM, SIGINT or the harness's exit; 2 for invalid
//! arguments or environment (a missing `TESTBED_TOKEN`, a port already in use); 1 for a
//! failure while running.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use testbed::instance::{self, Args, InstanceError, TOKEN_ENV};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // The docker backend's node containers run this binary as their idle main process.
    if testbed::backends::docker::agent::requested() {
        return testbed::backends::docker::agent::run();
    }
    if testbed::instance::xmsg_dpe::front_end_requested() {
        return testbed::instance::xmsg_dpe::run_front_end();
    }
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let role = args.role;
    let stage = args.stage.clone();
    let replica = args.replica;
    let result = read_token().and_then(|token| {
        instance::run(args, token)
            .with_context(|| format!("mock {role} of stage {stage} (replica {replica}) failed"))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            let code = err.downcast_ref::<InstanceError>().map_or(1, InstanceError::exit_code);
            ExitCode::from(code as u8)
        }
    }
}

/// Reads the control token from the environment, so that it does not show in `ps`.
fn read_token() -> anyhow::Result<String> {
    match std::env::var(TOKEN_ENV) {
        Ok(token) if !token.is_empty() => Ok(token),
        _ => Err(InstanceError::MissingToken.into()),
    }
}
