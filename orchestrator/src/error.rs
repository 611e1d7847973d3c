//! Errors of the orchestrator crate.

use std::fmt;
use std::path::{Path, PathBuf};

/// Invalid user input: a file, the line of the offending value (0 when the whole file is at
/// fault), what is wrong and, where one is known, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl InputError {
    pub fn new(file: &Path, line: usize, message: impl Into<String>) -> InputError {
        InputError { file: file.to_path_buf(), line, message: message.into(), hint: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> InputError {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)?;
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for InputError {}
