//! Invalid inputs exit with code 2 and name the file, the line and a fix.

use std::path::Path;

use crate::support::testbed_run;

struct Case {
    description: &'static str,
    flag: &'static str,
    text: &'static str,
    /// Expected `file:line` suffix and message fragments.
    line: usize,
    fragments: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        description: "broken YAML",
        flag: "--workflow",
        text: "io-services:\n  reader: {class: R, name: Reader\n  writer: {class: W, name: W}\n",
        line: 3,
        fragments: &["invalid YAML"],
    },
    Case {
        description: "workflow without io-services",
        flag: "--workflow",
        text: "services:\n  - class: P\n    name: Proc\n",
        line: 1,
        fragments: &["missing `io-services`", "hint"],
    },
    Case {
        description: "workflow without writer",
        flag: "--workflow",
        text: "io-services:\n  reader:\n    class: R\n    name: Reader\n",
        line: 2,
        fragments: &["has no `writer`"],
    },
    Case {
        description: "stage at unknown site",
        flag: "--workflow",
        text: "io-services:\n  reader: {class: R, name: Reader}\n  writer: {class: W, name: Writer}\ntestbed:\n  stages:\n    Reader:\n      site: cern\n",
        line: 7,
        fragments: &["unknown site `cern`", "jlab, nersc, ornl"],
    },
    Case {
        description: "testbed section names unknown stage",
        flag: "--workflow",
        text: "io-services:\n  reader: {class: R, name: Reader}\n  writer: {class: W, name: Writer}\ntestbed:\n  stages:\n    Readr: {replicas: 2}\n",
        line: 6,
        fragments: &["unknown stage `Readr`", "Reader, Writer"],
    },
    Case {
        description: "link to unknown site",
        flag: "--topology",
        text: "name: t\nsites:\n  - name: jlab\n    clusters:\n      - name: farm\n        nodes: [{name: n1, cores: 2}]\nlinks:\n  - between: [jlab, nersk]\n",
        line: 8,
        fragments: &["unknown site `nersk`", "known sites: jlab"],
    },
    Case {
        description: "node with text for cores",
        flag: "--topology",
        text: "name: t\nsites:\n  - name: jlab\n    clusters:\n      - name: farm\n        nodes:\n          - name: n1\n            cores: many\n",
        line: 8,
        fragments: &["cores"],
    },
    Case {
        description: "scenario with unknown expectation",
        flag: "--scenario",
        text: "name: s\nstream:\n  events: 10\nexpect:\n  lost: 0\n",
        line: 5,
        fragments: &["unknown field `lost`", "max_lost"],
    },
    Case {
        description: "workflow that does not fit",
        flag: "--workflow",
        text: "io-services:\n  reader: {class: R, name: Reader}\n  writer: {class: W, name: Writer}\ntestbed:\n  stages:\n    Reader: {site: jlab, replicas: 9}\n",
        line: 0,
        fragments: &["stage `Reader` does not fit", "more cores are missing"],
    },
];

#[test]
fn invalid_inputs_exit_2_with_line_and_fix() {
    let folder = tempfile::tempdir().unwrap();
    for (index, case) in CASES.iter().enumerate() {
        let file = folder.path().join(format!("case-{index}.yaml"));
        std::fs::write(&file, case.text).unwrap();
        let output = testbed_run(&folder.path().join("out"))
            .arg(format!("{}={}", case.flag, file.display()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{}: {stderr}", case.description);
        let location = if case.line > 0 {
            format!("{}:{}:", file.display(), case.line)
        } else {
            format!("{}:", file.display())
        };
        assert!(
            stderr.contains(&location),
            "{}: expected `{location}` in:\n{stderr}",
            case.description
        );
        for fragment in case.fragments {
            assert!(
                stderr.contains(fragment),
                "{}: expected `{fragment}` in:\n{stderr}",
                case.description
            );
        }
    }
}

#[test]
fn missing_file_exits_2_naming_it() {
    let folder = tempfile::tempdir().unwrap();
    let missing = Path::new("fixtures/no-such-topology.yaml");
    let output = testbed_run(folder.path())
        .arg(format!("--topology={}", missing.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no-such-topology.yaml"), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
}
