//! Progress bars on stderr (only when it is a terminal) and human-readable sizes.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar, or nothing when disabled.
#[derive(Debug, Clone)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar of `total` bytes (a byte counter when unknown), if `enabled`.
    pub fn new(enabled: bool, total: Option<u64>, verb: &str) -> Self {
        if !enabled {
            return Self(None);
        }
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(&format!(
                    "{verb} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
                ))
                .expect("template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(&format!(
                    "{verb} {{spinner}} {{bytes}} {{bytes_per_sec}}"
                ))
                .expect("template"),
            ),
        };
        bar.enable_steady_tick(Duration::from_millis(100));
        Self(Some(bar))
    }

    /// Count `n` more bytes.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// `1.5 GiB`-style size.
pub fn human(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// `123.4 MiB/s`-style rate.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    format!("{}/s", human((bytes as f64 / secs) as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human(1024), "1.00 KiB");
        assert!(super::rate(1 << 20, std::time::Duration::from_secs(1)).starts_with("1.00 MiB"));
    }
}
