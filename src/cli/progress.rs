//! Progress of a running batch: a bar on a terminal, plain lines otherwise (logs, CI, pipes).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use reasonq::app::batch::Baseline;
use reasonq::chat::remote::{RemoteView, RemoteWatch};
use reasonq::cost::Money;
use reasonq::runner::{RunCounts, RunStats};

/// Reports progress until dropped or [`Progress::finish`]ed.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

/// One line of progress text; `server_waits` counts the snoozes the server asked for.
pub fn describe(base: Baseline, now: RunCounts, server_waits: u64, elapsed: Duration) -> String {
    let done = base.completed + now.completed;
    let failed = base.failed + now.failed;
    let this_run = now.completed + now.failed;
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = this_run as f64 / secs;
    let left = base.total.saturating_sub(done + failed);
    let eta = if rate > 0.0 && left > 0 {
        format!(", ETA {}s", (left as f64 / rate).ceil() as u64)
    } else {
        String::new()
    };
    let waits = if server_waits > 0 {
        format!(" ({server_waits} told by the server to wait)")
    } else {
        String::new()
    };
    format!(
        "{done}/{total} done, {failed} failed, {cached} cached, {retried} retried{waits}, \
         {rate:.1}/s{eta}",
        total = base.total,
        cached = now.cached,
        retried = now.retried,
    )
}

/// The money part of the progress line: the batch's spend (earlier runs and this one), the
/// cap, answers whose cost is unknown.
pub fn describe_cost(base: Baseline, run: (Money, u64)) -> String {
    let spent = base.cost.saturating_add(run.0);
    let mut text = format!(", {spent} spent");
    if let Some(cap) = base.cap {
        text.push_str(&format!(" of {cap}"));
    }
    if run.1 > 0 {
        text.push_str(&format!(" (+{} answers unpriced)", run.1));
    }
    text
}

/// The provider batches' part of the progress line (empty when there are none).
pub fn describe_remote(view: &RemoteView, elapsed: Duration) -> String {
    if view.open == 0 {
        return String::new();
    }
    format!(
        "; provider: {open} batches ({states}), {done}/{lines} lines answered there, {failed} \
         failed, {secs}s",
        open = view.open,
        states = view.states,
        done = view.succeeded,
        lines = view.lines,
        failed = view.failed,
        secs = elapsed.as_secs(),
    )
}

impl Progress {
    /// Starts reporting `stats` (and the provider batches of `remote`) against `base`.
    /// `plain` forces lines even on a terminal.
    pub fn start(
        base: Baseline,
        stats: Arc<RunStats>,
        remote: Arc<RemoteWatch>,
        plain: bool,
    ) -> Progress {
        let started = Instant::now();
        let fancy = !plain && std::io::stderr().is_terminal();
        let bar = fancy.then(|| {
            let bar = ProgressBar::with_draw_target(Some(base.total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let task_bar = bar.clone();
        let task = tokio::spawn(async move {
            let period = if fancy {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(2)
            };
            let mut last = String::new();
            loop {
                tokio::time::sleep(period).await;
                let now = stats.snapshot();
                let waits = stats
                    .server_waits
                    .load(std::sync::atomic::Ordering::Relaxed);
                let mut text = describe(base, now, waits, started.elapsed());
                text.push_str(&describe_cost(base, stats.cost()));
                text.push_str(&describe_remote(&remote.view(), started.elapsed()));
                match &task_bar {
                    Some(bar) => {
                        bar.set_position(base.completed + base.failed + now.completed + now.failed);
                        bar.set_message(text);
                    }
                    None if text != last => {
                        eprintln!("progress: {text}");
                        last = text;
                    }
                    None => {}
                }
            }
        });
        Progress { task, bar }
    }

    /// Stops reporting and clears the bar.
    pub fn finish(self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_earlier_runs_and_estimates_time_left() {
        let base = Baseline {
            total: 100,
            completed: 40,
            failed: 0,
            ..Baseline::default()
        };
        let now = RunCounts {
            completed: 20,
            failed: 1,
            cached: 5,
            ..RunCounts::default()
        };
        assert_eq!(
            describe(base, now, 0, Duration::from_secs(7)),
            "60/100 done, 1 failed, 5 cached, 0 retried, 3.0/s, ETA 13s"
        );
        let waiting = RunCounts { retried: 3, ..now };
        assert_eq!(
            describe(base, waiting, 2, Duration::from_secs(7)),
            "60/100 done, 1 failed, 5 cached, 3 retried (2 told by the server to wait), 3.0/s, ETA 13s"
        );
    }

    #[test]
    fn progress_shows_the_batch_spend_against_its_cap() {
        let base = Baseline {
            cost: Money(1_500_000_000_000),
            cap: Some(Money(2_000_000_000_000)),
            ..Baseline::default()
        };
        assert_eq!(
            describe_cost(base, (Money(250_000_000_000), 0)),
            ", $1.75 spent of $2.00"
        );
        assert_eq!(
            describe_cost(Baseline::default(), (Money(0), 2)),
            ", $0 spent (+2 answers unpriced)"
        );
    }

    #[test]
    fn progress_shows_the_provider_batches_state_and_counts() {
        assert_eq!(
            describe_remote(&RemoteView::default(), Duration::from_secs(3)),
            ""
        );
        let view = RemoteView {
            open: 3,
            lines: 120_000,
            succeeded: 41_200,
            failed: 3,
            states: "2 in_progress, 1 validating".into(),
        };
        assert_eq!(
            describe_remote(&view, Duration::from_secs(412)),
            "; provider: 3 batches (2 in_progress, 1 validating), 41200/120000 lines answered \
             there, 3 failed, 412s"
        );
    }
}
