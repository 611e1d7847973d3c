//! `report.html`: one self-contained page per run, with the summary and three SVG plots.
//!
//! The page has no script, no external stylesheet, font or image, so a browser shows it from
//! a downloaded CI artifact without network access. The plots are:
//!
//! - throughput of every stage over time, from the timeline (events per second, one step per
//!   second of streaming);
//! - replicas of every stage over time, from the timeline;
//! - latency percentiles of every stage (p50, p90, p99, max), from the summary.
//!
//! Fault and rescale windows are shaded on both time plots: a fault from its injection until
//! the sink recovered (to the end of the plot when it never did), a rescale from its decision
//! until it settled. Their times count seconds from the start of streaming, the clock of
//! `timeline.csv`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::artifacts::Summary;
use crate::results::TimelineRow;

/// Name of the report in the run folder.
pub const FILE_NAME: &str = "report.html";

/// A shaded interval on the time plots.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub kind: WindowKind,
    /// Short description shown on the plot, such as `kill nersc/perlmutter/nid-001`.
    pub label: String,
    /// Seconds from the start of streaming.
    pub start_s: f64,
    /// Seconds from the start of streaming; `None` when it never recovered or settled, in
    /// which case the shading reaches the end of the plot.
    pub end_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Fault,
    Rescale,
}

impl WindowKind {
    fn class(self) -> &'static str {
        match self {
            WindowKind::Fault => "fault",
            WindowKind::Rescale => "rescale",
        }
    }
}

/// Renders the report of a run, with the fault and rescale windows that the summary records.
pub fn render(summary: &Summary, timeline_rows: &[TimelineRow], stage_names: &[String]) -> String {
    render_with_windows(summary, timeline_rows, stage_names, &windows_of(summary))
}

/// Renders `report.html` into the run folder and returns its path.
pub fn write(
    run_dir: &Path,
    summary: &Summary,
    timeline_rows: &[TimelineRow],
    stage_names: &[String],
) -> anyhow::Result<PathBuf> {
    let path = run_dir.join(FILE_NAME);
    std::fs::write(&path, render(summary, timeline_rows, stage_names))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Renders the report with explicit windows, for callers that track them outside the summary.
pub fn render_with_windows(
    summary: &Summary,
    timeline_rows: &[TimelineRow],
    stage_names: &[String],
    windows: &[Window],
) -> String {
    let mut page = String::new();
    let result = if summary.passed { "passed" } else { "failed" };
    let title = format!("testbed {}: {} {result}", summary.run_id, summary.scenario);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<link rel=\"icon\" href=\"data:,\">\n<style>{STYLE}</style>\n\
         </head>\n<body>\n",
        escape(&title)
    );
    write_header(&mut page, summary, result);
    write_windows_table(&mut page, windows);

    page.push_str("<h2>Throughput per stage</h2>\n");
    let throughput: Vec<Series> = stage_names
        .iter()
        .enumerate()
        .map(|(stage, name)| Series {
            name,
            values: timeline_rows
                .iter()
                .map(|row| (row.second, row.throughput.get(stage).copied().unwrap_or(0.0)))
                .collect(),
        })
        .collect();
    write_step_plot(&mut page, "throughput-plot", "events/s", &throughput, windows, false);

    page.push_str("<h2>Replicas per stage</h2>\n");
    let replicas: Vec<Series> = stage_names
        .iter()
        .enumerate()
        .map(|(stage, name)| Series {
            name,
            values: timeline_rows
                .iter()
                .map(|row| (row.second, f64::from(row.replicas.get(stage).copied().unwrap_or(0))))
                .collect(),
        })
        .collect();
    write_step_plot(&mut page, "replicas-plot", "replicas", &replicas, windows, true);

    page.push_str("<h2>Latency per stage</h2>\n");
    write_latency_plot(&mut page, summary);

    write_expectations(&mut page, summary);
    page.push_str("</body>\n</html>\n");
    page
}

/// Collects the summary's faults, from injection to recovery, and its rescales, from decision
/// to settling, as windows to shade.
pub fn windows_of(summary: &Summary) -> Vec<Window> {
    let faults = summary.faults.iter().map(|fault| Window {
        kind: WindowKind::Fault,
        label: format!("{} {}", fault.kind, fault.target),
        start_s: fault.injected_at_s,
        end_s: fault.recovered_after_s.map(|after| fault.injected_at_s + after),
    });
    let rescales = summary.rescales.iter().map(|rescale| Window {
        kind: WindowKind::Rescale,
        label: format!("{} {} → {}", rescale.stage, rescale.from, rescale.to),
        start_s: rescale.at_s,
        end_s: Some(rescale.at_s + rescale.settled_after_s),
    });
    faults.chain(rescales).collect()
}

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 64rem;
       padding: 0 1rem; color: #1b1f24; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
.passed { color: #1a7f37; } .failed { color: #cf222e; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.6rem; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; }
svg { width: 100%; height: auto; font-size: 12px; }
svg .axis { stroke: #57606a; stroke-width: 1; }
svg .grid { stroke: #d0d7de; stroke-width: 1; }
svg .series { fill: none; stroke-linejoin: round; }
svg .window.fault { fill: #cf222e; fill-opacity: 0.15; }
svg .window.rescale { fill: #0969da; fill-opacity: 0.12; }
svg text { fill: #1b1f24; }
svg .empty { fill: #57606a; font-style: italic; }
";

/// Colors of the stages, in order; stages beyond the tenth reuse them.
const PALETTE: [&str; 10] = [
    "#0969da", "#e16f24", "#1a7f37", "#cf222e", "#8250df", "#9a6700", "#bf3989", "#57606a",
    "#1b7c83", "#6e7781",
];

/// Colors of the latency percentiles p50, p90, p99 and max.
const PERCENTILE_COLORS: [&str; 4] = ["#54aeff", "#0969da", "#0550ae", "#8250df"];

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;

/// One line of a time plot: `(second, value)` pairs, each value the rate or count during that
/// second.
struct Series<'a> {
    name: &'a str,
    values: Vec<(u64, f64)>,
}

/// The plotting area and the data ranges it maps.
struct Frame {
    x_max: f64,
    y_max: f64,
}

impl Frame {
    fn x(&self, value: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (value / self.x_max).clamp(0.0, 1.0)
    }

    fn y(&self, value: f64) -> f64 {
        HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (value / self.y_max).clamp(0.0, 1.0)
    }
}

fn write_header(page: &mut String, summary: &Summary, result: &str) {
    let _ = writeln!(
        page,
        "<h1>Scenario <code>{}</code> on the {} backend: <span class=\"{result}\">{}</span></h1>",
        escape(&summary.scenario),
        escape(&summary.backend),
        result.to_uppercase()
    );
    page.push_str("<dl>\n");
    for (term, value) in [
        ("run", summary.run_id.as_str()),
        ("started", summary.started_at.as_str()),
        ("commit", summary.commit.as_str()),
        ("host", summary.host.as_str()),
        ("topology", summary.topology.as_str()),
        ("workflow", summary.workflow.as_str()),
    ] {
        let _ = writeln!(page, "<dt>{term}</dt><dd><code>{}</code></dd>", escape(value));
    }
    page.push_str("</dl>\n");

    let events = &summary.events;
    page.push_str(
        "<h2>Events</h2>\n<table id=\"events\">\n<tr><th>expected</th><th>sent</th>\
         <th>received</th><th>lost</th><th>duplicated</th></tr>\n",
    );
    let _ = writeln!(
        page,
        "<tr><td class=\"number\">{}</td><td class=\"number\">{}</td><td class=\"number\">{}</td>\
         <td class=\"number\">{}</td><td class=\"number\">{}</td></tr>\n</table>",
        events.expected, events.sent, events.received, events.lost, events.duplicated
    );

    let phases = &summary.phases_s;
    page.push_str("<h2>Phases</h2>\n<table id=\"phases\">\n<tr>");
    for name in ["provision", "deploy", "stream", "drain", "teardown", "total"] {
        let _ = write!(page, "<th>{name} (s)</th>");
    }
    page.push_str("</tr>\n<tr>");
    for value in [
        phases.provision,
        phases.deploy,
        phases.stream,
        phases.drain,
        phases.teardown,
        phases.total,
    ] {
        let _ = write!(page, "<td class=\"number\">{value:.3}</td>");
    }
    page.push_str("</tr>\n</table>\n");

    page.push_str(
        "<h2>Stages</h2>\n<table id=\"stages\">\n<tr><th>stage</th><th>role</th><th>cluster</th>\
         <th>nodes</th><th>replicas</th><th>events/s</th><th>peak events/s</th></tr>\n",
    );
    for stage in &summary.stages {
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"number\">{}</td>\
             <td class=\"number\">{:.0}</td><td class=\"number\">{:.0}</td></tr>",
            escape(&stage.name),
            escape(&stage.role),
            escape(&stage.cluster),
            escape(&stage.nodes.join(", ")),
            stage.replicas,
            stage.throughput_eps,
            stage.peak_eps
        );
    }
    page.push_str("</table>\n");
}

fn write_windows_table(page: &mut String, windows: &[Window]) {
    if windows.is_empty() {
        return;
    }
    page.push_str(
        "<h2>Faults and rescales</h2>\n<table id=\"windows\">\n<tr><th>kind</th><th>what</th>\
         <th>from (s)</th><th>to (s)</th></tr>\n",
    );
    for window in windows {
        let end = match window.end_s {
            Some(end) => format!("{end:.1}"),
            None => "not reached".to_string(),
        };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td class=\"number\">{:.1}</td><td class=\"number\">{end}</td></tr>",
            window.kind.class(),
            escape(&window.label),
            window.start_s
        );
    }
    page.push_str("</table>\n");
}

/// Draws series whose values hold for one second each, as steps, with the windows shaded.
fn write_step_plot(
    page: &mut String,
    id: &str,
    unit: &str,
    series: &[Series],
    windows: &[Window],
    integer: bool,
) {
    let last_second = series
        .iter()
        .flat_map(|series| series.values.iter().map(|(second, _)| *second as f64))
        .fold(0.0, f64::max);
    let last_window =
        windows.iter().map(|window| window.end_s.unwrap_or(window.start_s)).fold(0.0, f64::max);
    let x_ticks = ticks(last_second.max(last_window).max(1.0), 8, true);
    let y_peak = series
        .iter()
        .flat_map(|series| series.values.iter().map(|(_, value)| *value))
        .fold(0.0, f64::max);
    let y_ticks = ticks(y_peak, 5, integer);
    let frame =
        Frame { x_max: *x_ticks.last().unwrap_or(&1.0), y_max: *y_ticks.last().unwrap_or(&1.0) };

    open_svg(page, id, &format!("{unit} per stage over seconds of streaming"));
    for window in windows {
        let start = frame.x(window.start_s);
        let end = frame.x(window.end_s.unwrap_or(frame.x_max));
        let _ = writeln!(
            page,
            "<rect class=\"window {}\" x=\"{start:.1}\" y=\"{TOP:.1}\" width=\"{:.1}\" height=\"{:.1}\">\
             <title>{}: {}</title></rect>",
            window.kind.class(),
            (end - start).max(2.0),
            HEIGHT - TOP - BOTTOM,
            window.kind.class(),
            escape(&window.label)
        );
        let _ = writeln!(
            page,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>",
            start + 3.0,
            TOP + 12.0,
            escape(&truncate(&window.label, 24))
        );
    }
    write_axes(page, &frame, &x_ticks, &y_ticks, "seconds of streaming", unit);

    let has_points = series.iter().any(|series| !series.values.is_empty());
    if !has_points {
        write_empty_note(page, "no timeline rows: the run streamed for less than one poll");
    }
    let series_count = series.len();
    for (index, series) in series.iter().enumerate() {
        if series.values.is_empty() {
            continue;
        }
        let color = PALETTE[index % PALETTE.len()];
        // Earlier stages draw wider lines, so that stages with equal values show as nested
        // bands instead of hiding one another.
        let stroke_width = 2.0 + 1.2 * (series_count - 1 - index).min(5) as f64;
        let mut path = String::new();
        for (point, (second, value)) in series.values.iter().enumerate() {
            let start = frame.x(*second as f64 - 1.0);
            let end = frame.x(*second as f64);
            let y = frame.y(*value);
            if point == 0 {
                let _ = write!(path, "M{start:.1} {y:.1}");
            } else {
                let _ = write!(path, " V{y:.1}");
            }
            let _ = write!(path, " H{end:.1}");
        }
        let _ = writeln!(
            page,
            "<path class=\"series\" stroke=\"{color}\" stroke-width=\"{stroke_width:.1}\" \
             d=\"{path}\"><title>{}</title></path>",
            escape(series.name)
        );
        for (second, value) in &series.values {
            let _ = writeln!(
                page,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\">\
                 <title>{}, second {second}: {} {unit}</title></circle>",
                frame.x(*second as f64 - 0.5),
                frame.y(*value),
                escape(series.name),
                format_compact(*value)
            );
        }
    }
    let legend: Vec<(&str, &str)> = series
        .iter()
        .enumerate()
        .map(|(index, series)| (series.name, PALETTE[index % PALETTE.len()]))
        .collect();
    write_legend(page, &legend);
    page.push_str("</svg>\n");
}

/// Draws a grouped bar chart of every stage's latency percentiles.
fn write_latency_plot(page: &mut String, summary: &Summary) {
    let stages: Vec<_> = summary.stages.iter().filter(|stage| stage.latency_ms.count > 0).collect();
    let peak = stages.iter().map(|stage| stage.latency_ms.max).fold(0.0, f64::max);
    let y_ticks = ticks(peak, 5, false);
    let frame = Frame { x_max: 1.0, y_max: *y_ticks.last().unwrap_or(&1.0) };

    open_svg(page, "latency-plot", "latency percentiles per stage, in milliseconds");
    write_axes(page, &frame, &[], &y_ticks, "stage", "ms");
    if stages.is_empty() {
        write_empty_note(page, "no stage recorded a latency");
    }
    let labels = ["p50", "p90", "p99", "max"];
    let group_width = (WIDTH - LEFT - RIGHT) / stages.len().max(1) as f64;
    let bar_width = group_width * 0.8 / labels.len() as f64;
    for (index, stage) in stages.iter().enumerate() {
        let latency = &stage.latency_ms;
        let group_start = LEFT + group_width * index as f64 + group_width * 0.1;
        for (bar, (label, value)) in
            labels.iter().zip([latency.p50, latency.p90, latency.p99, latency.max]).enumerate()
        {
            let x = group_start + bar_width * bar as f64;
            let y = frame.y(value);
            let _ = writeln!(
                page,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
                 fill=\"{}\"><title>{} {label}: {value:.1} ms</title></rect>",
                (bar_width - 1.0).max(1.0),
                (HEIGHT - BOTTOM - y).max(0.0),
                PERCENTILE_COLORS[bar],
                escape(&stage.name)
            );
        }
        let _ = writeln!(
            page,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}<title>{}</title></text>",
            LEFT + group_width * (index as f64 + 0.5),
            HEIGHT - BOTTOM + 16.0,
            escape(&truncate(&stage.name, (group_width / 7.0) as usize)),
            escape(&stage.name)
        );
    }
    let legend: Vec<(&str, &str)> =
        labels.iter().copied().zip(PERCENTILE_COLORS.iter().copied()).collect();
    write_legend(page, &legend);
    page.push_str("</svg>\n");
}

fn write_expectations(page: &mut String, summary: &Summary) {
    page.push_str(
        "<h2>Expectations</h2>\n<table id=\"expectations\">\n<tr><th>expectation</th>\
         <th>expected</th><th>actual</th><th>result</th></tr>\n",
    );
    for expectation in &summary.expectations {
        let result = if expectation.passed { "passed" } else { "failed" };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{result}\">{result}</td></tr>",
            escape(&expectation.name),
            escape(&expectation.expected),
            escape(&expectation.actual)
        );
    }
    page.push_str("</table>\n");
    if !summary.errors.is_empty() {
        page.push_str("<h2>Errors</h2>\n<ul id=\"errors\">\n");
        for error in &summary.errors {
            let _ = writeln!(page, "<li class=\"failed\">{}</li>", escape(error));
        }
        page.push_str("</ul>\n");
    }
}

fn open_svg(page: &mut String, id: &str, description: &str) {
    let _ = writeln!(
        page,
        "<svg id=\"{id}\" class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-labelledby=\"{id}-title\">\
         <title id=\"{id}-title\">{}</title>",
        escape(description)
    );
}

/// Draws the axes, the horizontal grid and the tick labels; `x_ticks` may be empty for a
/// category axis that the caller labels itself.
fn write_axes(
    page: &mut String,
    frame: &Frame,
    x_ticks: &[f64],
    y_ticks: &[f64],
    x_title: &str,
    y_title: &str,
) {
    let (left, right, bottom) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM);
    for tick in y_ticks {
        let y = frame.y(*tick);
        let _ = writeln!(
            page,
            "<line class=\"grid\" x1=\"{left}\" y1=\"{y:.1}\" x2=\"{right}\" y2=\"{y:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y + 4.0,
            format_compact(*tick)
        );
    }
    for tick in x_ticks {
        let x = frame.x(*tick);
        let _ = writeln!(
            page,
            "<line class=\"axis\" x1=\"{x:.1}\" y1=\"{bottom}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            bottom + 5.0,
            bottom + 18.0,
            format_compact(*tick)
        );
    }
    let _ = writeln!(
        page,
        "<line class=\"axis\" x1=\"{left}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\"/>\
         <line class=\"axis\" x1=\"{left}\" y1=\"{TOP}\" x2=\"{left}\" y2=\"{bottom}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        (left + right) / 2.0,
        HEIGHT - 12.0,
        escape(x_title),
        (TOP + bottom) / 2.0,
        escape(y_title)
    );
}

fn write_legend(page: &mut String, entries: &[(&str, &str)]) {
    let x = WIDTH - RIGHT + 16.0;
    for (index, (name, color)) in entries.iter().enumerate() {
        let y = TOP + 8.0 + 18.0 * index as f64;
        let _ = writeln!(
            page,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}<title>{}</title></text>",
            y - 10.0,
            x + 18.0,
            y,
            escape(&truncate(name, 20)),
            escape(name)
        );
    }
}

fn write_empty_note(page: &mut String, note: &str) {
    let _ = writeln!(
        page,
        "<text class=\"empty\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        (LEFT + WIDTH - RIGHT) / 2.0,
        (TOP + HEIGHT - BOTTOM) / 2.0,
        escape(note)
    );
}

/// Computes evenly spaced ticks from 0 up to the first tick at or above `max`. The step is 1, 2
/// or 5 times a power of ten, and at least 1 when `integer` is set.
fn ticks(max: f64, target: usize, integer: bool) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 { max } else { 1.0 };
    let raw = max / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude);
    if integer {
        step = step.max(1.0).round();
    }
    let count = (max / step - 1e-9).ceil().max(1.0) as usize;
    (0..=count).map(|index| index as f64 * step).collect()
}

/// Formats a number for an axis or a tooltip: `950`, `1.5`, `12k`, `1.2M`.
fn format_compact(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = if scaled.fract() == 0.0 || scaled.abs() >= 100.0 {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{suffix}")
}

fn truncate(text: &str, max_chars: usize) -> String {
    let max_chars = max_chars.max(4);
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut short: String = text.chars().take(max_chars - 1).collect();
    short.push('…');
    short
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(character),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::{ExpectationResult, Phases, StageSummary};
    use crate::faults::{FaultRecord, RescaleRecord};
    use crate::results::{EventCounts, LatencyMs};

    fn stage(name: &str, p99: f64) -> StageSummary {
        StageSummary {
            name: name.to_string(),
            role: "processor".to_string(),
            class: format!("org.example.{name}"),
            cluster: "jlab/farm".to_string(),
            nodes: vec!["farm-01".to_string()],
            replicas: 2,
            events_in: 1000,
            events_out: 1000,
            throughput_eps: 500.0,
            peak_eps: 600.0,
            latency_ms: LatencyMs {
                p50: p99 / 2.0,
                p90: p99 * 0.9,
                p99,
                max: p99 * 1.1,
                // A source measures no latency: its histogram is empty.
                count: if p99 > 0.0 { 1000 } else { 0 },
            },
        }
    }

    fn summary() -> Summary {
        Summary {
            passed: false,
            run_id: "20260101-000000-abcdef".to_string(),
            backend: "process".to_string(),
            commit: "0123456".to_string(),
            host: "ci".to_string(),
            started_at: "2026-01-01T00:00:00Z".to_string(),
            scenario: "smoke".to_string(),
            topology: "three-sites.yaml".to_string(),
            workflow: "pipeline.yaml".to_string(),
            events: EventCounts {
                expected: 1000,
                sent: 1000,
                received: 999,
                lost: 1,
                duplicated: 0,
            },
            stages: vec![stage("Reader<&>", 0.0), stage("Filter", 12.0)],
            phases_s: Phases { total: 3.0, ..Phases::default() },
            expectations: vec![ExpectationResult {
                name: "events lost".to_string(),
                passed: false,
                expected: "at most 0".to_string(),
                actual: "1".to_string(),
            }],
            faults: Vec::new(),
            rescales: Vec::new(),
            errors: vec!["sink <b>stopped</b>".to_string()],
        }
    }

    fn rows() -> Vec<TimelineRow> {
        (1..=3)
            .map(|second| TimelineRow {
                second,
                throughput: vec![400.0, 300.0 + second as f64],
                replicas: vec![1, if second < 3 { 2 } else { 3 }],
            })
            .collect()
    }

    fn names() -> Vec<String> {
        vec!["Reader<&>".to_string(), "Filter".to_string()]
    }

    #[test]
    fn report_has_three_plots() {
        let page = render(&summary(), &rows(), &names());
        for id in ["throughput-plot", "replicas-plot", "latency-plot"] {
            assert!(page.contains(&format!("<svg id=\"{id}\"")), "missing {id}");
        }
        assert_eq!(page.matches("<path class=\"series\"").count(), 4, "two stages, two plots");
    }

    #[test]
    fn report_is_self_contained() {
        let page = render(&summary(), &rows(), &names());
        let without_namespace = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!page.contains("<script"), "no script");
        assert!(!without_namespace.contains("http:"), "no external resource");
        assert!(!without_namespace.contains("https:"), "no external resource");
        assert!(!page.contains("src="), "no embedded resource");
        assert!(!page.contains("@import"), "no imported stylesheet");
        assert!(!page.contains("url("), "no stylesheet resource");
    }

    #[test]
    fn report_escapes_names_and_errors() {
        let page = render(&summary(), &rows(), &names());
        assert!(page.contains("Reader&lt;&amp;&gt;"));
        assert!(!page.contains("Reader<&>"));
        assert!(page.contains("sink &lt;b&gt;stopped&lt;/b&gt;"));
    }

    #[test]
    fn latency_plot_skips_stages_without_samples() {
        let page = render(&summary(), &rows(), &names());
        let latency = &page[page.find("<svg id=\"latency-plot\"").unwrap()..];
        let latency = &latency[..latency.find("</svg>").unwrap()];
        assert_eq!(latency.matches("class=\"bar\"").count(), 4, "one stage, four percentiles");
        assert!(latency.contains("Filter p99: 12.0 ms"));
    }

    #[test]
    fn windows_are_shaded_on_time_plots() {
        let windows = [
            Window {
                kind: WindowKind::Fault,
                label: "kill nid-001".to_string(),
                start_s: 1.0,
                end_s: Some(2.5),
            },
            Window {
                kind: WindowKind::Rescale,
                label: "Filter 2 → 3".to_string(),
                start_s: 2.0,
                end_s: None,
            },
        ];
        let page = render_with_windows(&summary(), &rows(), &names(), &windows);
        assert_eq!(page.matches("<rect class=\"window fault\"").count(), 2);
        assert_eq!(page.matches("<rect class=\"window rescale\"").count(), 2);
        assert!(page.contains("<table id=\"windows\">"));
        assert!(page.contains("not reached"));
    }

    #[test]
    fn windows_come_from_summary_records() {
        let mut summary = summary();
        summary.faults.push(FaultRecord {
            kind: "kill".to_string(),
            target: "Filter/0".to_string(),
            injected_at_s: 1.0,
            detected_after_s: Some(0.2),
            recovered_after_s: None,
            events_replayed: 10,
            dip_depth: 1.0,
            dip_length_s: 2.0,
        });
        summary.rescales.push(RescaleRecord {
            stage: "Filter".to_string(),
            from: 2,
            to: 3,
            at_s: 0.5,
            settled_after_s: 0.75,
            steps: 1,
            automatic: false,
        });
        let windows = windows_of(&summary);
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0].kind, WindowKind::Fault);
        assert_eq!(windows[0].label, "kill Filter/0");
        assert_eq!(windows[0].end_s, None, "never recovered");
        assert_eq!(windows[1].kind, WindowKind::Rescale);
        assert_eq!(windows[1].label, "Filter 2 → 3");
        assert_eq!(windows[1].end_s, Some(1.25));
        let page = render(&summary, &rows(), &names());
        assert_eq!(page.matches("<rect class=\"window fault\"").count(), 2);
    }

    #[test]
    fn summary_without_windows_has_none() {
        assert!(windows_of(&summary()).is_empty());
        let page = render(&summary(), &rows(), &names());
        assert!(!page.contains("class=\"window"));
    }

    #[test]
    fn empty_timeline_still_renders_plots() {
        let page = render(&summary(), &[], &names());
        assert!(page.contains("<svg id=\"throughput-plot\""));
        assert!(page.contains("no timeline rows"));
    }

    #[test]
    fn ticks_cover_maximum() {
        // (maximum, target count, integer steps, expected last tick, expected step)
        let cases = [
            (20000.0, 5, false, 20000.0, 5000.0),
            (66001.0, 5, false, 80000.0, 20000.0),
            (3.0, 5, true, 3.0, 1.0),
            (0.0, 5, false, 1.0, 0.2),
            (7.0, 8, true, 7.0, 1.0),
        ];
        for (max, target, integer, last, step) in cases {
            let ticks = ticks(max, target, integer);
            let actual_last = *ticks.last().unwrap();
            assert!((actual_last - last).abs() < 1e-9, "max {max}: {ticks:?}");
            assert!((ticks[1] - ticks[0] - step).abs() < 1e-9, "max {max}: {ticks:?}");
        }
    }

    #[test]
    fn compact_numbers_read_short() {
        let cases =
            [(950.0, "950"), (1.5, "1.5"), (12000.0, "12k"), (66001.0, "66k"), (1.2e6, "1.2M")];
        for (value, expected) in cases {
            assert_eq!(format_compact(value), expected, "{value}");
        }
    }
}
