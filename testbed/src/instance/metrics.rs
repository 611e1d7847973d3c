//! Prometheus text exposition of an instance's counters, under ERSAP's metric names.
//!
//! The format is small enough to write by hand: per metric a `# HELP` and a `# TYPE` line,
//! then one sample line with its labels. Service metrics carry the labels `dpe`, `container`
//! and `service` (canonical ERSAP names), DPE metrics only `dpe`.

use std::fmt::Write;

use super::report::CanonicalNames;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Values exported for one service and its DPE.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricValues {
    pub requests: u64,
    pub failures: u64,
    pub exec_time_seconds: f64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub cpu_usage_percent: f64,
    pub memory_usage_bytes: u64,
}

/// Renders the metrics in the text exposition format.
pub fn render(names: &CanonicalNames, values: &MetricValues) -> String {
    let service_labels = format!(
        "dpe=\"{}\",container=\"{}\",service=\"{}\"",
        escape(&names.dpe),
        escape(&names.container),
        escape(&names.service)
    );
    let dpe_labels = format!("dpe=\"{}\"", escape(&names.dpe));
    let samples: [(&str, &str, &str, &str, String); 7] = [
        (
            "ersap_service_requests_total",
            "counter",
            "Requests executed by the service.",
            &service_labels,
            values.requests.to_string(),
        ),
        (
            "ersap_service_failures_total",
            "counter",
            "Requests that ended with an error status.",
            &service_labels,
            values.failures.to_string(),
        ),
        (
            "ersap_service_execution_time_seconds_total",
            "counter",
            "Time spent executing requests, in seconds.",
            &service_labels,
            values.exec_time_seconds.to_string(),
        ),
        (
            "ersap_service_bytes_received_total",
            "counter",
            "Payload bytes received by the service.",
            &service_labels,
            values.bytes_received.to_string(),
        ),
        (
            "ersap_service_bytes_sent_total",
            "counter",
            "Payload bytes sent by the service.",
            &service_labels,
            values.bytes_sent.to_string(),
        ),
        (
            "ersap_dpe_cpu_usage_percent",
            "gauge",
            "CPU usage of the DPE process, in percent of one core.",
            &dpe_labels,
            values.cpu_usage_percent.to_string(),
        ),
        (
            "ersap_dpe_memory_usage_bytes",
            "gauge",
            "Resident memory of the DPE process, in bytes.",
            &dpe_labels,
            values.memory_usage_bytes.to_string(),
        ),
    ];
    let mut text = String::new();
    for (name, kind, help, labels, value) in samples {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        let _ = writeln!(text, "{name}{{{labels}}} {value}");
    }
    text
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> String {
        let names = CanonicalNames::new("127.0.0.1", 7000, "java", "user", "Reco");
        let values = MetricValues {
            requests: 12,
            failures: 1,
            exec_time_seconds: 0.25,
            bytes_received: 1024,
            bytes_sent: 2048,
            cpu_usage_percent: 37.5,
            memory_usage_bytes: 1 << 20,
        };
        render(&names, &values)
    }

    #[test]
    fn every_metric_has_help_and_type() {
        let text = rendered();
        let expected = [
            ("ersap_service_requests_total", "counter"),
            ("ersap_service_failures_total", "counter"),
            ("ersap_service_execution_time_seconds_total", "counter"),
            ("ersap_service_bytes_received_total", "counter"),
            ("ersap_service_bytes_sent_total", "counter"),
            ("ersap_dpe_cpu_usage_percent", "gauge"),
            ("ersap_dpe_memory_usage_bytes", "gauge"),
        ];
        for (name, kind) in expected {
            let help = format!("# HELP {name} ");
            let type_line = format!("# TYPE {name} {kind}\n");
            assert!(text.contains(&help), "no HELP line for {name}");
            assert!(text.contains(&type_line), "no TYPE line for {name}");
            let samples = text.lines().filter(|line| line.starts_with(&format!("{name}{{")));
            assert_eq!(samples.count(), 1, "{name} needs exactly one sample");
        }
    }

    #[test]
    fn samples_carry_labels_and_values() {
        let text = rendered();
        let service = "dpe=\"127.0.0.1%7000_java\",container=\"127.0.0.1%7000_java:user\",\
                       service=\"127.0.0.1%7000_java:user:Reco\"";
        assert!(text.contains(&format!("ersap_service_requests_total{{{service}}} 12\n")));
        assert!(
            text.contains(&format!(
                "ersap_service_execution_time_seconds_total{{{service}}} 0.25\n"
            ))
        );
        assert!(
            text.contains("ersap_dpe_memory_usage_bytes{dpe=\"127.0.0.1%7000_java\"} 1048576\n")
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("line\nbreak"), "line\\nbreak");
    }
}
