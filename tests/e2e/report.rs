//! `report.html` of a real run, loaded in headless Chromium: the plots are in the DOM and the
//! page logs no console message. Chromium comes from Debian's `chromium` package (`.ci/run`
//! installs it); under `CI=true` a missing browser fails these tests instead of skipping them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::testbed_run;

/// Browser binaries tried in order, after `TESTBED_CHROMIUM` if it is set.
const BROWSERS: [&str; 4] =
    ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"];

#[test]
fn report_shows_plots_in_chromium() {
    let Some(browser) = find_browser() else { return };
    let output = tempfile::tempdir().unwrap();
    testbed_run(output.path()).arg("--events=3000").assert().success();
    let report = output.path().join("latest").join("report.html");
    assert!(report.is_file(), "{} is missing", report.display());

    let profile = tempfile::tempdir().unwrap();
    let page = load(&browser, &report, profile.path());
    assert!(page.console.is_empty(), "console messages: {:#?}", page.console);
    for id in ["throughput-plot", "replicas-plot", "latency-plot"] {
        assert!(page.dom.contains(&format!("<svg id=\"{id}\"")), "no {id} in the DOM");
    }
    // Five stages in the smoke workflow: one line each on both time plots.
    assert_eq!(page.dom.matches("class=\"series\"").count(), 10, "lines on the time plots");
    // The reader has no latency; the four other stages have four percentile bars each.
    assert_eq!(page.dom.matches("class=\"bar\"").count(), 16, "bars on the latency plot");
    assert!(page.dom.contains("HipoWriter"), "stage names are shown");
}

#[test]
fn report_screenshot_is_not_blank() {
    let Some(browser) = find_browser() else { return };
    let output = tempfile::tempdir().unwrap();
    testbed_run(output.path()).arg("--events=2000").assert().success();
    let report = output.path().join("latest").join("report.html");

    let profile = tempfile::tempdir().unwrap();
    let screenshot = output.path().join("report.png");
    assert_cmd::Command::new(&browser)
        .args(headless_flags(profile.path()))
        .arg("--hide-scrollbars")
        .arg("--window-size=1100,2400")
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(file_url(&report))
        .timeout(Duration::from_secs(90))
        .assert()
        .success();
    let png = std::fs::read(&screenshot).expect("chromium wrote no screenshot");
    assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
    // A blank 1100 x 2400 page compresses to a few kilobytes; text and plots take far more.
    assert!(png.len() > 40_000, "screenshot is only {} bytes", png.len());
}

#[test]
fn console_check_catches_script_errors() {
    let Some(browser) = find_browser() else { return };
    let folder = tempfile::tempdir().unwrap();
    let page = folder.path().join("broken.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><head><link rel=\"icon\" href=\"data:,\"></head><body>\
         <script>console.error(\"deliberate\"); missingFunction();</script></body></html>",
    )
    .unwrap();

    let profile = tempfile::tempdir().unwrap();
    let loaded = load(&browser, &page, profile.path());
    assert_eq!(loaded.console.len(), 2, "{:#?}", loaded.console);
    assert!(loaded.console[0].contains("deliberate"), "{:#?}", loaded.console);
    assert!(loaded.console[1].contains("missingFunction"), "{:#?}", loaded.console);
}

/// What Chromium returned for a page: its serialized DOM and its console messages.
struct LoadedPage {
    dom: String,
    console: Vec<String>,
}

/// Loads a file in headless Chromium with logging on stderr, where every console message
/// appears as a `CONSOLE` line. The browser's own D-Bus and GPU warnings are ignored.
fn load(browser: &Path, page: &Path, profile: &Path) -> LoadedPage {
    let assert = assert_cmd::Command::new(browser)
        .args(headless_flags(profile))
        .arg("--enable-logging=stderr")
        .arg("--v=0")
        .arg("--dump-dom")
        .arg(file_url(page))
        .timeout(Duration::from_secs(90))
        .assert()
        .success();
    let output = assert.get_output();
    let stderr = String::from_utf8_lossy(&output.stderr);
    LoadedPage {
        dom: String::from_utf8_lossy(&output.stdout).into_owned(),
        console: stderr
            .lines()
            .filter(|line| line.contains(":CONSOLE") || line.contains("Failed to load resource"))
            .map(str::to_string)
            .collect(),
    }
}

fn headless_flags(profile: &Path) -> Vec<String> {
    vec![
        "--headless".to_string(),
        "--disable-gpu".to_string(),
        // The tests run as root in CI containers, where Chromium's sandbox cannot start.
        "--no-sandbox".to_string(),
        "--no-first-run".to_string(),
        format!("--user-data-dir={}", profile.display()),
    ]
}

fn file_url(path: &Path) -> String {
    let absolute = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", absolute.display())
}

/// Finds a Chromium binary. Without one, the test fails under `CI=true` and is skipped with a
/// printed note elsewhere.
fn find_browser() -> Option<PathBuf> {
    let candidates = std::env::var_os("TESTBED_CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(BROWSERS.iter().filter_map(|name| on_path(name)));
    for candidate in candidates {
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    let message = "no Chromium found (tried TESTBED_CHROMIUM, chromium, chromium-browser, \
                   google-chrome); install it with `apt-get install -y chromium`";
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("{message}");
    }
    eprintln!("note: {message}; skipping");
    None
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|folder| folder.join(name)).find(|file| file.is_file())
}
