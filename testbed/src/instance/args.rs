//! Command line of `mock-ersap` and the checks that clap cannot express.

use std::net::IpAddr;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, ValueEnum};
use orchestrator::control::Role;

use super::InstanceError;

/// Mock ERSAP instance: one service replica of a streaming workflow.
///
/// It binds a TCP data port and an HTTP control port, prints one JSON line
/// `{"event":"ready","data_port":..,"control_port":..,"pid":..}` on stdout, and then takes its
/// orders from the control API. The control token is read from the environment variable
/// TESTBED_TOKEN. Logs go to stderr; RUST_LOG sets their level.
#[derive(Debug, Clone, Parser)]
#[command(name = "mock-ersap", version)]
pub struct Args {
    /// Role in the workflow: source (ERSAP's reader), processor (a service) or sink (writer).
    #[arg(
        long,
        value_parser = PossibleValuesParser::new(["source", "processor", "sink"])
            .map(|role| parse_role(&role)),
    )]
    pub role: Role,

    /// Run id, which labels every log line and is the DPE session in reports.
    #[arg(long)]
    pub run_id: String,

    /// Name of the workflow stage this instance is a replica of.
    #[arg(long)]
    pub stage: String,

    /// Index of this replica within its stage.
    #[arg(long, default_value_t = 0)]
    pub replica: u32,

    /// Class name of the engine, as in services.yaml.
    #[arg(long, default_value = "org.jlab.epsci.ersap.testbed.MockEngine")]
    pub engine_class: String,

    /// Name of the engine, the last part of the canonical service name [default: the stage].
    #[arg(long)]
    pub engine_name: Option<String>,

    /// Name of the ERSAP container that contains the service.
    #[arg(long, default_value = "testbed")]
    pub container: String,

    /// Language of the emulated DPE, part of its canonical name.
    #[arg(long, value_enum, default_value_t = Lang::Java)]
    pub lang: Lang,

    /// Site label, shown in reports.
    #[arg(long, default_value = "local")]
    pub site: String,

    /// Cluster label, shown in reports.
    #[arg(long, default_value = "local")]
    pub cluster: String,

    /// Node label, shown in reports.
    #[arg(long, default_value = "local")]
    pub node: String,

    /// IP address that the data and control ports bind to. With a loopback address the
    /// instance accepts only loopback targets.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// TCP port for inbound events (0 = any free port).
    #[arg(long, default_value_t = 0)]
    pub data_port: u16,

    /// TCP port of the HTTP control API (0 = any free port).
    #[arg(long, default_value_t = 0)]
    pub control_port: u16,

    /// Host in the canonical DPE name [default: the bind address, or 127.0.0.1 when binding
    /// to 0.0.0.0].
    #[arg(long)]
    pub advertise: Option<String>,

    /// Source: number of events to emit.
    #[arg(long, default_value_t = 0)]
    pub events: u64,

    /// Source: first sequence number. The source emits seq-start .. seq-start + events - 1.
    #[arg(long, default_value_t = 0)]
    pub seq_start: u64,

    /// Source: payload size of each event, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub event_size: u32,

    /// Source: emission rate in events per second (0 = as fast as the links allow).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,

    /// Processor: modelled processing cost in nanoseconds per input byte (JLab calibrated
    /// 500 ns/byte on 60 kB CLAS12 frames).
    #[arg(long, default_value_t = 0.0)]
    pub cost_ns_per_byte: f64,

    /// Processor: how the cost is spent: burn spins a CPU, sleep sleeps the worker thread.
    #[arg(long, value_enum, default_value_t = CostMode::Burn)]
    pub cost_mode: CostMode,

    /// Processor: number of worker threads (ERSAP's pool size).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,

    /// Processor: payload size of each output event, in bytes (0 = same as the input).
    #[arg(long, default_value_t = 0)]
    pub output_size: u32,

    /// Sink: file to which every received range of sequence numbers is appended before it is
    /// acknowledged, so that what a sink recorded outlives it (see `journal`).
    #[arg(long, value_name = "FILE")]
    pub journal: Option<std::path::PathBuf>,

    /// PID of the harness. The instance exits within 1 s after that process is gone.
    #[arg(long)]
    pub harness_pid: Option<u32>,

    /// Report period of the emulated DPE, in seconds.
    #[arg(long, default_value_t = 10)]
    pub report_period_s: u64,

    /// The service's ERSAP configuration as JSON (global section merged with its own). It is
    /// only recorded and shown in the report. Addresses in it are never contacted.
    #[arg(long)]
    pub config_json: Option<String>,

    /// HOST:PORT of an ERSAP front end (loopback only). The instance then also runs as a
    /// worker DPE over xMsg: it registers with the front end and reports to it.
    #[arg(long, value_name = "HOST:PORT")]
    pub xmsg_fe: Option<String>,

    /// With --xmsg-fe: base port of the instance's xMsg proxy, which takes PORT .. PORT+2
    /// (0 = free ports).
    #[arg(long, default_value_t = 0)]
    pub xmsg_port: u16,
}

/// Language of the emulated DPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Java,
    Cpp,
    Python,
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Java => "java",
            Lang::Cpp => "cpp",
            Lang::Python => "python",
        }
    }
}

/// Way a processor spends its modelled cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CostMode {
    /// Spin on the clock, keeping a CPU busy as real reconstruction code would.
    Burn,
    /// Sleep, which occupies a worker slot but no CPU.
    Sleep,
}

/// Minimum nonzero `--rate`, in events per second (one event every 1000 s).
pub const MIN_RATE: f64 = 0.001;

/// Maximum `--cost-ns-per-byte`: one second per byte.
pub const MAX_COST_NS_PER_BYTE: f64 = 1e9;

/// Maximum `--event-size` and `--output-size` accepted, in bytes.
pub const MAX_EVENT_SIZE: u32 = 64 * 1024 * 1024;

impl Args {
    /// Checks the values that clap parses but cannot judge, and parses `--config-json`.
    pub fn validate(&self) -> Result<Option<serde_json::Value>, InstanceError> {
        let invalid = |name: &'static str, value: String, reason: &str| {
            Err(InstanceError::InvalidArgument { name, value, reason: reason.to_owned() })
        };
        if !self.rate.is_finite() || self.rate < 0.0 {
            return invalid("--rate", self.rate.to_string(), "must be a finite number >= 0");
        }
        if self.rate > 0.0 && self.rate < MIN_RATE {
            return invalid("--rate", self.rate.to_string(), "must be 0 or at least 0.001");
        }
        if !(0.0..=MAX_COST_NS_PER_BYTE).contains(&self.cost_ns_per_byte) {
            return invalid(
                "--cost-ns-per-byte",
                self.cost_ns_per_byte.to_string(),
                "must be between 0 and 1e9 (one second per byte)",
            );
        }
        for (name, size) in [("--event-size", self.event_size), ("--output-size", self.output_size)]
        {
            if size > MAX_EVENT_SIZE {
                return invalid(name, size.to_string(), "exceeds the limit of 64 MiB");
            }
        }
        if self.seq_start.checked_add(self.events).is_none() {
            return invalid(
                "--events",
                self.events.to_string(),
                "--seq-start + --events must fit in an unsigned 64-bit integer",
            );
        }
        if let (Some(path), false) = (&self.journal, self.role == Role::Sink) {
            let value = path.display().to_string();
            return invalid("--journal", value, "only a sink keeps a journal");
        }
        if self.report_period_s == 0 {
            return invalid("--report-period-s", "0".to_owned(), "must be at least 1");
        }
        match &self.config_json {
            None => Ok(None),
            Some(text) => match serde_json::from_str(text) {
                Ok(value) => Ok(Some(value)),
                Err(err) => invalid("--config-json", text.clone(), &format!("is not JSON: {err}")),
            },
        }
    }

    /// Engine name, which defaults to the stage name.
    pub fn engine_name(&self) -> &str {
        self.engine_name.as_deref().unwrap_or(&self.stage)
    }

    /// Host part of the canonical DPE name.
    pub fn advertised_host(&self) -> String {
        match &self.advertise {
            Some(host) => host.clone(),
            None if self.bind.is_unspecified() => "127.0.0.1".to_owned(),
            None => self.bind.to_string(),
        }
    }

    /// Returns whether the instance runs as a local process, which limits its targets to
    /// loopback addresses.
    pub fn is_process_mode(&self) -> bool {
        self.bind.is_loopback()
    }
}

fn parse_role(role: &str) -> Role {
    match role {
        "source" => Role::Source,
        "processor" => Role::Processor,
        _ => Role::Sink,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let base = ["mock-ersap", "--role", "processor", "--run-id", "r1", "--stage", "reco"];
        Args::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn defaults_fill_optional_arguments() {
        let args = parse(&[]).expect("valid arguments");
        assert_eq!(args.role, Role::Processor);
        assert_eq!(args.engine_name(), "reco");
        assert_eq!(args.advertised_host(), "127.0.0.1");
        assert_eq!(args.threads, 1);
        assert!(args.is_process_mode());
        assert_eq!(args.validate().expect("valid"), None);
    }

    #[test]
    fn unknown_role_is_rejected() {
        let err = Args::try_parse_from(["mock-ersap", "--role", "reader", "--run-id", "r"])
            .expect_err("reader is not a role");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn advertised_host_replaces_unspecified_bind() {
        let args = parse(&["--bind", "0.0.0.0"]).expect("valid arguments");
        assert_eq!(args.advertised_host(), "127.0.0.1");
        assert!(!args.is_process_mode());
        let args = parse(&["--bind", "0.0.0.0", "--advertise", "node7"]).expect("valid");
        assert_eq!(args.advertised_host(), "node7");
    }

    #[test]
    fn invalid_values_are_rejected_by_validate() {
        let cases: &[(&[&str], &str)] = &[
            (&["--rate=-1"], "--rate"),
            (&["--rate", "1e-9"], "--rate"),
            (&["--cost-ns-per-byte", "1e12"], "--cost-ns-per-byte"),
            (&["--cost-ns-per-byte", "NaN"], "--cost-ns-per-byte"),
            (&["--event-size", "100000000"], "--event-size"),
            (&["--seq-start", "18446744073709551615", "--events", "2"], "--events"),
            (&["--config-json", "{not json"], "--config-json"),
            (&["--journal", "out.journal"], "--journal"),
        ];
        for (extra, expected) in cases {
            let args = parse(extra).expect("clap accepts the value");
            match args.validate() {
                Err(InstanceError::InvalidArgument { name, .. }) => assert_eq!(name, *expected),
                other => panic!("{extra:?}: expected an invalid {expected}, got {other:?}"),
            }
        }
    }

    #[test]
    fn zero_threads_are_rejected_by_clap() {
        assert!(parse(&["--threads", "0"]).is_err());
    }
}
