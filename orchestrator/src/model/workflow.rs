//! Workflow: the stages of an ERSAP application file (`services.yaml`) and how the testbed
//! runs them.
//!
//! The ERSAP part is read as ERSAP reads it: `io-services` (reader and writer, required),
//! `services` (a list, or `data-processing` and `monitoring` chains), `configuration`
//! (`global`, `io-services`, `services`), `mime-types`, and top-level `container` and
//! `lang` defaults. An optional top-level `testbed:` section, which ERSAP ignores, sets the
//! mock cost, replicas and preferred site of each stage.
//!
//! The data path is reader, the data-processing services in order, then writer. Services of
//! a `monitoring` chain are kept in [`Workflow::monitoring`] but not deployed.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::control::Role;
use crate::error::InputError;
use crate::path;
use crate::yaml::{Document, Node, NodeValue, Segment};

/// Index of a stage in its workflow; 0 is the source, the last is the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageId(pub usize);

/// Language of an ERSAP service, which names the DPE that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// How a mock engine spends its modelled cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CostMode {
    /// Spin on the CPU, as a real reconstruction engine would.
    Burn,
    /// Sleep, for engines that wait on I/O or to run many instances on few cores.
    Sleep,
}

impl CostMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CostMode::Burn => "burn",
            CostMode::Sleep => "sleep",
        }
    }
}

/// Mock processing cost of one stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Nanoseconds per input byte, the unit of JLab's synthetic stages.
    pub ns_per_byte: f64,
    pub mode: CostMode,
    /// Worker threads of each replica (ERSAP's service pool size).
    pub threads: NonZeroU32,
    /// Size of the event a stage sends on, in bytes; `None` keeps the input size.
    pub output_size: Option<u32>,
}

/// Cost of a stage that the `testbed:` section does not describe.
pub const DEFAULT_COST_NS_PER_BYTE: f64 = 1.0;

/// Where a value came from, for error messages about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl Origin {
    pub fn error(&self, message: impl Into<String>) -> InputError {
        InputError::new(&self.file, self.line, message)
    }
}

/// One stage of the data path and the service that plays it.
#[derive(Debug, Clone)]
pub struct Stage {
    pub id: StageId,
    pub role: Role,
    /// ERSAP engine name, unique in the workflow.
    pub name: String,
    /// ERSAP engine class; the mock engine records it.
    pub class: String,
    pub container: String,
    pub lang: Lang,
    pub replicas: NonZeroU32,
    /// Lower and upper bounds for rescaling.
    pub min_replicas: NonZeroU32,
    pub max_replicas: NonZeroU32,
    /// Cores one replica needs on its node.
    pub cores: NonZeroU32,
    /// Site name the stage must run at, checked against the topology at placement.
    pub site: Option<String>,
    pub cost: Cost,
    /// ERSAP configuration of the service: `configuration.global` merged with its own
    /// section. Recorded and reported, never used to open a connection.
    pub config: serde_json::Value,
    /// Line of the stage in the application file.
    pub origin: Origin,
    /// Line of `site:` in the `testbed:` section, when given.
    pub site_origin: Option<Origin>,
}

/// A monitoring service that the file lists but the testbed does not deploy.
#[derive(Debug, Clone)]
pub struct MonitoringService {
    pub name: String,
    pub class: String,
    pub lang: Lang,
}

/// A workflow: a linear data path from one source stage to one sink stage.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub file: PathBuf,
    stages: Vec<Stage>,
    pub monitoring: Vec<MonitoringService>,
    pub mime_types: Vec<String>,
}

impl Workflow {
    /// Reads an ERSAP application file, with its optional `testbed:` section.
    pub fn load(file: &Path) -> Result<Workflow, InputError> {
        Workflow::from_document(&Document::read(file)?)
    }

    /// Builds the workflow from a parsed application file.
    pub fn from_document(document: &Document) -> Result<Workflow, InputError> {
        let root = &document.root;
        if !matches!(root.value, NodeValue::Map(_)) {
            return Err(document
                .error(&[], "an ERSAP application file must be a mapping")
                .with_hint("start with `io-services:`, then `services:`"));
        }
        let default_container = match root.get("container") {
            Some(node) => scalar_text(document, node, &path!["container"])?,
            None => std::env::var("USER").unwrap_or_else(|_| "ersap".to_string()),
        };
        let default_lang = match root.get("lang") {
            Some(node) => parse_lang(document, node, &path!["lang"])?,
            None => Lang::Java,
        };
        let defaults = ServiceDefaults { container: default_container, lang: default_lang };

        let Some(io) = root.get("io-services") else {
            return Err(document
                .error(&[], "missing `io-services`")
                .with_hint("add `io-services:` with a `reader:` and a `writer:`, each with `class:` and `name:`"));
        };
        let mut services = Vec::new();
        for (key, role) in [("reader", Role::Source), ("writer", Role::Sink)] {
            let at = path!["io-services", key];
            let Some(node) = io.get(key) else {
                return Err(document
                    .error(&path!["io-services"], format!("`io-services` has no `{key}`"))
                    .with_hint(format!("add `{key}:` with `class:` and `name:`")));
            };
            services.push((role, read_service(document, node, &at, &defaults)?));
        }
        let writer = services.pop().expect("writer was just pushed");

        let mut monitoring = Vec::new();
        if let Some(node) = root.get("services") {
            match &node.value {
                NodeValue::Seq(_) => {
                    for (at, item) in list_items(document, node, &path!["services"])? {
                        services
                            .push((Role::Processor, read_service(document, item, &at, &defaults)?));
                    }
                }
                NodeValue::Map(entries) => {
                    for (key, _) in entries {
                        if key != "data-processing" && key != "monitoring" {
                            return Err(document
                                .error(
                                    &path!["services", key.as_str()],
                                    format!("unknown service group `{key}`"),
                                )
                                .with_hint("valid groups: data-processing, monitoring"));
                        }
                    }
                    if let Some(chain) = chain_of(document, node, "data-processing")? {
                        for (at, item) in chain {
                            services.push((
                                Role::Processor,
                                read_service(document, item, &at, &defaults)?,
                            ));
                        }
                    }
                    if let Some(chain) = chain_of(document, node, "monitoring")? {
                        for (at, item) in chain {
                            let service = read_service(document, item, &at, &defaults)?;
                            monitoring.push(MonitoringService {
                                name: service.name,
                                class: service.class,
                                lang: service.lang,
                            });
                        }
                    }
                }
                NodeValue::Null => {}
                _ => {
                    return Err(document
                        .error(
                            &path!["services"],
                            "`services` must be a list or a mapping of chains",
                        )
                        .with_hint("write a list of `- class: ...` / `name: ...` entries"));
                }
            }
        }
        services.push(writer);

        let mime_types = match root.get("mime-types") {
            None => Vec::new(),
            Some(node) => list_items(document, node, &path!["mime-types"])?
                .into_iter()
                .map(|(at, item)| scalar_text(document, item, &at))
                .collect::<Result<_, _>>()?,
        };

        let configuration = Configuration::read(document)?;
        let testbed = match root.get("testbed") {
            Some(_) => document.deserialize_at::<TestbedSection>(&path!["testbed"])?,
            None => TestbedSection::default(),
        };

        let mut stages: Vec<Stage> = Vec::new();
        for (index, (role, service)) in services.into_iter().enumerate() {
            if let Some(other) = stages.iter().find(|stage| stage.name == service.name) {
                return Err(document
                    .error(&service.at, format!("service name `{}` is used twice", service.name))
                    .with_hint(format!(
                        "the first use is on line {}; every engine name must be unique",
                        other.origin.line
                    )));
            }
            let config = configuration.for_service(role, &service.name);
            stages.push(Stage {
                id: StageId(index),
                role,
                name: service.name,
                class: service.class,
                container: service.container,
                lang: service.lang,
                replicas: NonZeroU32::MIN,
                min_replicas: NonZeroU32::MIN,
                max_replicas: NonZeroU32::MIN,
                cores: NonZeroU32::MIN,
                site: None,
                cost: Cost {
                    ns_per_byte: DEFAULT_COST_NS_PER_BYTE,
                    mode: CostMode::Burn,
                    threads: NonZeroU32::MIN,
                    output_size: None,
                },
                config,
                origin: Origin { file: document.file.clone(), line: document.line(&service.at) },
                site_origin: None,
            });
        }
        testbed.apply(document, &mut stages)?;

        let name = document
            .file
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "workflow".to_string());
        Ok(Workflow { name, file: document.file.clone(), stages, monitoring, mime_types })
    }

    /// Stages in data-path order: the source first, the sink last.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    pub fn stage(&self, id: StageId) -> &Stage {
        &self.stages[id.0]
    }

    pub fn stage_by_name(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|stage| stage.name == name)
    }

    pub fn stage_names(&self) -> Vec<&str> {
        self.stages.iter().map(|stage| stage.name.as_str()).collect()
    }

    pub fn source(&self) -> &Stage {
        &self.stages[0]
    }

    pub fn sink(&self) -> &Stage {
        self.stages.last().expect("a workflow has a reader and a writer")
    }

    /// Returns the stage after `id` on the data path, if any.
    pub fn next(&self, id: StageId) -> Option<&Stage> {
        self.stages.get(id.0 + 1)
    }

    /// Forgets a stage's site, so that placement may put it anywhere; used when its site has
    /// no room left after a failure.
    pub fn clear_site(&mut self, id: StageId) {
        self.stages[id.0].site = None;
    }

    /// Sets a stage's replica count without checking its bounds, for placement trials.
    pub fn set_replicas_unchecked(&mut self, id: StageId, replicas: NonZeroU32) {
        self.stages[id.0].replicas = replicas;
    }

    /// Sets a stage's replica count, within its bounds.
    pub fn set_replicas(&mut self, id: StageId, replicas: NonZeroU32) -> Result<(), String> {
        let stage = &mut self.stages[id.0];
        if replicas < stage.min_replicas || replicas > stage.max_replicas {
            return Err(format!(
                "stage `{}` allows {} to {} replicas, not {replicas}",
                stage.name, stage.min_replicas, stage.max_replicas
            ));
        }
        stage.replicas = replicas;
        Ok(())
    }
}

struct ServiceDefaults {
    container: String,
    lang: Lang,
}

struct ServiceEntry {
    at: Vec<Segment>,
    name: String,
    class: String,
    container: String,
    lang: Lang,
}

fn read_service(
    document: &Document,
    node: &Node,
    at: &[Segment],
    defaults: &ServiceDefaults,
) -> Result<ServiceEntry, InputError> {
    let NodeValue::Map(entries) = &node.value else {
        return Err(document
            .error(at, "a service must be a mapping with `class:` and `name:`")
            .with_hint("write `class: org.example.Engine` and `name: Engine` on separate lines"));
    };
    for (key, _) in entries {
        if !["class", "name", "container", "lang"].contains(&key.as_str()) {
            let mut key_at = at.to_vec();
            key_at.push(Segment::Key(key.clone()));
            return Err(document
                .error(&key_at, format!("unknown service field `{key}`"))
                .with_hint("valid fields: class, name, container, lang"));
        }
    }
    let field = |key: &str| -> Result<String, InputError> {
        let mut key_at = at.to_vec();
        key_at.push(Segment::Key(key.to_string()));
        match node.get(key) {
            Some(value) if !value.is_null() => scalar_text(document, value, &key_at),
            _ => Err(document
                .error(at, format!("service has no `{key}`"))
                .with_hint(format!("add `{key}:` to this service"))),
        }
    };
    let class = field("class")?;
    let name = field("name")?;
    let mut name_at = at.to_vec();
    name_at.push("name".into());
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Err(document
            .error(&name_at, format!("invalid engine name `{name}`"))
            .with_hint("ERSAP engine names contain only letters, digits and `_`"));
    }
    let container = match node.get("container") {
        Some(value) if !value.is_null() => {
            let mut container_at = at.to_vec();
            container_at.push("container".into());
            let container = scalar_text(document, value, &container_at)?;
            if container.is_empty()
                || !container.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            {
                return Err(document
                    .error(&container_at, format!("invalid container name `{container}`"))
                    .with_hint("ERSAP container names contain only letters, digits, `_` and `-`"));
            }
            container
        }
        _ => defaults.container.clone(),
    };
    let lang = match node.get("lang") {
        Some(value) if !value.is_null() => {
            let mut lang_at = at.to_vec();
            lang_at.push("lang".into());
            parse_lang(document, value, &lang_at)?
        }
        _ => defaults.lang,
    };
    Ok(ServiceEntry { at: at.to_vec(), name, class, container, lang })
}

fn parse_lang(document: &Document, node: &Node, at: &[Segment]) -> Result<Lang, InputError> {
    match scalar_text(document, node, at)?.as_str() {
        "java" => Ok(Lang::Java),
        "cpp" => Ok(Lang::Cpp),
        "python" => Ok(Lang::Python),
        other => Err(document
            .error(at, format!("unknown language `{other}`"))
            .with_hint("valid languages: java, cpp, python")),
    }
}

fn scalar_text(document: &Document, node: &Node, at: &[Segment]) -> Result<String, InputError> {
    match &node.value {
        NodeValue::String(text) => Ok(text.clone()),
        NodeValue::Int(value) => Ok(value.to_string()),
        NodeValue::Float(value) => Ok(value.to_string()),
        NodeValue::Bool(value) => Ok(value.to_string()),
        _ => Err(document
            .error(at, "expected a single value here, not a list, a mapping or nothing")
            .with_hint("write the value on the same line as its key")),
    }
}

/// A node and its path in the document.
type LocatedNode<'a> = (Vec<Segment>, &'a Node);

fn list_items<'a>(
    document: &Document,
    node: &'a Node,
    at: &[Segment],
) -> Result<Vec<LocatedNode<'a>>, InputError> {
    match &node.value {
        NodeValue::Seq(items) => Ok(items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let mut item_at = at.to_vec();
                item_at.push(Segment::Index(index));
                (item_at, item)
            })
            .collect()),
        NodeValue::Null => Ok(Vec::new()),
        _ => Err(document
            .error(at, format!("`{}` must be a list", crate::yaml::display_path(at)))
            .with_hint("start each entry with `- `")),
    }
}

fn chain_of<'a>(
    document: &Document,
    services: &'a Node,
    group: &str,
) -> Result<Option<Vec<LocatedNode<'a>>>, InputError> {
    let Some(node) = services.get(group) else { return Ok(None) };
    let Some(chain) = node.get("chain") else {
        return Err(document
            .error(&path!["services", group], format!("`{group}` has no `chain`"))
            .with_hint("write `chain:` followed by a list of services"));
    };
    list_items(document, chain, &path!["services", group, "chain"]).map(Some)
}

/// The `configuration` section, kept as JSON.
struct Configuration {
    global: serde_json::Map<String, serde_json::Value>,
    reader: serde_json::Map<String, serde_json::Value>,
    writer: serde_json::Map<String, serde_json::Value>,
    services: serde_json::Map<String, serde_json::Value>,
}

impl Configuration {
    fn read(document: &Document) -> Result<Configuration, InputError> {
        let section =
            |at: &[Segment]| -> Result<serde_json::Map<String, serde_json::Value>, InputError> {
                match document.node(at).map(Node::to_json) {
                    None | Some(serde_json::Value::Null) => Ok(serde_json::Map::new()),
                    Some(serde_json::Value::Object(map)) => Ok(map),
                    Some(_) => Err(document
                        .error(at, format!("`{}` must be a mapping", crate::yaml::display_path(at)))
                        .with_hint("write `key: value` entries under it")),
                }
            };
        Ok(Configuration {
            global: section(&path!["configuration", "global"])?,
            reader: section(&path!["configuration", "io-services", "reader"])?,
            writer: section(&path!["configuration", "io-services", "writer"])?,
            services: section(&path!["configuration", "services"])?,
        })
    }

    /// The global section with the service's own section on top, as ERSAP merges them.
    fn for_service(&self, role: Role, name: &str) -> serde_json::Value {
        let mut merged = self.global.clone();
        let own = match role {
            Role::Source => Some(&self.reader),
            Role::Sink => Some(&self.writer),
            Role::Processor => self.services.get(name).and_then(serde_json::Value::as_object),
        };
        if let Some(own) = own {
            for (key, value) in own {
                merged.insert(key.clone(), value.clone());
            }
        }
        serde_json::Value::Object(merged)
    }
}

/// The optional `testbed:` section of an application file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestbedSection {
    #[serde(default)]
    defaults: StageSettings,
    #[serde(default)]
    stages: BTreeMap<String, StageSettings>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageSettings {
    replicas: Option<u32>,
    min_replicas: Option<u32>,
    max_replicas: Option<u32>,
    cores: Option<u32>,
    site: Option<String>,
    cost_ns_per_byte: Option<f64>,
    mode: Option<CostMode>,
    threads: Option<u32>,
    output_size: Option<u32>,
}

impl TestbedSection {
    fn apply(&self, document: &Document, stages: &mut [Stage]) -> Result<(), InputError> {
        for name in self.stages.keys() {
            if !stages.iter().any(|stage| &stage.name == name) {
                let known: Vec<&str> = stages.iter().map(|stage| stage.name.as_str()).collect();
                return Err(document
                    .error(
                        &path!["testbed", "stages", name.as_str()],
                        format!("unknown stage `{name}`"),
                    )
                    .with_hint(format!("known stages: {}", known.join(", "))));
            }
        }
        for stage in stages.iter_mut() {
            let own = self.stages.get(&stage.name);
            let at = match own {
                Some(_) => path!["testbed", "stages", stage.name.as_str()].to_vec(),
                None => path!["testbed", "defaults"].to_vec(),
            };
            let pick = |get: &dyn Fn(&StageSettings) -> Option<u32>| -> Option<u32> {
                own.and_then(get).or_else(|| get(&self.defaults))
            };
            let positive = |value: Option<u32>, key: &str, default: NonZeroU32| match value {
                None => Ok(default),
                Some(value) => NonZeroU32::new(value).ok_or_else(|| {
                    let mut key_at = at.clone();
                    key_at.push(Segment::Key(key.to_string()));
                    document
                        .error(&key_at, format!("`{key}` of stage `{}` is 0", stage.name))
                        .with_hint(format!("`{key}` is at least 1"))
                }),
            };
            let replicas = positive(pick(&|s| s.replicas), "replicas", NonZeroU32::MIN)?;
            let min_replicas =
                positive(pick(&|s| s.min_replicas), "min_replicas", NonZeroU32::MIN)?;
            let max_default = replicas.max(NonZeroU32::new(16).expect("16 is not 0"));
            let max_replicas = positive(pick(&|s| s.max_replicas), "max_replicas", max_default)?;
            if min_replicas > replicas || replicas > max_replicas {
                return Err(document
                    .error(&at, format!(
                        "stage `{}` has {replicas} replicas outside its bounds {min_replicas}..={max_replicas}",
                        stage.name
                    ))
                    .with_hint("keep min_replicas <= replicas <= max_replicas"));
            }
            stage.replicas = replicas;
            stage.min_replicas = min_replicas;
            stage.max_replicas = max_replicas;
            stage.cores = positive(pick(&|s| s.cores), "cores", NonZeroU32::MIN)?;
            stage.cost.threads = positive(pick(&|s| s.threads), "threads", NonZeroU32::MIN)?;
            stage.cost.output_size = pick(&|s| s.output_size);
            if let Some(cost) =
                own.and_then(|s| s.cost_ns_per_byte).or(self.defaults.cost_ns_per_byte)
            {
                if !cost.is_finite() || cost < 0.0 {
                    let mut key_at = at.clone();
                    key_at.push("cost_ns_per_byte".into());
                    return Err(document
                        .error(
                            &key_at,
                            format!("invalid cost {cost} ns/byte for stage `{}`", stage.name),
                        )
                        .with_hint("use a number of nanoseconds per byte, 0 or more"));
                }
                stage.cost.ns_per_byte = cost;
            }
            if let Some(mode) = own.and_then(|s| s.mode).or(self.defaults.mode) {
                stage.cost.mode = mode;
            }
            if let Some(site) = own.and_then(|s| s.site.clone()).or(self.defaults.site.clone()) {
                let mut site_at = at.clone();
                site_at.push("site".into());
                stage.site_origin =
                    Some(Origin { file: document.file.clone(), line: document.line(&site_at) });
                stage.site = Some(site);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn load(text: &str) -> Result<Workflow, InputError> {
        Workflow::from_document(&Document::parse(Path::new("w.yaml"), text)?)
    }

    const MINIMAL: &str =
        "io-services:\n  reader: {class: R, name: Reader}\n  writer: {class: W, name: Writer}\n";

    #[test]
    fn minimal_file_has_source_and_sink() {
        let workflow = load(MINIMAL).unwrap();
        assert_eq!(workflow.stage_names(), ["Reader", "Writer"]);
        assert_eq!(workflow.source().role, Role::Source);
        assert_eq!(workflow.sink().role, Role::Sink);
        assert_eq!(workflow.source().cost.ns_per_byte, DEFAULT_COST_NS_PER_BYTE);
    }

    #[test]
    fn repeated_service_key_keeps_last_value() {
        let text =
            format!("{MINIMAL}services:\n  - class: First\n    name: Proc\n    class: Second\n");
        let workflow = load(&text).unwrap();
        assert_eq!(workflow.stage_by_name("Proc").unwrap().class, "Second");
    }

    #[test]
    fn duplicate_engine_name_names_both_lines() {
        let text = format!("{MINIMAL}services:\n  - {{class: A, name: Reader}}\n");
        let error = load(&text).unwrap_err();
        assert_eq!(error.line, 5);
        assert!(error.message.contains("used twice"), "{}", error.message);
        assert!(error.hint.unwrap().contains("line 2"));
    }

    #[test]
    fn invalid_engine_name_rejected() {
        let text = format!("{MINIMAL}services:\n  - {{class: A, name: \"bad name\"}}\n");
        let error = load(&text).unwrap_err();
        assert_eq!(error.line, 5);
        assert!(error.message.contains("invalid engine name"), "{}", error.message);
    }

    #[test]
    fn unknown_language_lists_valid_ones() {
        let text = format!("{MINIMAL}lang: rust\n");
        let error = load(&text).unwrap_err();
        assert_eq!(error.line, 4);
        assert_eq!(error.hint.as_deref(), Some("valid languages: java, cpp, python"));
    }

    #[test]
    fn top_level_defaults_apply_to_services() {
        let text = format!(
            "{MINIMAL}container: box\nlang: cpp\nservices:\n  - {{class: A, name: Proc}}\n"
        );
        let workflow = load(&text).unwrap();
        let stage = workflow.stage_by_name("Proc").unwrap();
        assert_eq!(stage.container, "box");
        assert_eq!(stage.lang, Lang::Cpp);
    }

    #[test]
    fn replicas_outside_bounds_rejected() {
        let text =
            format!("{MINIMAL}testbed:\n  stages:\n    Reader: {{replicas: 5, max_replicas: 2}}\n");
        let error = load(&text).unwrap_err();
        assert_eq!(error.line, 6);
        assert!(error.message.contains("outside its bounds"), "{}", error.message);
    }

    #[test]
    fn testbed_section_sets_cost_and_site() {
        let text = format!(
            "{MINIMAL}testbed:\n  defaults: {{cost_ns_per_byte: 3}}\n  stages:\n    Writer: {{site: jlab, mode: sleep, threads: 4, output_size: 10}}\n"
        );
        let workflow = load(&text).unwrap();
        assert_eq!(workflow.source().cost.ns_per_byte, 3.0);
        let writer = workflow.sink();
        assert_eq!(writer.site.as_deref(), Some("jlab"));
        assert_eq!(writer.cost.mode, CostMode::Sleep);
        assert_eq!(writer.cost.threads.get(), 4);
        assert_eq!(writer.cost.output_size, Some(10));
        assert_eq!(writer.site_origin.as_ref().unwrap().line, 7);
    }
}
