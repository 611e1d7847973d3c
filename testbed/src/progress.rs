//! Progress for people: spinners and a bar on a terminal, one line per phase otherwise.
//!
//! Progress never replaces logs or errors: errors are printed by the caller after the bars
//! are cleared, and every phase is also logged through `tracing`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    multi: MultiProgress,
    terminal: bool,
    quiet: bool,
}

/// One phase in progress; finish it with [`Phase::done`].
pub struct Phase {
    bar: ProgressBar,
    name: &'static str,
    terminal: bool,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal() && !quiet;
        let target =
            if terminal { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Progress { multi: MultiProgress::with_draw_target(target), terminal, quiet }
    }

    /// Starts a phase shown as a spinner, or as a counter when `total` is given.
    pub fn phase(&self, name: &'static str, total: Option<u64>, unit: &str) -> Phase {
        let bar = match total {
            Some(total) => {
                let style = ProgressStyle::with_template(&format!(
                    "{{prefix:>10.cyan.bold}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}"
                ))
                .expect("static template")
                .progress_chars("=> ");
                ProgressBar::new(total).with_style(style)
            }
            None => {
                let style = ProgressStyle::with_template("{prefix:>10.cyan.bold} {spinner} {msg}")
                    .expect("static template");
                ProgressBar::new_spinner().with_style(style)
            }
        };
        let bar = self.multi.add(bar.with_prefix(name));
        if self.terminal {
            bar.enable_steady_tick(Duration::from_millis(120));
        } else if !self.quiet {
            eprintln!("{name:>10} ...");
        }
        Phase { bar, name, terminal: self.terminal, quiet: self.quiet }
    }

    /// Prints a line above the bars.
    pub fn println(&self, line: &str) {
        if self.terminal {
            let _ = self.multi.println(line);
        } else if !self.quiet {
            eprintln!("{line}");
        }
    }
}

impl Phase {
    pub fn set_position(&self, position: u64) {
        self.bar.set_position(position);
    }

    pub fn set_length(&self, length: u64) {
        self.bar.set_length(length);
    }

    pub fn inc(&self, delta: u64) {
        self.bar.inc(delta);
    }

    pub fn message(&self, message: String) {
        self.bar.set_message(message);
    }

    /// Ends the phase with a summary such as `8 instances in 0.4 s`.
    pub fn done(self, summary: String) {
        if self.terminal {
            let style = ProgressStyle::with_template("{prefix:>10.green.bold} {msg}")
                .expect("static template");
            self.bar.set_style(style);
            self.bar.finish_with_message(summary);
        } else if !self.quiet {
            eprintln!("{:>10} {summary}", self.name);
        }
    }

    /// Ends the phase with an error mark; the caller prints the error itself.
    pub fn failed(self, summary: String) {
        if self.terminal {
            let style = ProgressStyle::with_template("{prefix:>10.red.bold} {msg}")
                .expect("static template");
            self.bar.set_style(style);
            self.bar.abandon_with_message(summary);
        } else if !self.quiet {
            eprintln!("{:>10} failed: {summary}", self.name);
        }
    }
}
