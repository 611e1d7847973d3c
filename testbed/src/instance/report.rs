//! DPE report in ERSAP's JSON schema, and the process figures it contains.
//!
//! A real DPE publishes a report with a registration part (who it is, which containers and
//! services it runs) and a runtime part (cumulative counters and process load). An instance
//! presents itself as a DPE that hosts one container with one service. Names follow ERSAP's
//! canonical form; because several instances share one host, the DPE name always carries a
//! port: `<host>%<control_port>_<lang>`.

use std::time::Instant;

use serde::Serialize;

use super::Shared;
use super::stats::Counters;

/// Format of ERSAP's report timestamps, as in "2021-06-20 12:30:00".
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Clock ticks per second in `/proc/<pid>/stat`. Linux reports CPU times in USER_HZ, which
/// is 100 on every architecture this project runs on (x86-64, arm64).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Root of the report, with ERSAP's top-level key names.
#[derive(Debug, Clone, Serialize)]
pub struct DpeReport {
    #[serde(rename = "DPERegistration")]
    pub registration: Registration,
    #[serde(rename = "DPERuntime")]
    pub runtime: Runtime,
}

#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    pub name: String,
    pub language: String,
    pub session: String,
    pub start_time: String,
    pub ersap_home: String,
    pub n_cores: usize,
    pub memory_size: u64,
    pub containers: Vec<ContainerRegistration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerRegistration {
    pub name: String,
    pub language: String,
    pub start_time: String,
    pub author: String,
    pub services: Vec<ServiceRegistration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceRegistration {
    pub name: String,
    pub class_name: String,
    pub language: String,
    pub pool_size: u32,
    pub start_time: String,
    pub author: String,
    pub version: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Runtime {
    pub name: String,
    pub snapshot_time: String,
    /// CPU time of the process over the last interval, in percent of one core.
    pub cpu_usage: f64,
    /// Resident memory of the process, in bytes.
    pub memory_usage: u64,
    /// One-minute load average of the host.
    pub load: f64,
    pub containers: Vec<ContainerRuntime>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerRuntime {
    pub name: String,
    pub snapshot_time: String,
    pub n_requests: u64,
    pub services: Vec<ServiceRuntime>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceRuntime {
    pub name: String,
    pub snapshot_time: String,
    pub n_requests: u64,
    pub n_failures: u64,
    pub shm_reads: u64,
    pub shm_writes: u64,
    pub bytes_recv: u64,
    pub bytes_sent: u64,
    /// Summed execution time, in microseconds.
    pub exec_time: u64,
}

/// Canonical ERSAP names of the emulated DPE, container and service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalNames {
    pub dpe: String,
    pub container: String,
    pub service: String,
}

impl CanonicalNames {
    pub fn new(host: &str, port: u16, lang: &str, container: &str, engine: &str) -> Self {
        let dpe = format!("{host}%{port}_{lang}");
        let container = format!("{dpe}:{container}");
        let service = format!("{container}:{engine}");
        Self { dpe, container, service }
    }

    pub(crate) fn of(shared: &Shared) -> Self {
        let args = &shared.args;
        // A DPE on xMsg is named after its proxy's port, as real DPEs are.
        let port = if args.xmsg_fe.is_some() { args.xmsg_port } else { shared.control_port };
        Self::new(
            &args.advertised_host(),
            port,
            args.lang.as_str(),
            &args.container,
            args.engine_name(),
        )
    }
}

/// CPU time of this process at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    ticks: u64,
    at: Instant,
}

/// Process and host figures read from `/proc`; a figure that cannot be read is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessFigures {
    pub cpu_usage: f64,
    pub memory_usage: u64,
    pub load: f64,
}

/// Builds the report of an instance now.
pub(crate) fn build(shared: &Shared) -> DpeReport {
    let args = &shared.args;
    let names = CanonicalNames::of(shared);
    let lang = args.lang.as_str().to_owned();
    let author = std::env::var("USER").unwrap_or_else(|_| "testbed".to_owned());
    let start_time = shared.start_time.format(TIME_FORMAT).to_string();
    let now = chrono::Local::now().format(TIME_FORMAT).to_string();
    let figures = process_figures(shared);
    let counters = &shared.counters;
    let requests = Counters::get(&counters.requests);

    let service = ServiceRegistration {
        name: names.service.clone(),
        class_name: args.engine_class.clone(),
        language: lang.clone(),
        pool_size: if shared.role == orchestrator::control::Role::Processor {
            args.threads
        } else {
            1
        },
        start_time: start_time.clone(),
        author: author.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        description: describe(shared),
    };
    let registration = Registration {
        name: names.dpe.clone(),
        language: lang.clone(),
        session: args.run_id.clone(),
        start_time: start_time.clone(),
        ersap_home: std::env::var("ERSAP_HOME").unwrap_or_default(),
        n_cores: std::thread::available_parallelism().map_or(1, usize::from),
        memory_size: read_mem_total().unwrap_or(0),
        containers: vec![ContainerRegistration {
            name: names.container.clone(),
            language: lang,
            start_time,
            author,
            services: vec![service],
        }],
    };
    let runtime = Runtime {
        name: names.dpe,
        snapshot_time: now.clone(),
        cpu_usage: figures.cpu_usage,
        memory_usage: figures.memory_usage,
        load: figures.load,
        containers: vec![ContainerRuntime {
            name: names.container,
            snapshot_time: now.clone(),
            n_requests: requests,
            services: vec![ServiceRuntime {
                name: names.service,
                snapshot_time: now,
                n_requests: requests,
                n_failures: Counters::get(&counters.failures),
                shm_reads: 0,
                shm_writes: 0,
                bytes_recv: Counters::get(&counters.bytes_in),
                bytes_sent: Counters::get(&counters.bytes_out),
                exec_time: Counters::get(&counters.exec_time_ns) / 1000,
            }],
        }],
    };
    DpeReport { registration, runtime }
}

/// Service description: role, labels and the recorded configuration.
fn describe(shared: &Shared) -> String {
    let args = &shared.args;
    let mut text = format!(
        "mock {} of stage {} (replica {}) at site {}, cluster {}, node {}; \
         report period {} s",
        shared.role,
        args.stage,
        args.replica,
        args.site,
        args.cluster,
        args.node,
        args.report_period_s,
    );
    if let Some(config) = &shared.config {
        text.push_str("; configuration: ");
        text.push_str(&config.to_string());
    }
    text
}

/// Reads the process figures and updates the CPU sample used for the next interval.
pub(crate) fn process_figures(shared: &Shared) -> ProcessFigures {
    let now = Instant::now();
    let ticks = read_cpu_ticks();
    let cpu_usage = {
        let mut previous = shared.cpu_sample.lock().unwrap_or_else(|e| e.into_inner());
        let base = previous.unwrap_or(CpuSample { ticks: 0, at: shared.started_at });
        let usage = match ticks {
            Some(ticks) => cpu_percent(base, CpuSample { ticks, at: now }),
            None => 0.0,
        };
        if let Some(ticks) = ticks {
            *previous = Some(CpuSample { ticks, at: now });
        }
        usage
    };
    ProcessFigures {
        cpu_usage,
        memory_usage: read_rss_bytes().unwrap_or(0),
        load: read_load().unwrap_or(0.0),
    }
}

fn cpu_percent(before: CpuSample, after: CpuSample) -> f64 {
    let seconds = after.at.saturating_duration_since(before.at).as_secs_f64();
    if seconds <= 0.0 {
        return 0.0;
    }
    let cpu_seconds = after.ticks.saturating_sub(before.ticks) as f64 / CLOCK_TICKS_PER_SECOND;
    (cpu_seconds / seconds * 100.0 * 10.0).round() / 10.0
}

/// User plus system CPU time of this process, in clock ticks.
fn read_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name start with the state (field 3); utime and
    // stime are fields 14 and 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of this process, in bytes.
fn read_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kilobytes_field(&status, "VmRSS:")
}

fn read_mem_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    kilobytes_field(&meminfo, "MemTotal:")
}

/// Parses a line such as `VmRSS:     1234 kB` and returns the value in bytes.
fn kilobytes_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with(key))?;
    let kilobytes: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kilobytes * 1024)
}

fn read_load() -> Option<f64> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    loadavg.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use serde_json::Value;

    use super::*;

    const SAMPLE_PATH: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/ersap-examples/dpe-report.json");

    fn sample_report() -> DpeReport {
        let names = CanonicalNames::new("127.0.0.1", 40123, "java", "user", "Reco");
        let service = ServiceRegistration {
            name: names.service.clone(),
            class_name: "org.example.Reco".to_owned(),
            language: "java".to_owned(),
            pool_size: 2,
            start_time: "2021-06-20 12:30:00".to_owned(),
            author: "user".to_owned(),
            version: "0.1.0".to_owned(),
            description: "mock".to_owned(),
        };
        DpeReport {
            registration: Registration {
                name: names.dpe.clone(),
                language: "java".to_owned(),
                session: "run".to_owned(),
                start_time: "2021-06-20 12:30:00".to_owned(),
                ersap_home: String::new(),
                n_cores: 2,
                memory_size: 1 << 30,
                containers: vec![ContainerRegistration {
                    name: names.container.clone(),
                    language: "java".to_owned(),
                    start_time: "2021-06-20 12:30:00".to_owned(),
                    author: "user".to_owned(),
                    services: vec![service],
                }],
            },
            runtime: Runtime {
                name: names.dpe,
                snapshot_time: "2021-06-20 12:35:00".to_owned(),
                cpu_usage: 1.5,
                memory_usage: 1 << 20,
                load: 0.5,
                containers: vec![ContainerRuntime {
                    name: names.container,
                    snapshot_time: "2021-06-20 12:35:00".to_owned(),
                    n_requests: 10,
                    services: vec![ServiceRuntime {
                        name: names.service,
                        snapshot_time: "2021-06-20 12:35:00".to_owned(),
                        n_requests: 10,
                        n_failures: 0,
                        shm_reads: 0,
                        shm_writes: 0,
                        bytes_recv: 100,
                        bytes_sent: 100,
                        exec_time: 5,
                    }],
                }],
            },
        }
    }

    /// Collects the key paths of a JSON value, with `[]` for the elements of arrays.
    fn key_paths(value: &Value, prefix: &str, paths: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = format!("{prefix}.{key}");
                    paths.insert(path.clone());
                    key_paths(child, &path, paths);
                }
            }
            Value::Array(items) => {
                for item in items {
                    key_paths(item, &format!("{prefix}[]"), paths);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn report_keys_match_ersap_sample() {
        let path = Path::new(SAMPLE_PATH);
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("CI needs the ERSAP sample report at {}: {err}", path.display())
            }
            Err(err) => {
                eprintln!("skipped: ERSAP sample report not readable at {}: {err}", path.display());
                return;
            }
        };
        let sample: Value = serde_json::from_str(&text).expect("sample report is JSON");
        let ours = serde_json::to_value(sample_report()).expect("report serialises");

        let mut expected = BTreeSet::new();
        key_paths(&sample, "", &mut expected);
        let mut actual = BTreeSet::new();
        key_paths(&ours, "", &mut actual);
        let missing: Vec<_> = expected.difference(&actual).collect();
        let extra: Vec<_> = actual.difference(&expected).collect();
        assert!(missing.is_empty(), "keys missing from the report: {missing:?}");
        assert!(extra.is_empty(), "keys not in ERSAP's report: {extra:?}");
    }

    #[test]
    fn canonical_names_carry_the_port() {
        let names = CanonicalNames::new("127.0.0.1", 7000, "cpp", "user", "Reco");
        assert_eq!(names.dpe, "127.0.0.1%7000_cpp");
        assert_eq!(names.container, "127.0.0.1%7000_cpp:user");
        assert_eq!(names.service, "127.0.0.1%7000_cpp:user:Reco");
    }

    #[test]
    fn proc_figures_are_readable() {
        assert!(read_cpu_ticks().is_some(), "/proc/self/stat has no CPU times");
        assert!(read_rss_bytes().is_some_and(|rss| rss > 0), "/proc/self/status has no VmRSS");
        assert!(read_mem_total().is_some_and(|total| total > 0), "/proc/meminfo has no total");
        assert!(read_load().is_some(), "/proc/loadavg is not readable");
    }

    #[test]
    fn cpu_percent_is_relative_to_one_core() {
        let at = Instant::now();
        let before = CpuSample { ticks: 100, at };
        let after = CpuSample { ticks: 250, at: at + std::time::Duration::from_secs(1) };
        assert_eq!(cpu_percent(before, after), 150.0);
        assert_eq!(cpu_percent(after, after), 0.0);
    }
}
