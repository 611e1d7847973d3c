//! Scenario files: what to stream and which expectations a run must meet.
//!
//! ```yaml
//! name: kill-a-processor
//! stream: { events: 40000, event_size: 1024, rate: 10000 }
//! timeout_s: 60
//! heartbeat_ms: 200
//! actions:
//!   - at_s: 1.5
//!     kill_instance: { stage: DCReconstruction, replica: 0 }
//! expect: { max_lost: 0, max_duplicates: 5000, max_recovery_s: 2 }
//! ```
//!
//! Each action happens `at_s` seconds after streaming starts, or `after` a condition
//! (`{sink_events: N}`), and does exactly one of: `scale`, `kill_instance`, `kill_node`,
//! `pause_node`, `resume_node`, `partition`, `heal`, `lose_cluster`.

use std::path::Path;

use orchestrator::InputError;
use orchestrator::path;
use orchestrator::yaml::{Document, NodeValue, Segment};
use serde::Deserialize;

/// A scenario, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub stream: Stream,
    /// Limit on the streaming phase, in seconds; the run fails when it is reached.
    pub timeout_s: f64,
    /// Interval of the orchestrator's heartbeats, in milliseconds.
    pub heartbeat_ms: u64,
    /// Let the autoscaler resize processing stages while streaming.
    pub autoscale: bool,
    pub actions: Vec<Action>,
    pub expect: Expectations,
}

/// One step of a scenario's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub when: When,
    pub kind: ActionKind,
    /// Line of the action in the scenario file.
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum When {
    /// Seconds after streaming started.
    At(f64),
    /// Once the sink stage has received this many events.
    SinkEvents(u64),
}

/// What an action does; names refer to the workflow's stages and the topology's nodes and
/// clusters (`site/cluster`), checked against both before the run starts.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionKind {
    Scale { stage: String, change: ScaleChange },
    KillInstance { stage: String, replica: u32 },
    KillNode(String),
    PauseNode(String),
    ResumeNode(String),
    Partition(String),
    Heal(String),
    LoseCluster(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleChange {
    To(u32),
    By(i64),
}

impl ActionKind {
    pub fn name(&self) -> &'static str {
        match self {
            ActionKind::Scale { .. } => "scale",
            ActionKind::KillInstance { .. } => "kill_instance",
            ActionKind::KillNode(_) => "kill_node",
            ActionKind::PauseNode(_) => "pause_node",
            ActionKind::ResumeNode(_) => "resume_node",
            ActionKind::Partition(_) => "partition",
            ActionKind::Heal(_) => "heal",
            ActionKind::LoseCluster(_) => "lose_cluster",
        }
    }

    /// The stage, node or cluster the action is about.
    pub fn target(&self) -> String {
        match self {
            ActionKind::Scale { stage, .. } => stage.clone(),
            ActionKind::KillInstance { stage, replica } => format!("{stage}/{replica}"),
            ActionKind::KillNode(name)
            | ActionKind::PauseNode(name)
            | ActionKind::ResumeNode(name)
            | ActionKind::Partition(name)
            | ActionKind::Heal(name)
            | ActionKind::LoseCluster(name) => name.clone(),
        }
    }

    /// True for actions that break something, whose recovery is measured.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            ActionKind::KillInstance { .. }
                | ActionKind::KillNode(_)
                | ActionKind::PauseNode(_)
                | ActionKind::Partition(_)
                | ActionKind::LoseCluster(_)
        )
    }
}

/// Action keys a scenario accepts, for error messages.
pub const ACTION_NAMES: &str =
    "scale, kill_instance, kill_node, pause_node, resume_node, partition, heal, lose_cluster";

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
    /// Longest time from a fault to throughput back within 10% of its level before it, in
    /// seconds.
    pub max_recovery_s: Option<f64>,
    /// Most steps a rescale may take to settle.
    pub max_rescale_steps: Option<u32>,
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
    #[serde(default = "default_heartbeat_ms")]
    heartbeat_ms: u64,
    #[serde(default)]
    autoscale: bool,
    /// Read by hand from the document by `read_actions`, so that errors name the line of
    /// the action; here it is only accepted.
    #[serde(default, rename = "actions")]
    _actions: serde::de::IgnoredAny,
}

fn default_heartbeat_ms() -> u64 {
    200
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
        if !(10..=60_000).contains(&file.heartbeat_ms) {
            return Err(document
                .error(
                    &path!["heartbeat_ms"],
                    format!("heartbeat of {} ms is out of range", file.heartbeat_ms),
                )
                .with_hint("use 10 to 60000 milliseconds"));
        }
        let actions = read_actions(document)?;
        Ok(Scenario {
            name: file.name,
            stream: file.stream,
            timeout_s: file.timeout_s,
            heartbeat_ms: file.heartbeat_ms,
            autoscale: file.autoscale,
            actions,
            expect: file.expect,
        })
    }

    /// Checks every name an action uses against the workflow and the topology.
    pub fn check_names(
        &self,
        file: &Path,
        workflow: &orchestrator::model::Workflow,
        topology: &orchestrator::model::Topology,
    ) -> Result<(), InputError> {
        use orchestrator::control::Role;
        for action in &self.actions {
            let error = |message: String, hint: String| {
                InputError::new(file, action.line, message).with_hint(hint)
            };
            let node_names = || {
                topology
                    .nodes()
                    .iter()
                    .map(|node| node.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let cluster_names = || {
                topology
                    .clusters()
                    .iter()
                    .map(|cluster| topology.cluster_path(cluster.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            match &action.kind {
                ActionKind::Scale { stage, .. } | ActionKind::KillInstance { stage, .. } => {
                    let processors: Vec<&str> = workflow
                        .stages()
                        .iter()
                        .filter(|candidate| candidate.role == Role::Processor)
                        .map(|candidate| candidate.name.as_str())
                        .collect();
                    match workflow.stage_by_name(stage) {
                        None => {
                            return Err(error(
                                format!("unknown stage `{stage}` in `{}`", action.kind.name()),
                                format!("known stages: {}", workflow.stage_names().join(", ")),
                            ));
                        }
                        Some(found) if found.role != Role::Processor => {
                            return Err(error(
                                format!(
                                    "stage `{stage}` is the {}; `{}` applies to processing stages",
                                    found.role,
                                    action.kind.name()
                                ),
                                format!("processing stages: {}", processors.join(", ")),
                            ));
                        }
                        Some(_) => {}
                    }
                }
                ActionKind::KillNode(node)
                | ActionKind::PauseNode(node)
                | ActionKind::ResumeNode(node) => {
                    if topology.node_by_name(node).is_none() {
                        return Err(error(
                            format!("unknown node `{node}`"),
                            format!("known nodes: {}", node_names()),
                        ));
                    }
                }
                ActionKind::Partition(cluster)
                | ActionKind::Heal(cluster)
                | ActionKind::LoseCluster(cluster) => {
                    if topology.cluster_by_name(cluster).is_none() {
                        return Err(error(
                            format!("unknown cluster `{cluster}`"),
                            format!("known clusters: {}", cluster_names()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn read_actions(document: &Document) -> Result<Vec<Action>, InputError> {
    let Some(list) = document.root.get("actions") else { return Ok(Vec::new()) };
    let items = match &list.value {
        NodeValue::Seq(items) => items,
        NodeValue::Null => return Ok(Vec::new()),
        _ => {
            return Err(document
                .error(&path!["actions"], "`actions` must be a list")
                .with_hint("start each action with `- at_s: <seconds>` on its own line"));
        }
    };
    let mut actions = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let at = path!["actions", index];
        let NodeValue::Map(entries) = &item.value else {
            return Err(document
                .error(&at, "an action must be a mapping")
                .with_hint(format!("write `at_s: <seconds>` and one of: {ACTION_NAMES}")));
        };
        let mut when = None;
        let mut kind = None;
        for (key, value) in entries {
            let key_at: Vec<Segment> =
                at.iter().cloned().chain([Segment::Key(key.clone())]).collect();
            let json = value.to_json();
            let invalid = |expected: &str| {
                document.error(&key_at, format!("invalid `{key}`: expected {expected}"))
            };
            match key.as_str() {
                "at_s" => {
                    let seconds = json.as_f64().filter(|s| s.is_finite() && *s >= 0.0);
                    when = Some(When::At(seconds.ok_or_else(|| invalid("seconds, 0 or more"))?));
                }
                "after" => {
                    let events = json.get("sink_events").and_then(serde_json::Value::as_u64);
                    when = Some(When::SinkEvents(events.ok_or_else(|| {
                        invalid("`{sink_events: N}`")
                            .with_hint("the only condition is `sink_events`")
                    })?));
                }
                "scale" => {
                    let stage = json.get("stage").and_then(|v| v.as_str()).map(str::to_string);
                    let to = json.get("to").and_then(serde_json::Value::as_u64);
                    let by = json.get("by").and_then(serde_json::Value::as_i64);
                    let change = match (to, by) {
                        (Some(to), None) if to > 0 => ScaleChange::To(to as u32),
                        (None, Some(by)) if by != 0 => ScaleChange::By(by),
                        _ => {
                            return Err(invalid(
                                "`{stage: NAME, to: N}` or `{stage: NAME, by: +-K}`",
                            )
                            .with_hint("`to` is at least 1; `by` is not 0"));
                        }
                    };
                    let stage = stage.ok_or_else(|| invalid("a `stage:` name"))?;
                    kind = Some(ActionKind::Scale { stage, change });
                }
                "kill_instance" => {
                    let stage = json.get("stage").and_then(|v| v.as_str()).map(str::to_string);
                    let replica =
                        json.get("replica").and_then(serde_json::Value::as_u64).unwrap_or(0);
                    let stage = stage.ok_or_else(|| invalid("`{stage: NAME, replica: N}`"))?;
                    kind = Some(ActionKind::KillInstance { stage, replica: replica as u32 });
                }
                "kill_node" | "pause_node" | "resume_node" | "partition" | "heal"
                | "lose_cluster" => {
                    let name = json.as_str().map(str::to_string).ok_or_else(|| {
                        invalid(if key.ends_with("node") {
                            "a node name"
                        } else {
                            "a cluster as `site/cluster`"
                        })
                    })?;
                    kind = Some(match key.as_str() {
                        "kill_node" => ActionKind::KillNode(name),
                        "pause_node" => ActionKind::PauseNode(name),
                        "resume_node" => ActionKind::ResumeNode(name),
                        "partition" => ActionKind::Partition(name),
                        "heal" => ActionKind::Heal(name),
                        _ => ActionKind::LoseCluster(name),
                    });
                }
                other => {
                    return Err(document
                        .error(&key_at, format!("unknown action field `{other}`"))
                        .with_hint(format!(
                            "valid fields: at_s, after, and one of: {ACTION_NAMES}"
                        )));
                }
            }
        }
        let kind = kind.ok_or_else(|| {
            document
                .error(&at, "the action does nothing")
                .with_hint(format!("add one of: {ACTION_NAMES}"))
        })?;
        let when = when.ok_or_else(|| {
            document.error(&at, "the action has no time").with_hint(
                "add `at_s: <seconds after streaming starts>` or `after: {sink_events: N}`",
            )
        })?;
        actions.push(Action { when, kind, line: document.line(&at) });
    }
    Ok(actions)
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
    fn every_action_kind_parses() {
        let scenario = parse(
            "name: x\nstream: {events: 10}\nactions:\n\
             - {at_s: 1, scale: {stage: P, to: 3}}\n\
             - {at_s: 1, scale: {stage: P, by: -1}}\n\
             - {after: {sink_events: 5}, kill_instance: {stage: P, replica: 1}}\n\
             - {at_s: 2, kill_node: n1}\n\
             - {at_s: 2, pause_node: n1}\n\
             - {at_s: 3, resume_node: n1}\n\
             - {at_s: 2, partition: a/c}\n\
             - {at_s: 3, heal: a/c}\n\
             - {at_s: 4, lose_cluster: a/c}\n",
        )
        .unwrap();
        let names: Vec<&str> = scenario.actions.iter().map(|a| a.kind.name()).collect();
        assert_eq!(
            names,
            [
                "scale",
                "scale",
                "kill_instance",
                "kill_node",
                "pause_node",
                "resume_node",
                "partition",
                "heal",
                "lose_cluster"
            ]
        );
        assert_eq!(
            scenario.actions[0].kind,
            ActionKind::Scale { stage: "P".into(), change: ScaleChange::To(3) }
        );
        assert_eq!(
            scenario.actions[1].kind,
            ActionKind::Scale { stage: "P".into(), change: ScaleChange::By(-1) }
        );
        assert_eq!(scenario.actions[2].when, When::SinkEvents(5));
        assert_eq!(scenario.actions[3].line, 7);
        assert_eq!(scenario.heartbeat_ms, 200);
    }

    #[test]
    fn unknown_action_names_line_and_choices() {
        let error = parse("name: x\nstream: {events: 10}\nactions:\n  - at_s: 1\n    reboot: n1\n")
            .unwrap_err();
        assert_eq!(error.line, 5);
        assert!(error.message.contains("unknown action field `reboot`"), "{}", error.message);
        assert!(error.hint.unwrap().contains("kill_node"));
    }

    #[test]
    fn action_without_time_rejected() {
        let error =
            parse("name: x\nstream: {events: 10}\nactions:\n  - kill_node: n1\n").unwrap_err();
        assert_eq!(error.line, 4);
        assert!(error.message.contains("no time"), "{}", error.message);
    }

    #[test]
    fn scale_to_zero_rejected() {
        let error = parse(
            "name: x\nstream: {events: 10}\nactions:\n  - at_s: 1\n    scale: {stage: P, to: 0}\n",
        )
        .unwrap_err();
        assert_eq!(error.line, 5);
    }

    #[test]
    fn zero_events_rejected() {
        let error = parse("name: x\nstream:\n  events: 0\n").unwrap_err();
        assert_eq!(error.line, 3);
    }
}
