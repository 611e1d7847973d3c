//! Scenario files: what to stream and which expectations a run must meet.
//!
//! ```yaml
//! name: smoke
//! stream: { events: 20000, event_size: 1024, rate: 0 }
//! timeout_s: 60
//! expect: { max_lost: 0, max_duplicates: 0, min_throughput_eps: 1000 }
//! ```

use std::path::Path;

use orchestrator::InputError;
use orchestrator::path;
use orchestrator::yaml::Document;
use serde::Deserialize;

/// A scenario, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub stream: Stream,
    /// Limit on the streaming phase, in seconds; the run fails when it is reached.
    pub timeout_s: f64,
    pub expect: Expectations,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    /// Events the source stage emits in total.
    pub events: u64,
    /// Payload size of each event, in bytes.
    #[serde(default = "default_event_size")]
    pub event_size: u32,
    /// Events per second over all source replicas; 0 means as fast as possible.
    #[serde(default)]
    pub rate: f64,
}

fn default_event_size() -> u32 {
    1024
}

/// Conditions the run must meet; every one that is set is checked and reported.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    /// Events that may be missing at the sink.
    #[serde(default)]
    pub max_lost: u64,
    /// Events the sink may receive more than once.
    #[serde(default)]
    pub max_duplicates: u64,
    /// Minimum events per second at the sink over the streaming phase.
    pub min_throughput_eps: Option<f64>,
    /// Maximum 99th-percentile latency from source to sink, in milliseconds.
    pub max_latency_p99_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    stream: Stream,
    #[serde(default = "default_timeout_s")]
    timeout_s: f64,
    #[serde(default)]
    expect: Expectations,
}

fn default_timeout_s() -> f64 {
    120.0
}

impl Scenario {
    pub fn load(file: &Path) -> Result<Scenario, InputError> {
        Scenario::from_document(&Document::read(file)?)
    }

    pub fn from_document(document: &Document) -> Result<Scenario, InputError> {
        let file: ScenarioFile = document.deserialize()?;
        if file.stream.events == 0 {
            return Err(document
                .error(&path!["stream", "events"], "`events` is 0")
                .with_hint("stream at least 1 event"));
        }
        if file.stream.event_size < 32 || file.stream.event_size > 64 * 1024 * 1024 {
            return Err(document
                .error(
                    &path!["stream", "event_size"],
                    format!("event size {} bytes is out of range", file.stream.event_size),
                )
                .with_hint("use 32 bytes to 64 MiB"));
        }
        if !file.stream.rate.is_finite() || file.stream.rate < 0.0 {
            return Err(document
                .error(&path!["stream", "rate"], format!("invalid rate {}", file.stream.rate))
                .with_hint("use events per second, or 0 for as fast as possible"));
        }
        if !file.timeout_s.is_finite() || file.timeout_s <= 0.0 {
            return Err(document
                .error(&path!["timeout_s"], format!("invalid timeout {} s", file.timeout_s))
                .with_hint("use a positive number of seconds"));
        }
        Ok(Scenario {
            name: file.name,
            stream: file.stream,
            timeout_s: file.timeout_s,
            expect: file.expect,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, InputError> {
        Scenario::from_document(&Document::parse(Path::new("s.yaml"), text)?)
    }

    #[test]
    fn smoke_scenario_parses() {
        let scenario = parse("name: smoke\nstream: {events: 10}\nexpect: {max_lost: 0}\n").unwrap();
        assert_eq!(scenario.stream.events, 10);
        assert_eq!(scenario.stream.event_size, 1024);
        assert_eq!(scenario.expect.max_duplicates, 0);
    }

    #[test]
    fn unknown_expectation_names_line_and_choices() {
        let error = parse("name: x\nstream: {events: 10}\nexpect:\n  lost: 0\n").unwrap_err();
        assert_eq!(error.line, 4);
        assert!(error.message.contains("max_lost"), "{}", error.message);
    }

    #[test]
    fn zero_events_rejected() {
        let error = parse("name: x\nstream:\n  events: 0\n").unwrap_err();
        assert_eq!(error.line, 3);
    }
}
