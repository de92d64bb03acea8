//! A download's progress bar (hf-hub's `Progress` hook), and the heartbeat the stall watchdog
//! reads: a connection that stops sending bytes must end the run, not hang it.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When bytes last arrived, shared by the download thread and the watchdog.
pub struct Heartbeat {
    start: Instant,
    last_ms: AtomicU64,
    bytes: AtomicU64,
}

impl Heartbeat {
    pub fn new() -> Arc<Heartbeat> {
        Arc::new(Heartbeat {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    fn beat(&self, position: u64) {
        self.bytes.store(position, Ordering::Relaxed);
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since bytes last arrived (or since the download started).
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// The file's bytes on disk so far, as last reported.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// One file's bar on stderr (drawn only on a terminal), fed by hf-hub.
pub struct Bar {
    bar: ProgressBar,
    beat: Arc<Heartbeat>,
    /// hf-hub calls `init` then `update(bytes already on disk)` at every attempt: the first
    /// update after an init is the resume position, not an increment.
    absolute_next: bool,
}

impl Bar {
    pub fn new(file: &str, beat: Arc<Heartbeat>) -> Bar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(file.to_string());
        Bar {
            bar,
            beat,
            absolute_next: false,
        }
    }
}

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, _filename: &str) {
        self.bar.set_length(size as u64);
        self.absolute_next = true;
        self.beat.beat(self.bar.position());
    }

    fn update(&mut self, size: usize) {
        if std::mem::take(&mut self.absolute_next) {
            self.bar.set_position(size as u64);
        } else {
            self.bar.inc(size as u64);
        }
        self.beat.beat(self.bar.position());
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hf_hub::api::Progress;

    #[test]
    fn a_resumed_attempt_restarts_at_the_bytes_on_disk() {
        let beat = Heartbeat::new();
        let mut bar = Bar::new("f", beat.clone());
        bar.init(100, "f");
        bar.update(0);
        bar.update(30);
        assert_eq!(beat.bytes(), 30);
        // The connection broke; hf-hub resumes from the 30 bytes in the part file.
        bar.init(100, "f");
        bar.update(30);
        bar.update(20);
        assert_eq!(beat.bytes(), 50);
        assert!(beat.idle() < Duration::from_secs(5));
    }
}
