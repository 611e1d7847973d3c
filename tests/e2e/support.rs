//! Helpers shared by the end-to-end tests.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The project root, where the fixture paths are relative to.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testbed sits in the project root")
        .to_path_buf()
}

/// `testbed run` from the project root, writing into `output`.
pub fn testbed_run(output: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_testbed"));
    command
        .current_dir(project_root())
        .arg("run")
        .arg("--quiet")
        .arg(format!("--output={}", output.display()))
        .env("TESTBED_MOCK_BIN", env!("CARGO_BIN_EXE_mock-ersap"))
        .timeout(std::time::Duration::from_secs(240));
    command
}

/// The shared folder of real ERSAP inputs next to the project. Under `CI=true` a missing
/// folder fails the test; elsewhere the caller skips with a printed note.
pub fn shared_folder(name: &str) -> Option<PathBuf> {
    let folder = project_root().join("..").join("shared").join(name);
    if folder.is_dir() {
        return Some(folder);
    }
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("{} is missing; CI must provide ../shared next to the project", folder.display());
    }
    eprintln!("note: {} is missing; skipping", folder.display());
    None
}

/// Lists the names of the entries of `folder`.
pub fn file_names(folder: &Path) -> Vec<String> {
    std::fs::read_dir(folder)
        .unwrap_or_else(|error| panic!("{}: {error}", folder.display()))
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Reads `<output>/latest/<file>` as JSON.
pub fn latest_json(output: &Path, file: &str) -> serde_json::Value {
    let path = output.join("latest").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}
