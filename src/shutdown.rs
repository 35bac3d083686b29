//! Graceful shutdown: one place that turns SIGINT/SIGTERM into phases the runtime obeys.
//!
//! The first signal starts the **drain**: workers stop leasing, in-flight calls may finish
//! within the drain deadline, and unfinished jobs go back to the queue at once. A second
//! signal **aborts** the drain early (jobs are still returned). Exit codes follow the shell
//! convention, 128 + signal number: 130 after SIGINT, 143 after SIGTERM.

use futures_util::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio::sync::watch;

/// Where the process is in its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Working normally.
    Running,
    /// Stop taking work; let in-flight work finish. Holds the signal that asked for it
    /// (0 when shutdown was requested by code).
    Draining(i32),
    /// Stop now; return unfinished work to the queue.
    Abort(i32),
}

impl Phase {
    /// The signal behind this phase, if a signal caused it.
    pub fn signal(self) -> Option<i32> {
        match self {
            Phase::Running => None,
            Phase::Draining(s) | Phase::Abort(s) => (s != 0).then_some(s),
        }
    }
}

/// The exit code for a run that ended after `signal` (0 when none).
pub fn exit_code(signal: Option<i32>) -> i32 {
    signal.map_or(0, |s| 128 + s)
}

/// The sending side: owned by whoever decides to shut down (signals, tests, an embedding
/// service).
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: watch::Sender<Phase>,
}

/// The receiving side, cloned into every task that must obey.
#[derive(Debug, Clone)]
pub struct Listener {
    rx: watch::Receiver<Phase>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown in the running phase.
    pub fn new() -> Shutdown {
        Shutdown {
            tx: watch::Sender::new(Phase::Running),
        }
    }

    /// A listener for tasks.
    pub fn listener(&self) -> Listener {
        Listener {
            rx: self.tx.subscribe(),
        }
    }

    /// Advances the phase: Running -> Draining -> Abort. Never goes back.
    pub fn advance(&self, signal: i32) {
        self.tx.send_modify(|phase| {
            *phase = match *phase {
                Phase::Running => Phase::Draining(signal),
                Phase::Draining(first) | Phase::Abort(first) => Phase::Abort(first),
            }
        });
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }

    /// Listens for SIGINT and SIGTERM and advances the phase on each. The returned guard stops
    /// listening (and restores default handling for later signals) when dropped.
    pub fn listen_for_signals(&self) -> std::io::Result<SignalGuard> {
        let signals = signal_hook_tokio::Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut signals = signals;
            while let Some(signal) = signals.next().await {
                tracing::info!(signal, "shutdown signal received");
                me.advance(signal);
            }
        });
        Ok(SignalGuard { handle, task })
    }
}

/// Keeps the signal listener alive; dropping it unregisters the handlers.
pub struct SignalGuard {
    handle: signal_hook_tokio::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.handle.close();
        self.task.abort();
    }
}

impl Listener {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.rx.borrow()
    }

    /// True once a drain (or abort) has been requested.
    pub fn is_stopping(&self) -> bool {
        self.phase() != Phase::Running
    }

    /// Waits until the phase is at least Draining.
    pub async fn stopping(&mut self) {
        let _ = self.rx.wait_for(|p| *p != Phase::Running).await;
    }

    /// Waits until the phase is Abort.
    pub async fn aborted(&mut self) {
        let _ = self.rx.wait_for(|p| matches!(p, Phase::Abort(_))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward_and_keep_the_first_signal() {
        let shutdown = Shutdown::new();
        let mut listener = shutdown.listener();
        assert!(!listener.is_stopping());
        shutdown.advance(SIGTERM);
        listener.stopping().await;
        assert_eq!(listener.phase(), Phase::Draining(SIGTERM));
        shutdown.advance(SIGINT);
        listener.aborted().await;
        assert_eq!(shutdown.phase(), Phase::Abort(SIGTERM));
        assert_eq!(exit_code(shutdown.phase().signal()), 143);
        assert_eq!(exit_code(Some(SIGINT)), 130);
        assert_eq!(exit_code(None), 0);
    }

    #[tokio::test]
    async fn a_real_signal_starts_the_drain() {
        let shutdown = Shutdown::new();
        let mut listener = shutdown.listener();
        let _guard = shutdown.listen_for_signals().unwrap();
        signal_hook::low_level::raise(SIGTERM).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), listener.stopping())
            .await
            .unwrap();
        assert_eq!(listener.phase(), Phase::Draining(SIGTERM));
    }
}
