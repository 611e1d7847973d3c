//! YAML documents that remember where each value came from.
//!
//! Every input file (topology, workflow, scenario) is read into a [`Node`] tree that keeps the
//! line of every value, then converted to `serde_json::Value` and deserialized with
//! `serde_path_to_error`. A failing path is mapped back to a line, so that every error names
//! the file and the line. Repeated keys in one mapping keep the last value, as ERSAP's own YAML
//! library (SnakeYAML) does.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use yaml_rust2::Yaml;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::error::InputError;

/// A YAML value with the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: NodeValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    /// Keys in file order, without repeats: a repeated key replaced the earlier value.
    Map(Vec<(String, Node)>),
}

/// One segment of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

impl From<&str> for Segment {
    fn from(key: &str) -> Self {
        Segment::Key(key.to_string())
    }
}

impl From<usize> for Segment {
    fn from(index: usize) -> Self {
        Segment::Index(index)
    }
}

/// Builds a path (an array of segments) from keys and indices: `path!["sites", 2, "name"]`.
#[macro_export]
macro_rules! path {
    ($($segment:expr),* $(,)?) => {
        [$($crate::yaml::Segment::from($segment)),*]
    };
}

/// A parsed file: its path for error messages and its root node.
#[derive(Debug, Clone)]
pub struct Document {
    pub file: PathBuf,
    pub root: Node,
}

impl Document {
    /// Reads and parses a YAML file.
    pub fn read(file: &Path) -> Result<Document, InputError> {
        let text = std::fs::read_to_string(file).map_err(|error| {
            InputError::new(file, 0, format!("cannot read the file: {error}"))
                .with_hint("check the path; it is relative to the current folder")
        })?;
        Document::parse(file, &text)
    }

    /// Parses YAML text; `file` is used in error messages only.
    pub fn parse(file: &Path, text: &str) -> Result<Document, InputError> {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        parser.load(&mut builder, false).map_err(|error| {
            InputError::new(file, error.marker().line(), format!("invalid YAML: {}", error.info()))
                .with_hint("check the indentation and the quoting on this line and the one before")
        })?;
        if let Some(error) = builder.error {
            return Err(InputError::new(file, error.0, error.1));
        }
        let root = builder.root.unwrap_or(Node { line: 1, value: NodeValue::Null });
        Ok(Document { file: file.to_path_buf(), root })
    }

    /// Deserializes the whole document, naming the line of the first invalid value.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, InputError> {
        self.deserialize_node(&self.root, &[])
    }

    /// Deserializes the node at `base`, naming the line of the first invalid value.
    pub fn deserialize_at<T: DeserializeOwned>(&self, base: &[Segment]) -> Result<T, InputError> {
        let node = self.node(base).unwrap_or(&self.root);
        self.deserialize_node(node, base)
    }

    fn deserialize_node<T: DeserializeOwned>(
        &self,
        node: &Node,
        base: &[Segment],
    ) -> Result<T, InputError> {
        let json = node.to_json();
        serde_path_to_error::deserialize(json).map_err(|error| {
            let mut path = base.to_vec();
            path.extend(parse_serde_path(&error.path().to_string()));
            let line = self.line(&path);
            let at = display_path(&path);
            let message = if at.is_empty() {
                error.inner().to_string()
            } else {
                format!("{at}: {}", error.inner())
            };
            InputError::new(&self.file, line, message)
        })
    }

    /// Returns the node at `path`, if it exists.
    pub fn node(&self, path: &[Segment]) -> Option<&Node> {
        let mut node = &self.root;
        for segment in path {
            node = node.child(segment)?;
        }
        Some(node)
    }

    /// Returns the line of the deepest existing node along `path`.
    pub fn line(&self, path: &[Segment]) -> usize {
        let mut node = &self.root;
        for segment in path {
            match node.child(segment) {
                Some(child) => node = child,
                None => break,
            }
        }
        node.line
    }

    /// Builds an error located at `path`.
    pub fn error(&self, path: &[Segment], message: impl Into<String>) -> InputError {
        InputError::new(&self.file, self.line(path), message)
    }
}

impl Node {
    /// Returns the child at one path segment.
    pub fn child(&self, segment: &Segment) -> Option<&Node> {
        match (&self.value, segment) {
            (NodeValue::Map(entries), Segment::Key(key)) => {
                entries.iter().find(|(name, _)| name == key).map(|(_, node)| node)
            }
            (NodeValue::Seq(items), Segment::Index(index)) => items.get(*index),
            _ => None,
        }
    }

    /// Returns the value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.child(&Segment::Key(key.to_string()))
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::String(text) => Some(text),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, NodeValue::Null)
    }

    /// Converts to JSON, dropping the lines.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(value) => Value::Bool(*value),
            NodeValue::Int(value) => Value::from(*value),
            NodeValue::Float(value) => {
                serde_json::Number::from_f64(*value).map(Value::Number).unwrap_or(Value::Null)
            }
            NodeValue::String(text) => Value::String(text.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => Value::Object(
                entries.iter().map(|(key, node)| (key.clone(), node.to_json())).collect(),
            ),
        }
    }
}

/// Formats a path as `sites[2].name`.
pub fn display_path(path: &[Segment]) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Index(index) => text.push_str(&format!("[{index}]")),
        }
    }
    text
}

/// Parses the path format of `serde_path_to_error` (`a.b[2].c`, `.` for the root).
fn parse_serde_path(text: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    if text == "." {
        return segments;
    }
    for part in text.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            let key = &rest[..open];
            if !key.is_empty() {
                segments.push(Segment::Key(key.to_string()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else { break };
                if let Ok(index) = stripped[..close].parse() {
                    segments.push(Segment::Index(index));
                }
                rest = &stripped[close + 1..];
            }
        } else if !rest.is_empty() && rest != "?" {
            segments.push(Segment::Key(rest.to_string()));
        }
    }
    segments
}

enum Frame {
    Seq(usize, Vec<Node>),
    Map(usize, Vec<(String, Node)>, Option<String>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: std::collections::HashMap<usize, Node>,
    /// Anchor ids of the collections currently open, to record them when they close.
    open_anchors: Vec<usize>,
    error: Option<(usize, String)>,
    documents: usize,
}

impl Builder {
    fn push(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending_key)) => match pending_key.take() {
                None => match key_text(&node) {
                    Some(key) => *pending_key = Some(key),
                    None => {
                        self.error.get_or_insert((
                            node.line,
                            "a mapping key must be a plain value, not a list or a mapping"
                                .to_string(),
                        ));
                        *pending_key = Some(String::new());
                    }
                },
                Some(key) => {
                    // A repeated key keeps the last value, in the position of the first.
                    if let Some(entry) = entries.iter_mut().find(|(name, _)| *name == key) {
                        entry.1 = node;
                    } else {
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

fn key_text(node: &Node) -> Option<String> {
    match &node.value {
        NodeValue::String(text) => Some(text.clone()),
        NodeValue::Int(value) => Some(value.to_string()),
        NodeValue::Float(value) => Some(value.to_string()),
        NodeValue::Bool(value) => Some(value.to_string()),
        NodeValue::Null => Some("null".to_string()),
        _ => None,
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = mark.line();
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.error.get_or_insert((
                        line,
                        "the file holds more than one YAML document; keep one".to_string(),
                    ));
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let value = if style == TScalarStyle::Plain {
                    match Yaml::from_str(&text) {
                        Yaml::Integer(value) => NodeValue::Int(value),
                        Yaml::Real(_) => match text.parse::<f64>() {
                            Ok(value) => NodeValue::Float(value),
                            Err(_) => NodeValue::String(text),
                        },
                        Yaml::Boolean(value) => NodeValue::Bool(value),
                        Yaml::Null => NodeValue::Null,
                        _ => NodeValue::String(text),
                    }
                } else {
                    NodeValue::String(text)
                };
                self.push(Node { line, value }, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.open_anchors.push(anchor);
                self.stack.push(Frame::Seq(line, Vec::new()));
            }
            Event::MappingStart(anchor, _) => {
                self.open_anchors.push(anchor);
                self.stack.push(Frame::Map(line, Vec::new(), None));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let anchor = self.open_anchors.pop().unwrap_or(0);
                let node = match self.stack.pop() {
                    Some(Frame::Seq(start, items)) => {
                        Node { line: start, value: NodeValue::Seq(items) }
                    }
                    Some(Frame::Map(start, entries, _)) => {
                        Node { line: start, value: NodeValue::Map(entries) }
                    }
                    None => return,
                };
                self.push(node, anchor);
            }
            Event::Alias(anchor) => {
                let node = self
                    .anchors
                    .get(&anchor)
                    .cloned()
                    .map(|node| Node { line, value: node.value })
                    .unwrap_or(Node { line, value: NodeValue::Null });
                self.push(node, 0);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Document {
        Document::parse(Path::new("test.yaml"), text).expect("valid YAML")
    }

    #[test]
    fn repeated_key_keeps_last_value() {
        let document = parse("a: 1\nb: 2\na: 3\n");
        assert_eq!(document.root.get("a").map(|n| n.to_json()), Some(serde_json::json!(3)));
        let NodeValue::Map(entries) = &document.root.value else { panic!("not a map") };
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn lines_are_one_based() {
        let document = parse("---\nfirst: x\nlist:\n  - one\n  - two\n");
        assert_eq!(document.line(&path!["first"]), 2);
        assert_eq!(document.line(&path!["list", 1]), 5);
    }

    #[test]
    fn quoted_numbers_stay_strings() {
        let document = parse("port: \"7771\"\ncount: 7771\nratio: 0.5\nflag: true\nnothing: ~\n");
        let json = document.root.to_json();
        assert_eq!(json["port"], serde_json::json!("7771"));
        assert_eq!(json["count"], serde_json::json!(7771));
        assert_eq!(json["ratio"], serde_json::json!(0.5));
        assert_eq!(json["flag"], serde_json::json!(true));
        assert!(json["nothing"].is_null());
    }

    #[test]
    fn broken_yaml_names_line() {
        let error = Document::parse(Path::new("bad.yaml"), "a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(error.line >= 2, "line was {}", error.line);
        assert!(error.message.contains("invalid YAML"), "{}", error.message);
    }

    #[test]
    fn deserialize_error_names_line_of_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Item {
            count: u32,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Top {
            items: Vec<Item>,
        }
        let document = parse("items:\n  - count: 1\n  - count: many\n");
        let error = document.deserialize::<Top>().unwrap_err();
        assert_eq!(error.line, 3);
        assert!(error.message.contains("items[1].count"), "{}", error.message);
    }

    #[test]
    fn serde_paths_parse() {
        assert_eq!(parse_serde_path("."), Vec::<Segment>::new());
        assert_eq!(parse_serde_path("a.b[2].c"), path!["a", "b", 2, "c"]);
        assert_eq!(parse_serde_path("[0][1]"), path![0, 1]);
    }
}
