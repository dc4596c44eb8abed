//! Progress on stderr: an indicatif bar on a terminal, a line per phase otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::ProgressMode;

/// The progress display of one run.
pub struct Progress {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Resolves `auto` against whether stderr is a terminal.
    pub fn new(mode: ProgressMode) -> Progress {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        };
        Progress { mode, bar: None }
    }

    /// Starts a phase of `len` steps.
    pub fn phase(&mut self, name: &str, len: u64, unit: &str) {
        self.finish();
        match self.mode {
            ProgressMode::Bar => {
                let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(10));
                let template = format!("{{prefix:>10.bold}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}");
                bar.set_style(
                    ProgressStyle::with_template(&template)
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_prefix(name.to_owned());
                bar.enable_steady_tick(Duration::from_millis(200));
                self.bar = Some(bar);
            }
            ProgressMode::Plain => eprintln!("ringcast-loadgen: {name}: {len} {unit}"),
            _ => {}
        }
    }

    /// Updates the current phase.
    pub fn update(&self, pos: u64, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            bar.set_message(message);
        }
    }

    /// Ends the current phase.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }

    /// A line outside the bar.
    pub fn note(&self, line: &str) {
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.println(format!("ringcast-loadgen: {line}")),
            (None, ProgressMode::None) => {}
            (None, _) => eprintln!("ringcast-loadgen: {line}"),
        }
    }
}
