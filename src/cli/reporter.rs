//! Progress bars for `pull::Reporter`, drawn with indicatif on stderr.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::pull::Reporter;

pub struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    bars: Mutex<Vec<ProgressBar>>,
}

impl Bars {
    pub fn new(total_bytes: u64) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let total = multi.add(ProgressBar::new(total_bytes));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>12.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        total.enable_steady_tick(Duration::from_millis(200));
        Bars {
            multi,
            total,
            bars: Mutex::new(Vec::new()),
        }
    }

    pub fn finish(&self) {
        self.total.finish_and_clear();
        let _ = self.multi.clear();
    }
}

impl Reporter for Bars {
    fn on_pull_start(&self, _layers: usize, bytes: u64) {
        self.total.set_length(bytes);
    }

    fn on_layer_start(&self, name: &str, size: u64) -> usize {
        let bar = self
            .multi
            .insert_before(&self.total, ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix("layer");
        bar.set_message(name.to_string());
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.push(bar);
        bars.len() - 1
    }

    fn on_layer_progress(&self, id: usize, bytes: u64) {
        self.total.inc(bytes);
        if let Some(b) = self.bars.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            b.inc(bytes);
        }
    }

    fn on_layer_done(&self, id: usize) {
        if let Some(b) = self.bars.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            b.finish_and_clear();
        }
    }
}
