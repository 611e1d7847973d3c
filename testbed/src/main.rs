//! `testbed`: the harness behind `cargo xtask testbed`, `bench` and `clean`.
//!
//! Exit codes: 0 every expectation held; 1 an expectation failed or the run broke down;
//! 2 invalid input or an unusable environment; 130 interrupted.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use testbed::run::{self, BackendKind, Inputs, RunConfig, RunError};

#[derive(Parser)]
#[command(
    name = "testbed",
    version,
    about = "Run mock ERSAP workflows across mock sites and check them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario end to end: provision, deploy, stream, check, tear down, write artifacts.
    Run(RunArgs),
    /// Run a benchmark suite and print its figures.
    Bench(BenchArgs),
    /// Remove processes that killed runs left behind.
    Clean,
}

#[derive(Args)]
struct RunArgs {
    /// Where the mock clusters run.
    #[arg(long, value_enum, default_value = "process")]
    backend: BackendKind,
    /// Topology file: sites, clusters, nodes and the links between sites.
    #[arg(long, default_value = "fixtures/topologies/three-sites.yaml")]
    topology: PathBuf,
    /// Workflow file: an ERSAP services.yaml, optionally with a `testbed:` section.
    #[arg(long, default_value = "fixtures/workflows/clas12-pipeline.yaml")]
    workflow: PathBuf,
    /// Scenario file: what to stream and the expectations to check.
    #[arg(long, default_value = "fixtures/scenarios/smoke.yaml")]
    scenario: PathBuf,
    /// Number of events to stream, replacing the scenario's `stream.events`.
    #[arg(long)]
    events: Option<u64>,
    /// Folder for run folders; each run writes `<output>/<run-id>/` and links `<output>/latest`.
    #[arg(long, default_value = "target/testbed")]
    output: PathBuf,
    /// Path of the `mock-ersap` binary; by default the one next to this program.
    #[arg(long, env = "TESTBED_MOCK_BIN")]
    mock_bin: Option<PathBuf>,
    /// Also print logs on stderr (`-v` info, `-vv` debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print only the result line.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Suite to run.
    #[arg(long, value_enum, default_value = "dataplane")]
    suite: Suite,
    /// Events per measurement.
    #[arg(long, default_value_t = 500_000)]
    events: u64,
    /// Event payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    event_size: u32,
    /// Path of the `mock-ersap` binary; by default the one next to this program.
    #[arg(long, env = "TESTBED_MOCK_BIN")]
    mock_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Suite {
    /// Events/s and MB/s of a zero-cost source, processor and sink chain against raw loopback TCP.
    Dataplane,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Run(args) => runtime.block_on(run_command(args)),
        Command::Bench(args) => runtime.block_on(bench_command(args)),
        Command::Clean => clean_command(),
    }
}

async fn run_command(args: RunArgs) -> ExitCode {
    let config = RunConfig {
        backend: args.backend,
        topology: args.topology,
        workflow: args.workflow,
        scenario: args.scenario,
        events: args.events,
        output: args.output,
        mock_bin: args.mock_bin.unwrap_or_else(|| sibling_binary("mock-ersap")),
        quiet: args.quiet,
    };
    let inputs = match Inputs::load(&config) {
        Ok(inputs) => inputs,
        Err(error) => return report_error(&error),
    };
    let leftovers = testbed::clean::leftover_processes();
    if !leftovers.is_empty() {
        eprintln!(
            "warning: {} instance processes of killed runs are still running; remove them with \
             `cargo xtask clean`",
            leftovers.len()
        );
    }
    let run_id = run::new_run_id();
    let run_dir = config.output.join(&run_id);
    if let Err(error) = std::fs::create_dir_all(&run_dir) {
        eprintln!("error: cannot create the run folder {}: {error}", run_dir.display());
        return ExitCode::from(2);
    }
    if let Err(error) = init_logging(&run_dir.join("testbed.log"), args.verbose) {
        eprintln!("error: cannot open the log file: {error}");
        return ExitCode::from(2);
    }
    let result = run::execute(&config, inputs, &run_id, &run_dir).await;
    let latest = testbed::artifacts::link_latest(&config.output, &run_id);
    match result {
        Ok(summary) => {
            let status = if summary.passed { "PASSED" } else { "FAILED" };
            let sink = summary.stages.last();
            println!(
                "{status} {}: {} events sent, {} received, {} lost, {} duplicated; {:.0} events/s, \
                 p99 latency {:.1} ms; {:.1} s in total",
                summary.scenario,
                summary.events.sent,
                summary.events.received,
                summary.events.lost,
                summary.events.duplicated,
                sink.map(|s| s.throughput_eps).unwrap_or(0.0),
                sink.map(|s| s.latency_ms.p99).unwrap_or(0.0),
                summary.phases_s.total,
            );
            for expectation in summary.expectations.iter().filter(|e| !e.passed) {
                println!(
                    "  failed: {}: expected {}, got {}",
                    expectation.name, expectation.expected, expectation.actual
                );
            }
            for error in &summary.errors {
                println!("  error: {error}");
            }
            match latest {
                Ok(_) => println!("artifacts: {}", run_dir.display()),
                Err(error) => println!("artifacts: {} ({error:#})", run_dir.display()),
            }
            if summary.passed { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(error) => report_error(&error),
    }
}

fn report_error(error: &RunError) -> ExitCode {
    eprintln!("error: {error}");
    match error {
        RunError::Input(_) | RunError::Environment(_) => ExitCode::from(2),
        RunError::Interrupted => ExitCode::from(130),
    }
}

async fn bench_command(args: BenchArgs) -> ExitCode {
    let mock_bin = args.mock_bin.unwrap_or_else(|| sibling_binary("mock-ersap"));
    match args.suite {
        Suite::Dataplane => {
            eprintln!(
                "dataplane: {} events of {} bytes through source -> processor -> sink, and raw loopback TCP",
                args.events, args.event_size
            );
            match testbed::bench::dataplane::run(&mock_bin, args.events, args.event_size).await {
                Ok(figures) => {
                    println!("loopback TCP      {:>10.1} MB/s", figures.loopback_mb_s);
                    println!(
                        "chain             {:>10.1} MB/s  {:>12.0} events/s",
                        figures.chain_mb_s, figures.chain_events_s
                    );
                    println!("chain / loopback  {:>10.2}", figures.ratio());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn clean_command() -> ExitCode {
    let leftovers = testbed::clean::leftover_processes();
    let killed = testbed::clean::kill_processes(&leftovers);
    let mut runs: Vec<&str> = leftovers.iter().map(|process| process.run_id.as_str()).collect();
    runs.sort_unstable();
    runs.dedup();
    println!("removed {killed} leftover instance processes of {} runs", runs.len());
    ExitCode::SUCCESS
}

fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn init_logging(file: &Path, verbose: u8) -> std::io::Result<()> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt};
    let log = std::fs::File::create(file)?;
    let file_layer = fmt::layer()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .with_filter(EnvFilter::new("info,testbed=debug,orchestrator=debug"));
    let stderr_level = match verbose {
        0 => None,
        1 => Some("info"),
        _ => Some("debug"),
    };
    let stderr_layer = stderr_level
        .map(|level| fmt::layer().with_writer(std::io::stderr).with_filter(EnvFilter::new(level)));
    tracing_subscriber::registry().with(file_layer).with(stderr_layer).init();
    Ok(())
}
