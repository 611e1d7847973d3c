//! `cargo xtask`: the commands people type.
//!
//! - `cargo xtask testbed [OPTIONS]`: build the harness and the mock instance in release
//!   mode, then run a scenario end to end (`testbed run`; `--help` lists the options).
//! - `cargo xtask bench [OPTIONS]`: the same build, then a benchmark suite (`testbed bench`).
//! - `cargo xtask clean`: remove what killed runs left behind (`testbed clean`).
//!
//! Options after the subcommand go to the harness unchanged. The exit code is the
//! harness's: 0 passed, 1 an expectation failed, 2 invalid input or environment.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build and run the testbed")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run a scenario end to end on mock clusters (see `cargo xtask testbed --help`).
    #[command(disable_help_flag = true)]
    Testbed {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a benchmark suite and print its figures (see `cargo xtask bench --help`).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Remove processes that killed runs left behind.
    Clean,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Testbed { args } => harness("run", &args),
        Task::Bench { args } => harness("bench", &args),
        Task::Clean => harness("clean", &[]),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Builds the release binaries, then runs `testbed <subcommand> <args>` from the project root.
fn harness(subcommand: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    let root = project_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "--release", "--package", "testbed", "--bins"])
        .status()
        .context("failed to run cargo build")?;
    if !status.success() {
        bail!("cargo build --release --package testbed failed ({status})");
    }
    let binary = target_dir(&root).join("release").join("testbed");
    // Replace this process, so that Ctrl-C reaches the harness alone and it can stop its
    // instances in order before it exits.
    let error = Command::new(&binary).current_dir(&root).arg(subcommand).args(args).exec();
    Err(error).with_context(|| format!("failed to run {}", binary.display()))
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the project root")
        .to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}
