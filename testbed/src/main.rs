//! `testbed`: the harness behind `cargo xtask testbed`, `bench` and `clean`.
//!
//! Exit codes: 0 every expectation held; 1 an expectation failed or the run broke down (for
//! `bench compare`, a metric regressed); 2 invalid input or an unusable environment;
//! 130 interrupted.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Prints a line on stdout and ignores a closed pipe, so that `testbed run | head -1` ends
/// the reader, not the harness in the middle of its teardown.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use clap::{Args, Parser, Subcommand};
use testbed::backends::slurm::SlurmTarget;
use testbed::bench::compare::{self, BenchmarkEntry};
use testbed::bench::dataplane::DataplaneFigures;
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
    /// Run a benchmark suite and print its figures, or compare two benchmarks.json files.
    Bench(BenchArgs),
    /// Print a run's summary.json for people: `--markdown` for a CI job summary.
    Summary(SummaryArgs),
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
    /// With `--backend ersap`: HOST:PORT of a running ERSAP front end (loopback only) to use
    /// instead of starting one.
    #[arg(long, value_name = "HOST:PORT")]
    ersap_fe: Option<String>,
    /// With `--backend slurm`: URL of a site's slurmrestd to use instead of starting a
    /// local Slurm. Its partitions must be named after the topology's clusters.
    #[arg(long, value_name = "URL", requires = "slurm_token")]
    slurm_url: Option<String>,
    /// With `--slurm-url`: a token from `scontrol token`.
    #[arg(long, env = "SLURM_JWT", hide_env_values = true)]
    slurm_token: Option<String>,
    /// With `--slurm-url`: the Slurm user the token belongs to.
    #[arg(long, env = "USER", default_value = "root")]
    slurm_user: String,
    /// With `--backend sim`: seed of the simulation's random choices; the same seed gives
    /// the same result.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// Suite to run.
    #[arg(long, value_enum, default_value = "dataplane")]
    suite: Suite,
    /// Events per measurement.
    #[arg(long, default_value_t = 500_000)]
    events: u64,
    /// Event payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    event_size: u32,
    /// Backend the suite provisions its instances on.
    #[arg(long, value_enum, default_value = "process")]
    backend: BackendKind,
    /// Times to run the suite; benchmarks.json keeps every value and their median.
    #[arg(long, visible_alias = "repeat", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repetitions: u32,
    /// Folder to write benchmarks.json into (github-action-benchmark's format).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Path of the `mock-ersap` binary; by default the one next to this program.
    #[arg(long, env = "TESTBED_MOCK_BIN")]
    mock_bin: Option<PathBuf>,
    /// Topology whose networks and node containers the provision suite creates.
    #[arg(long, default_value = "fixtures/topologies/three-sites.yaml")]
    topology: PathBuf,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Compare a candidate benchmarks.json with a baseline and print a Markdown table.
    /// Exits 1 when a metric regressed beyond the threshold and beyond noise.
    Compare(CompareArgs),
}

#[derive(Args)]
struct CompareArgs {
    /// Earlier benchmarks.json, such as the last nightly's.
    #[arg(long)]
    baseline: PathBuf,
    /// New benchmarks.json to check against the baseline.
    #[arg(long)]
    candidate: PathBuf,
    /// Relative change, in percent, that a change must exceed to count.
    #[arg(long, default_value_t = testbed::bench::compare::DEFAULT_THRESHOLD_PERCENT)]
    threshold: f64,
    /// Exit 0 even when a metric regressed (for pull requests).
    #[arg(long)]
    warn_only: bool,
}

#[derive(Args)]
struct SummaryArgs {
    /// Print Markdown, as GitHub job summaries render it.
    #[arg(long, required = true)]
    markdown: bool,
    /// Run folder that contains summary.json, such as target/testbed/latest.
    run_folder: PathBuf,
    /// Link to the run's uploaded artifacts; by default the GitHub Actions run page when
    /// GITHUB_SERVER_URL, GITHUB_REPOSITORY and GITHUB_RUN_ID are set.
    #[arg(long)]
    artifacts_url: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Suite {
    /// Events/s and MB/s of a zero-cost source, processor and sink chain against raw loopback TCP.
    Dataplane,
    /// Seconds to provision the topology's networks and node containers on Docker, against
    /// `docker compose up -d` of the same (always on Docker; reads --topology).
    Provision,
    /// Wall time and simulated events per second of the sim backend on 100 to 10,000 nodes.
    Sim,
    /// Provisioning of the topology and the start of one instance on the process, docker
    /// and slurm backends, with Slurm's submit-to-running time (reads --topology).
    Backends,
    /// Every fault kind at a fixed rate: detection, recovery, replays, events lost.
    Recovery,
    /// A manual rescale and the autoscaler: settling time and steps.
    Rescale,
    /// Recovery and rescale together.
    Nightly,
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
        // The simulation runs in virtual time, on a single thread with a paused clock.
        Command::Run(args) if args.backend == BackendKind::Sim => {
            match testbed::backends::sim::runtime() {
                Ok(runtime) => runtime.block_on(run_command(args)),
                Err(error) => {
                    eprintln!("error: cannot start the simulation runtime: {error}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run(args) => runtime.block_on(run_command(args)),
        Command::Bench(BenchArgs { command: Some(BenchCommand::Compare(args)), .. }) => {
            compare_command(&args)
        }
        Command::Bench(args) => runtime.block_on(bench_command(args)),
        Command::Summary(args) => summary_command(&args),
        Command::Clean => runtime.block_on(clean_command()),
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
        ersap_fe: args.ersap_fe,
        slurm: match args.slurm_url {
            Some(url) => SlurmTarget::Existing {
                url,
                user: args.slurm_user,
                token: args.slurm_token.unwrap_or_default(),
            },
            None => SlurmTarget::Local,
        },
        seed: args.seed,
    };
    if matches!(config.slurm, SlurmTarget::Existing { .. }) && config.backend != BackendKind::Slurm
    {
        eprintln!("error: --slurm-url applies only to --backend slurm; add --backend slurm");
        return ExitCode::from(2);
    }
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
    let docker_leftovers = docker_leftover_count().await;
    if docker_leftovers > 0 {
        eprintln!(
            "warning: {docker_leftovers} Docker containers and networks of killed runs remain; \
             remove them with `cargo xtask clean`"
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
            out!(
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
                out!(
                    "  failed: {}: expected {}, got {}",
                    expectation.name,
                    expectation.expected,
                    expectation.actual
                );
            }
            for error in &summary.errors {
                out!("  error: {error}");
            }
            match latest {
                Ok(_) => out!("artifacts: {}", run_dir.display()),
                Err(error) => out!("artifacts: {} ({error:#})", run_dir.display()),
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
    let mock_bin = args.mock_bin.clone().unwrap_or_else(|| sibling_binary("mock-ersap"));
    match args.suite {
        Suite::Recovery | Suite::Rescale | Suite::Nightly => {
            use testbed::bench::scenarios::{RECOVERY, RESCALE, run_suite, spread};
            let (name, scenarios): (&str, Vec<&str>) = match args.suite {
                Suite::Recovery => ("recovery", RECOVERY.to_vec()),
                Suite::Rescale => ("rescale", RESCALE.to_vec()),
                _ => ("nightly", RECOVERY.iter().chain(RESCALE).copied().collect()),
            };
            let output = args.output.clone().unwrap_or_else(|| {
                PathBuf::from(format!("target/testbed/bench-{name}-{}", args.backend.as_str()))
            });
            eprintln!(
                "{name}: {} scenarios x {} repetitions on the {} backend",
                scenarios.len(),
                args.repetitions,
                args.backend.as_str()
            );
            let result =
                run_suite(&scenarios, args.backend, args.repetitions, &mock_bin, &output, |line| {
                    eprintln!("  {line}");
                })
                .await;
            match result {
                Ok(result) => {
                    out!(
                        "{:<58} {:>8} {:>12} {:>12} {:>12}",
                        "metric",
                        "unit",
                        "median",
                        "min",
                        "max"
                    );
                    for entry in &result.entries {
                        let (min, max) = spread(entry);
                        out!(
                            "{:<58} {:>8} {:>12.3} {:>12.3} {:>12.3}",
                            entry.name,
                            entry.unit,
                            entry.value,
                            min,
                            max
                        );
                    }
                    out!(
                        "{} runs; combined results in {}",
                        result.runs,
                        output.join("benchmarks.json").display()
                    );
                    for failure in &result.failures {
                        out!("  failed: {failure}");
                    }
                    if result.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(2)
                }
            }
        }
        Suite::Provision => {
            provision_bench(&args.topology, args.repetitions, args.output.as_deref()).await
        }
        Suite::Backends => {
            backends_bench(&args.topology, args.repetitions, &mock_bin, args.output.as_deref())
                .await
        }
        Suite::Sim => {
            let folder = PathBuf::from("target/testbed/bench-sim");
            out!(
                "{:>7} {:>8} {:>9} {:>10} {:>11} {:>8} {:>16}",
                "nodes",
                "clusters",
                "instances",
                "events",
                "simulated s",
                "wall s",
                "events/s of wall"
            );
            for nodes in [100, 1_000, 10_000] {
                let result = tokio::task::spawn_blocking({
                    let folder = folder.clone();
                    move || testbed::bench::sim::run_one(&folder, nodes, 2_000_000)
                })
                .await;
                match result {
                    Ok(Ok(figures)) => out!(
                        "{:>7} {:>8} {:>9} {:>10} {:>11.1} {:>8.2} {:>16.0}{}",
                        figures.nodes,
                        figures.clusters,
                        figures.instances,
                        figures.events,
                        figures.simulated_s,
                        figures.wall_s,
                        figures.events_per_wall_s,
                        if figures.passed { "" } else { "  (expectations failed)" }
                    ),
                    Ok(Err(error)) => {
                        eprintln!("error: sim on {nodes} nodes: {error:#}");
                        return ExitCode::from(1);
                    }
                    Err(error) => {
                        eprintln!("error: sim on {nodes} nodes: {error}");
                        return ExitCode::from(1);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Suite::Dataplane => {
            if args.backend != BackendKind::Process {
                eprintln!(
                    "error: the dataplane suite measures local processes on loopback only; \
                     run it with --backend process"
                );
                return ExitCode::from(2);
            }
            eprintln!(
                "dataplane: {} events of {} bytes through source -> processor -> sink, and raw loopback TCP",
                args.events, args.event_size
            );
            let mut runs = Vec::new();
            for repetition in 1..=args.repetitions {
                let figures =
                    testbed::bench::dataplane::run(&mock_bin, args.events, args.event_size).await;
                let figures = match figures {
                    Ok(figures) => figures,
                    Err(error) => {
                        eprintln!("error: {error:#}");
                        return ExitCode::from(1);
                    }
                };
                if args.repetitions > 1 {
                    out!("repetition {repetition} of {}", args.repetitions);
                }
                out!("loopback TCP      {:>10.1} MB/s", figures.loopback_mb_s);
                out!(
                    "chain             {:>10.1} MB/s  {:>12.0} events/s",
                    figures.chain_mb_s,
                    figures.chain_events_s
                );
                out!("chain / loopback  {:>10.2}", figures.ratio());
                runs.push(figures);
            }
            write_benchmarks(args.output.as_deref(), &dataplane_benchmarks(&runs))
        }
    }
}

/// The backends suite: process, docker and slurm, `repetitions` times each.
async fn backends_bench(
    topology: &Path,
    repetitions: u32,
    mock_bin: &Path,
    output: Option<&Path>,
) -> ExitCode {
    use testbed::bench::backends::{self, BACKENDS};
    let file = topology;
    let topology = match orchestrator::model::Topology::load(file) {
        Ok(topology) => topology,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "backends: {} ({} clusters, {} nodes) on {}, {repetitions} repetitions; the docker \
         node image is built on first use, which takes minutes",
        file.display(),
        topology.clusters().len(),
        topology.nodes().len(),
        BACKENDS.join(", ")
    );
    let work_dir = std::env::temp_dir().join(format!("testbed-backends-{}", std::process::id()));
    let mut runs = Vec::new();
    for repetition in 1..=repetitions {
        for backend in BACKENDS {
            match backends::measure(backend, &topology, mock_bin, &work_dir, repetition).await {
                Ok(figures) => {
                    let to_running = figures
                        .submit_to_running_s
                        .map(|s| format!(", submit to running {s:.2} s"))
                        .unwrap_or_default();
                    out!(
                        "repetition {repetition} {backend:<8} provision {:>6.2} s, instance \
                         start {:>6.3} s{to_running}, teardown {:>5.2} s",
                        figures.provision_s,
                        figures.instance_start_s,
                        figures.teardown_s
                    );
                    runs.push((backend.to_string(), figures));
                }
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&work_dir);
                    eprintln!("error: {error:#}");
                    return ExitCode::from(1);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    let entries = backends::benchmarks(&runs);
    for entry in &entries {
        out!("{:<40} {:>8.3} {}", entry.name, entry.value, entry.unit);
    }
    write_benchmarks(output, &entries)
}

/// The provision suite: the docker backend against Compose, `repetitions` times.
async fn provision_bench(topology: &Path, repetitions: u32, output: Option<&Path>) -> ExitCode {
    use testbed::bench::provision::{self, Setup};
    eprintln!("provision: preparing the node image; the first build takes minutes");
    let setup = match Setup::new(topology).await {
        Ok(setup) => setup,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    let file = topology;
    let topology = setup.topology();
    eprintln!(
        "provision: {} ({} clusters, {} nodes, {} networks) with the docker backend and `{}`, \
         {} repetitions",
        file.display(),
        topology.clusters().len(),
        topology.nodes().len(),
        topology.clusters().len() + 1,
        setup.compose_command(),
        repetitions
    );
    eprintln!("provision: node image {}", setup.image().reference());
    if repetitions < 3 {
        eprintln!("note: a median of fewer than 3 repetitions is noisy; pass --repetitions 5");
    }
    let mut runs = Vec::new();
    for repetition in 1..=repetitions {
        let figures = match setup.measure(repetition % 2 == 0).await {
            Ok(figures) => figures,
            Err(error) => {
                eprintln!("error: {error:#}");
                return ExitCode::from(1);
            }
        };
        out!(
            "repetition {repetition}: testbed {:.2} s up, {:.2} s down; compose {:.2} s up, \
             {:.2} s down",
            figures.testbed_up_s,
            figures.testbed_down_s,
            figures.compose_up_s,
            figures.compose_down_s
        );
        runs.push(figures);
    }
    let entries = provision::benchmarks(&runs);
    for entry in &entries {
        out!("{:<34} {:>8.3} {}", entry.name, entry.value, entry.unit);
    }
    write_benchmarks(output, &entries)
}

fn dataplane_benchmarks(runs: &[DataplaneFigures]) -> Vec<BenchmarkEntry> {
    let series = |figure: fn(&DataplaneFigures) -> f64| runs.iter().map(figure).collect::<Vec<_>>();
    vec![
        BenchmarkEntry::from_repetitions(
            "dataplane/chain_throughput",
            "events/s",
            &series(|figures| figures.chain_events_s),
        ),
        BenchmarkEntry::from_repetitions(
            "dataplane/chain_bandwidth",
            "MB/s",
            &series(|figures| figures.chain_mb_s),
        ),
        BenchmarkEntry::from_repetitions(
            "dataplane/loopback_bandwidth",
            "MB/s",
            &series(|figures| figures.loopback_mb_s),
        ),
        BenchmarkEntry::from_repetitions(
            "dataplane/chain_to_loopback",
            "ratio",
            &series(DataplaneFigures::ratio),
        ),
    ]
}

/// Writes `<output>/benchmarks.json` when `--output` was given.
fn write_benchmarks(output: Option<&Path>, entries: &[BenchmarkEntry]) -> ExitCode {
    let Some(folder) = output else { return ExitCode::SUCCESS };
    let path = folder.join("benchmarks.json");
    let written =
        std::fs::create_dir_all(folder).and_then(|()| compare::write_file(&path, entries));
    match written {
        Ok(()) => {
            eprintln!("benchmarks: {}", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: cannot write {}: {error}", path.display());
            ExitCode::from(2)
        }
    }
}

fn compare_command(args: &CompareArgs) -> ExitCode {
    let comparison = compare::read_file(&args.baseline).and_then(|baseline| {
        let candidate = compare::read_file(&args.candidate)?;
        compare::compare(&baseline, &candidate, args.threshold)
    });
    let comparison = match comparison {
        Ok(comparison) => comparison,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    print!("{}", comparison.to_markdown());
    let regressions: Vec<&str> =
        comparison.regressions().map(|metric| metric.name.as_str()).collect();
    if regressions.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "{} {} regressed beyond {}%: {}",
        if args.warn_only { "warning:" } else { "error:" },
        if regressions.len() == 1 { "metric" } else { "metrics" },
        args.threshold,
        regressions.join(", ")
    );
    if args.warn_only { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn summary_command(args: &SummaryArgs) -> ExitCode {
    let artifacts_url =
        args.artifacts_url.clone().or_else(testbed::report_markdown::github_run_url);
    match testbed::report_markdown::render_run_folder(&args.run_folder, artifacts_url.as_deref()) {
        Ok(markdown) => {
            print!("{markdown}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn clean_command() -> ExitCode {
    let leftovers = testbed::clean::leftover_processes();
    let killed = testbed::clean::kill_processes(&leftovers);
    let mut runs: Vec<&str> = leftovers.iter().map(|process| process.run_id.as_str()).collect();
    runs.sort_unstable();
    runs.dedup();
    out!("removed {killed} leftover instance processes of {} runs", runs.len());
    // Processes just killed may take a moment to leave /proc.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let slurm_dirs = testbed::clean::remove_slurm_dirs();
    if slurm_dirs > 0 {
        out!("removed {slurm_dirs} /tmp folders of local Slurm clusters");
    }
    clean_docker().await
}

/// Removes the Docker containers, networks and old node images of killed runs. An engine that
/// cannot be reached is reported and skipped: the process cleanup above needs no Docker.
async fn clean_docker() -> ExitCode {
    let leftovers = match testbed::clean::docker_leftovers().await {
        Ok(leftovers) => leftovers,
        Err(error) => {
            out!("skipped Docker: {}", error.lines().next().unwrap_or_default());
            return ExitCode::SUCCESS;
        }
    };
    let removed = match testbed::clean::remove_docker_leftovers(&leftovers).await {
        Ok(removed) => removed,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    out!(
        "removed {} leftover containers and {} networks of {} docker runs",
        removed.containers,
        removed.networks,
        leftovers.runs.len()
    );
    match testbed::clean::remove_unused_images().await {
        Ok(images) if !images.is_empty() => {
            out!("removed {} unused node images: {}", images.len(), images.join(", "));
        }
        Ok(_) => {}
        Err(error) => eprintln!("warning: {error}"),
    }
    if removed.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: some leftovers remain: {}", removed.failures.join("; "));
        ExitCode::from(1)
    }
}

/// Counts the Docker containers and networks of killed runs, for the warning at run start.
/// Gives up after two seconds, and is silent when no engine answers.
async fn docker_leftover_count() -> usize {
    let timeout = std::time::Duration::from_secs(2);
    match tokio::time::timeout(timeout, testbed::clean::docker_leftovers()).await {
        Ok(Ok(leftovers)) => leftovers.containers.len() + leftovers.networks.len(),
        _ => 0,
    }
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
