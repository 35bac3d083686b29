//! The circuit breaker: when the endpoint is gone (a run of connection failures) or the
//! account cannot be served (a run of 401, 403 or `insufficient_quota`), no line is to blame,
//! so the batch stops leasing, returns every job to the queue with no attempt spent, and says
//! why, instead of retrying forever or discarding every remaining line one by one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use crate::llm::LlmError;

/// Consecutive connection failures (after the client's own retries) that stop a batch.
pub const CONNECT_FAILURES: u32 = 5;
/// Consecutive account-level errors of one class that stop a batch.
pub const ACCOUNT_ERRORS: u32 = 3;

/// Why the breaker opened: what a user must fix before running again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    /// `endpoint_unreachable`, `unauthorized`, `forbidden` or `insufficient_quota`.
    pub code: &'static str,
    /// The last error, with host, status and the provider's message.
    pub message: String,
}

/// Shared by the gateway, which feeds it every call's outcome, and the runner, which stops
/// leasing once it is open. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Breaker {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    connect: AtomicU32,
    /// The class of the current run of account errors (0: none) and its length.
    account_class: AtomicU32,
    account: AtomicU32,
    tripped: OnceLock<Trip>,
    /// Set by a drain past its deadline: no call may start any more.
    calls_closed: std::sync::atomic::AtomicBool,
}

impl Breaker {
    /// Lets no call start any more: the drain is aborting its jobs. A job waiting for a
    /// request slot would otherwise get the slot of an aborted one and send a call that is
    /// then abandoned too (and maybe billed).
    pub fn close_calls(&self) {
        self.inner.calls_closed.store(true, Ordering::SeqCst);
    }

    /// Whether [`Breaker::close_calls`] was called.
    pub fn calls_closed(&self) -> bool {
        self.inner.calls_closed.load(Ordering::SeqCst)
    }

    /// Why the batch must stop, once it must.
    pub fn tripped(&self) -> Option<&Trip> {
        self.inner.tripped.get()
    }

    /// Opens the breaker with `trip` (a stop no call caused, such as the spending cap);
    /// returns the trip in force (an earlier one wins).
    pub fn stop(&self, trip: Trip) -> Trip {
        let _ = self.inner.tripped.set(trip.clone());
        self.tripped().cloned().unwrap_or(trip)
    }

    /// A call came back with an answer.
    pub fn succeeded(&self) {
        self.inner.connect.store(0, Ordering::Relaxed);
        self.inner.account.store(0, Ordering::Relaxed);
    }

    /// A call failed with `err`; why the batch must stop, when this opens (or found open)
    /// the breaker.
    pub fn failed(&self, err: &LlmError) -> Option<Trip> {
        let i = &self.inner;
        let trip = match account_class(err) {
            Some((class, code)) => {
                i.connect.store(0, Ordering::Relaxed);
                let run = if i.account_class.swap(class, Ordering::Relaxed) == class {
                    i.account.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    i.account.store(1, Ordering::Relaxed);
                    1
                };
                (run >= ACCOUNT_ERRORS).then_some(code)
            }
            None if matches!(err, LlmError::Connect { .. }) => {
                i.account.store(0, Ordering::Relaxed);
                let run = i.connect.fetch_add(1, Ordering::Relaxed) + 1;
                (run >= CONNECT_FAILURES).then_some("endpoint_unreachable")
            }
            None => {
                i.connect.store(0, Ordering::Relaxed);
                i.account.store(0, Ordering::Relaxed);
                None
            }
        };
        if let Some(code) = trip {
            let _ = i.tripped.set(Trip {
                code,
                message: err.to_string(),
            });
        }
        self.tripped().cloned()
    }
}

/// Errors of the account rather than of the request, by class.
fn account_class(err: &LlmError) -> Option<(u32, &'static str)> {
    match err.code() {
        "insufficient_quota" => Some((1, "insufficient_quota")),
        "unauthorized" => Some((2, "unauthorized")),
        "forbidden" => Some((3, "forbidden")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect() -> LlmError {
        LlmError::Connect {
            host: "api.example.com".into(),
            message: "connection refused".into(),
        }
    }

    #[test]
    fn a_run_of_connection_failures_opens_it_and_a_success_resets_the_run() {
        let b = Breaker::default();
        for _ in 0..CONNECT_FAILURES - 1 {
            assert!(b.failed(&connect()).is_none());
        }
        b.succeeded();
        for _ in 0..CONNECT_FAILURES - 1 {
            assert!(b.failed(&connect()).is_none());
        }
        assert!(b.failed(&connect()).is_some());
        let trip = b.tripped().unwrap();
        assert_eq!(trip.code, "endpoint_unreachable");
        assert!(trip.message.contains("api.example.com"), "{}", trip.message);
        // Open stays open.
        b.succeeded();
        assert!(b.tripped().is_some());
    }

    #[test]
    fn other_errors_break_a_run() {
        let b = Breaker::default();
        let timeout = LlmError::Timeout {
            after: std::time::Duration::from_secs(1),
        };
        for _ in 0..10 {
            assert!(b.failed(&connect()).is_none());
            assert!(b.failed(&timeout).is_none());
        }
        assert!(b.tripped().is_none());
    }
}
