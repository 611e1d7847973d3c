//! Real ERSAP application files load into the workflow model and run with mock engines.

use orchestrator::model::Workflow;

use crate::support::{latest_json, shared_folder, testbed_run};

fn real_files() -> Vec<std::path::PathBuf> {
    let Some(folder) = shared_folder("ersap-examples") else { return Vec::new() };
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", folder.display());
    files
}

#[test]
fn real_application_files_load() {
    for file in real_files() {
        let workflow = Workflow::load(&file).unwrap_or_else(|error| panic!("{error}"));
        assert!(workflow.stages().len() >= 2, "{}", file.display());
        assert_eq!(workflow.source().role, orchestrator::control::Role::Source);
        assert_eq!(workflow.sink().role, orchestrator::control::Role::Sink);
    }
}

#[test]
fn real_application_files_run_with_mock_engines() {
    for file in real_files() {
        let output = tempfile::tempdir().unwrap();
        let assert = testbed_run(output.path())
            .arg(format!("--workflow={}", file.display()))
            .arg("--events=500")
            .assert();
        let result = assert.get_output().clone();
        assert!(
            result.status.success(),
            "{}: {}{}",
            file.display(),
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        let summary = latest_json(output.path(), "summary.json");
        assert_eq!(summary["events"]["lost"], 0, "{}", file.display());
        assert_eq!(summary["events"]["received"], 500, "{}", file.display());
    }
}

#[test]
fn chains_and_configuration_are_read() {
    let Some(folder) = shared_folder("ersap-examples") else { return };
    let workflow = Workflow::load(&folder.join("services-chains-and-configuration.yaml")).unwrap();
    let names = workflow.stage_names();
    assert_eq!(
        names,
        [
            "CustomReader",
            "ECReconstruction",
            "SeedFinder",
            "HeaderFilter",
            "FTOFReconstruction",
            "CustomWriter"
        ]
    );
    assert_eq!(workflow.monitoring.len(), 2);
    let ec = workflow.stage_by_name("ECReconstruction").unwrap();
    assert_eq!(ec.config["log"], true, "own section");
    assert_eq!(ec.config["kalman"], true, "global section merged in");
    let writer = workflow.sink();
    assert_eq!(writer.lang, orchestrator::model::Lang::Cpp);
    assert_eq!(writer.config["compression"], 2);
    let filter = workflow.stage_by_name("HeaderFilter").unwrap();
    assert_eq!(filter.config["max_hits"], 29);
}

#[test]
fn configuration_addresses_are_recorded_not_used() {
    let Some(folder) = shared_folder("ersap-examples") else { return };
    let workflow = Workflow::load(&folder.join("ejfat-pipeline.yaml")).unwrap();
    let packetizer = workflow.stage_by_name("EjfatPacketizeService").unwrap();
    assert_eq!(packetizer.config["port"], 19522);
    assert!(packetizer.config["host"].is_string());
}
