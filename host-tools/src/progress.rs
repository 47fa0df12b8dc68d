//! Progress bars on stderr for long stages; silent when stderr is not a terminal or with --quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<ProgressBar>,
    stage: String,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {elapsed}")
                    .unwrap_or(ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        });
        Progress { bar, stage: String::new() }
    }
    pub fn update(&mut self, stage: &str, done: usize, total: usize) {
        if let Some(b) = &self.bar {
            if stage != self.stage {
                self.stage = stage.to_string();
                b.set_message(stage.to_string());
                b.reset();
            }
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    }
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
