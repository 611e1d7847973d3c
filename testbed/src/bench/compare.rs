//! `testbed bench compare`: a candidate `benchmarks.json` against a baseline, metric by metric.
//!
//! Both files use github-action-benchmark's format, `[{name, unit, value}]`, where an entry may
//! also carry `values: [..]`, one number per repetition. Each side of a metric is a sample:
//! `values` when present, otherwise `[value]`. A metric's verdict is decided in three steps:
//!
//! 1. The center of each side is the median of its sample, and the change is
//!    `(candidate - baseline) / |baseline|`.
//! 2. The change is beyond noise only when the candidate's median lies outside the baseline's
//!    `[min, max]` and the baseline's median lies outside the candidate's `[min, max]`. With one
//!    value per side the ranges are single points, so any difference passes this step and the
//!    threshold alone decides.
//! 3. A change beyond noise and beyond the relative threshold is a regression or an
//!    improvement, depending on the unit. Rates (`events/s`, `MB/s`, any `*/s`) and `ratio`
//!    are better higher. Durations (`s`, `ms`, `us`, `ns`) and counts (`events`, `bytes`) are
//!    better lower. Metrics with other units are shown but not judged.
//!
//! A baseline of exactly 0 (no lost events, say) makes any worsening a regression, since no
//! relative threshold can be applied to it.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default relative threshold, in percent.
pub const DEFAULT_THRESHOLD_PERCENT: f64 = 10.0;

/// One entry of a `benchmarks.json` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkEntry {
    pub name: String,
    pub unit: String,
    /// The reported value; the median of `values` when repetitions were recorded.
    pub value: f64,
    /// One value per repetition, when the benchmark was repeated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<f64>>,
}

impl BenchmarkEntry {
    /// Builds an entry from repeated measurements: `value` is their median and `values` keeps
    /// them all.
    pub fn from_repetitions(
        name: impl Into<String>,
        unit: impl Into<String>,
        values: &[f64],
    ) -> Self {
        BenchmarkEntry {
            name: name.into(),
            unit: unit.into(),
            value: median(values),
            values: (values.len() > 1).then(|| values.to_vec()),
        }
    }

    /// Returns the repetitions, or the single value when there are none.
    fn sample(&self) -> Vec<f64> {
        match &self.values {
            Some(values) if !values.is_empty() => values.clone(),
            _ => vec![self.value],
        }
    }
}

/// Errors reading a benchmarks file; every one is invalid input (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{} is not a benchmarks file ({source}); expected a JSON array of {{name, unit, value}}",
        path.display()
    )]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{}: metric `{name}` {problem}", path.display())]
    InvalidEntry { path: PathBuf, name: String, problem: String },
    #[error("threshold {0} is invalid; give a percentage of 0 or more, such as 10")]
    InvalidThreshold(f64),
}

/// Direction in which a metric improves, given by its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    HigherIsBetter,
    LowerIsBetter,
    /// A unit this module does not know; the metric is shown but never judged.
    Unknown,
}

impl Direction {
    pub fn from_unit(unit: &str) -> Direction {
        let unit = unit.trim();
        if unit.ends_with("/s") || unit == "ratio" {
            return Direction::HigherIsBetter;
        }
        match unit {
            "s" | "ms" | "us" | "µs" | "ns" | "events" | "bytes" | "B" | "MB" => {
                Direction::LowerIsBetter
            }
            _ => Direction::Unknown,
        }
    }
}

/// The verdict on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Worse by more than the threshold and beyond the spread of both sides.
    Regression,
    /// Better by more than the threshold and beyond the spread of both sides.
    Improvement,
    /// Beyond the threshold, but inside the spread of one side.
    WithinNoise,
    /// A change no larger than the threshold.
    WithinThreshold,
    /// The unit does not say which way is better.
    NotJudged,
    /// In the baseline only.
    Missing,
    /// In the candidate only.
    New,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Regression => "regression",
            Verdict::Improvement => "improvement",
            Verdict::WithinNoise => "within noise",
            Verdict::WithinThreshold => "within threshold",
            Verdict::NotJudged => "not judged (unknown unit)",
            Verdict::Missing => "missing in candidate",
            Verdict::New => "new",
        }
    }
}

/// Summary statistics of one side of a metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Side {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub repetitions: usize,
}

impl Side {
    fn of(entry: &BenchmarkEntry) -> Side {
        let sample = entry.sample();
        Side {
            median: median(&sample),
            min: sample.iter().copied().fold(f64::INFINITY, f64::min),
            max: sample.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            repetitions: sample.len(),
        }
    }

    fn contains(&self, value: f64) -> bool {
        self.min <= value && value <= self.max
    }
}

/// The comparison of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricComparison {
    pub name: String,
    pub unit: String,
    pub baseline: Option<Side>,
    pub candidate: Option<Side>,
    /// Relative change of the medians, in percent; infinite when the baseline is 0 and the
    /// candidate is not.
    pub change_percent: Option<f64>,
    pub verdict: Verdict,
}

/// The comparison of two files.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub threshold_percent: f64,
    pub metrics: Vec<MetricComparison>,
}

impl Comparison {
    pub fn regressions(&self) -> impl Iterator<Item = &MetricComparison> {
        self.metrics.iter().filter(|metric| metric.verdict == Verdict::Regression)
    }

    fn count(&self, verdict: Verdict) -> usize {
        self.metrics.iter().filter(|metric| metric.verdict == verdict).count()
    }

    /// Renders the comparison as Markdown: a headline, a table and the method in one line.
    pub fn to_markdown(&self) -> String {
        let mut text = String::new();
        let regressions = self.count(Verdict::Regression);
        let headline = if regressions == 0 {
            "no regression".to_string()
        } else {
            format!("**{regressions} {}**", plural(regressions, "regression", "regressions"))
        };
        let improvements = self.count(Verdict::Improvement);
        let _ = writeln!(
            text,
            "### Benchmark comparison: {headline}, {improvements} {} over {} metrics\n",
            plural(improvements, "improvement", "improvements"),
            self.metrics.len()
        );
        text.push_str("| metric | unit | baseline | candidate | change | verdict |\n");
        text.push_str("|---|---|--:|--:|--:|---|\n");
        for metric in &self.metrics {
            let verdict = match metric.verdict {
                Verdict::Regression => format!("❌ {}", metric.verdict.label()),
                Verdict::Improvement => format!("✅ {}", metric.verdict.label()),
                _ => metric.verdict.label().to_string(),
            };
            let _ = writeln!(
                text,
                "| `{}` | {} | {} | {} | {} | {verdict} |",
                metric.name.replace('|', "\\|"),
                metric.unit.replace('|', "\\|"),
                format_side(metric.baseline),
                format_side(metric.candidate),
                format_change(metric.change_percent),
            );
        }
        let _ = writeln!(
            text,
            "\nThreshold {}%. Values are medians, with min–max over n repetitions when there \
             are several; a change counts when it exceeds the threshold and each median lies \
             outside the other side's min–max.",
            format_number(self.threshold_percent)
        );
        text
    }
}

/// Reads a `benchmarks.json` file and checks every entry.
pub fn read_file(path: &Path) -> Result<Vec<BenchmarkEntry>, CompareError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| CompareError::Read { path: path.to_path_buf(), source })?;
    let entries: Vec<BenchmarkEntry> = serde_json::from_str(&text)
        .map_err(|source| CompareError::Parse { path: path.to_path_buf(), source })?;
    let invalid = |name: &str, problem: &str| CompareError::InvalidEntry {
        path: path.to_path_buf(),
        name: name.to_string(),
        problem: problem.to_string(),
    };
    let mut names = HashSet::new();
    for entry in &entries {
        if !names.insert(entry.name.as_str()) {
            return Err(invalid(&entry.name, "appears twice; give each metric a unique name"));
        }
        if !entry.value.is_finite() {
            return Err(invalid(&entry.name, "has a value that is not a finite number"));
        }
        if let Some(values) = &entry.values {
            if values.is_empty() {
                return Err(invalid(&entry.name, "has an empty `values` list; omit it instead"));
            }
            if values.iter().any(|value| !value.is_finite()) {
                return Err(invalid(&entry.name, "has a repetition that is not a finite number"));
            }
        }
    }
    Ok(entries)
}

/// Writes entries as a pretty-printed `benchmarks.json`.
pub fn write_file(path: &Path, entries: &[BenchmarkEntry]) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(entries).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// Compares every metric of `candidate` with the metric of the same name in `baseline`.
/// `threshold_percent` is the relative change, in percent, that a change must exceed to count.
pub fn compare(
    baseline: &[BenchmarkEntry],
    candidate: &[BenchmarkEntry],
    threshold_percent: f64,
) -> Result<Comparison, CompareError> {
    if !threshold_percent.is_finite() || threshold_percent < 0.0 {
        return Err(CompareError::InvalidThreshold(threshold_percent));
    }
    let mut metrics = Vec::new();
    for base in baseline {
        let metric = match candidate.iter().find(|entry| entry.name == base.name) {
            Some(cand) => compare_metric(base, cand, threshold_percent),
            None => MetricComparison {
                name: base.name.clone(),
                unit: base.unit.clone(),
                baseline: Some(Side::of(base)),
                candidate: None,
                change_percent: None,
                verdict: Verdict::Missing,
            },
        };
        metrics.push(metric);
    }
    for cand in candidate {
        if !baseline.iter().any(|entry| entry.name == cand.name) {
            metrics.push(MetricComparison {
                name: cand.name.clone(),
                unit: cand.unit.clone(),
                baseline: None,
                candidate: Some(Side::of(cand)),
                change_percent: None,
                verdict: Verdict::New,
            });
        }
    }
    Ok(Comparison { threshold_percent, metrics })
}

fn compare_metric(
    base: &BenchmarkEntry,
    cand: &BenchmarkEntry,
    threshold_percent: f64,
) -> MetricComparison {
    let baseline = Side::of(base);
    let candidate = Side::of(cand);
    let difference = candidate.median - baseline.median;
    let change_percent = if baseline.median != 0.0 {
        difference / baseline.median.abs() * 100.0
    } else if difference == 0.0 {
        0.0
    } else {
        f64::INFINITY.copysign(difference)
    };
    // A unit change (ms in one file, s in the other) would make the numbers meaningless.
    let direction =
        if base.unit == cand.unit { Direction::from_unit(&cand.unit) } else { Direction::Unknown };
    let beyond_noise = !baseline.contains(candidate.median) && !candidate.contains(baseline.median);
    let beyond_threshold = change_percent.abs() > threshold_percent;
    let verdict = if direction == Direction::Unknown {
        Verdict::NotJudged
    } else if !beyond_threshold {
        Verdict::WithinThreshold
    } else if !beyond_noise {
        Verdict::WithinNoise
    } else {
        let worse = match direction {
            Direction::HigherIsBetter => difference < 0.0,
            _ => difference > 0.0,
        };
        if worse { Verdict::Regression } else { Verdict::Improvement }
    };
    let unit = if base.unit == cand.unit {
        cand.unit.clone()
    } else {
        format!("{} → {}", base.unit, cand.unit)
    };
    MetricComparison {
        name: cand.name.clone(),
        unit,
        baseline: Some(baseline),
        candidate: Some(candidate),
        change_percent: Some(change_percent),
        verdict,
    }
}

/// Returns the median of a non-empty sample, the mean of the two middle values for an even
/// count.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[middle],
        _ => (sorted[middle - 1] + sorted[middle]) / 2.0,
    }
}

fn format_side(side: Option<Side>) -> String {
    match side {
        None => "–".to_string(),
        Some(side) if side.repetitions > 1 => format!(
            "{} ({}–{}, n={})",
            format_number(side.median),
            format_number(side.min),
            format_number(side.max),
            side.repetitions
        ),
        Some(side) => format_number(side.median),
    }
}

fn format_change(change_percent: Option<f64>) -> String {
    match change_percent {
        None => "–".to_string(),
        Some(change) if change.is_infinite() => {
            if change > 0.0 {
                "up from 0".to_string()
            } else {
                "down from 0".to_string()
            }
        }
        Some(change) => format!("{change:+.1}%"),
    }
}

/// Formats a number with about four significant digits, without an exponent or trailing
/// zeros: `66001`, `990`, `12.35`, `0.1234`.
fn format_number(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let decimals = (3 - value.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn plural<'a>(count: usize, singular: &'a str, plural: &'a str) -> &'a str {
    if count == 1 { singular } else { plural }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, unit: &str, values: &[f64]) -> BenchmarkEntry {
        BenchmarkEntry::from_repetitions(name, unit, values)
    }

    fn verdict_of(base: BenchmarkEntry, cand: BenchmarkEntry) -> Verdict {
        let comparison = compare(&[base], &[cand], DEFAULT_THRESHOLD_PERCENT).unwrap();
        comparison.metrics[0].verdict
    }

    #[test]
    fn direction_follows_unit() {
        let cases = [
            ("events/s", Direction::HigherIsBetter),
            ("MB/s", Direction::HigherIsBetter),
            ("ratio", Direction::HigherIsBetter),
            ("s", Direction::LowerIsBetter),
            ("ms", Direction::LowerIsBetter),
            ("events", Direction::LowerIsBetter),
            ("furlongs", Direction::Unknown),
        ];
        for (unit, expected) in cases {
            assert_eq!(Direction::from_unit(unit), expected, "unit {unit}");
        }
    }

    #[test]
    fn single_values_use_threshold_alone() {
        let cases = [
            // (unit, baseline, candidate, verdict)
            ("events/s", 1000.0, 850.0, Verdict::Regression),
            ("events/s", 1000.0, 950.0, Verdict::WithinThreshold),
            ("events/s", 1000.0, 1200.0, Verdict::Improvement),
            ("ms", 10.0, 12.0, Verdict::Regression),
            ("ms", 10.0, 8.0, Verdict::Improvement),
            ("s", 10.0, 11.0, Verdict::WithinThreshold),
            ("events", 0.0, 3.0, Verdict::Regression),
            ("events", 0.0, 0.0, Verdict::WithinThreshold),
            ("furlongs", 1.0, 100.0, Verdict::NotJudged),
        ];
        for (unit, base, cand, expected) in cases {
            let verdict = verdict_of(entry("m", unit, &[base]), entry("m", unit, &[cand]));
            assert_eq!(verdict, expected, "{unit}: {base} -> {cand}");
        }
    }

    #[test]
    fn overlapping_spreads_are_noise() {
        // The candidate's median is 20% lower, but the baseline's own repetitions reach it.
        let base = entry("m", "events/s", &[700.0, 1000.0, 1100.0]);
        let cand = entry("m", "events/s", &[790.0, 800.0, 810.0]);
        assert_eq!(verdict_of(base, cand), Verdict::WithinNoise);
    }

    #[test]
    fn separated_spreads_are_regression() {
        let base = entry("m", "events/s", &[980.0, 1000.0, 1020.0]);
        let cand = entry("m", "events/s", &[790.0, 800.0, 810.0]);
        assert_eq!(verdict_of(base, cand), Verdict::Regression);
    }

    #[test]
    fn median_ignores_one_outlier() {
        let base = entry("m", "ms", &[10.0, 10.0, 10.2]);
        let cand = entry("m", "ms", &[10.1, 10.1, 90.0]);
        assert_eq!(verdict_of(base, cand), Verdict::WithinThreshold);
    }

    #[test]
    fn unit_change_is_not_judged() {
        let verdict = verdict_of(entry("m", "s", &[1.0]), entry("m", "ms", &[1000.0]));
        assert_eq!(verdict, Verdict::NotJudged);
    }

    #[test]
    fn missing_and_new_metrics_are_listed() {
        let baseline = [entry("old", "s", &[1.0]), entry("both", "s", &[1.0])];
        let candidate = [entry("both", "s", &[1.0]), entry("added", "s", &[1.0])];
        let comparison = compare(&baseline, &candidate, 10.0).unwrap();
        let verdicts: Vec<(&str, Verdict)> = comparison
            .metrics
            .iter()
            .map(|metric| (metric.name.as_str(), metric.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("old", Verdict::Missing),
                ("both", Verdict::WithinThreshold),
                ("added", Verdict::New)
            ]
        );
        assert_eq!(comparison.regressions().count(), 0);
    }

    #[test]
    fn negative_threshold_is_rejected() {
        let result = compare(&[], &[], -1.0);
        assert!(matches!(result, Err(CompareError::InvalidThreshold(_))));
    }

    #[test]
    fn median_of_even_sample_averages_middle() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[5.0]), 5.0);
    }

    #[test]
    fn markdown_table_lists_every_metric() {
        let baseline = [entry("chain", "events/s", &[1000.0, 1010.0, 990.0])];
        let candidate = [entry("chain", "events/s", &[500.0, 505.0, 495.0])];
        let markdown = compare(&baseline, &candidate, 10.0).unwrap().to_markdown();
        assert!(markdown.contains("**1 regression**"), "{markdown}");
        assert!(markdown.contains("| `chain` | events/s | 1000 (990–1010, n=3) |"), "{markdown}");
        assert!(markdown.contains("| 500 (495–505, n=3) |"), "{markdown}");
        assert!(markdown.contains("Threshold 10%."), "{markdown}");
        assert!(markdown.contains("-50.0%"), "{markdown}");
        assert!(markdown.contains("❌ regression"), "{markdown}");
    }

    #[test]
    fn numbers_keep_four_significant_digits() {
        let cases = [(66000.78, "66001"), (990.0, "990"), (12.345, "12.35"), (0.12345, "0.1235")];
        for (value, expected) in cases {
            assert_eq!(format_number(value), expected, "{value}");
        }
        assert_eq!(format_number(0.0), "0");
    }

    #[test]
    fn from_repetitions_keeps_single_value_plain() {
        let single = BenchmarkEntry::from_repetitions("m", "s", &[2.0]);
        assert_eq!(single.values, None);
        let repeated = BenchmarkEntry::from_repetitions("m", "s", &[3.0, 1.0, 2.0]);
        assert_eq!(repeated.value, 2.0);
        assert_eq!(repeated.values, Some(vec![3.0, 1.0, 2.0]));
    }
}
