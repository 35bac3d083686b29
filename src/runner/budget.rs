//! The spending cap (`batch --max-cost`): before a call is sent its worst case is reserved
//! against what is left; when the answer comes back the reservation is settled with what
//! the reported usage cost. A call that does not fit is not sent, and the batch stops
//! (the gateway opens the breaker with [`BUDGET_REACHED`]). So the spend never passes the
//! cap by more than the answers' excess over their reservations (prompt estimates that were
//! low, outputs past `max_tokens`).

use std::sync::{Arc, Mutex, PoisonError};

use crate::cost::Money;

/// The breaker code of a batch stopped by its cap.
pub const BUDGET_REACHED: &str = "budget_reached";

/// Shared by the gateway (live calls) and the provider-batch driver. Cheap to clone; without
/// a cap every reservation fits.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    cap: Option<Money>,
    /// Settled spend: the batch's recorded total at the start plus this run's answers.
    spent: Money,
    /// Worst cases of calls in flight.
    reserved: Money,
}

/// Where a budget stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub cap: Option<Money>,
    pub spent: Money,
    pub reserved: Money,
}

impl Standing {
    /// What is left to reserve (`None`: no cap).
    pub fn left(&self) -> Option<Money> {
        self.cap
            .map(|cap| cap.saturating_sub(self.spent.saturating_add(self.reserved)))
    }
}

/// A worst case held against the budget; dropped unsettled, it is released (the call was
/// not answered: nothing was billed).
#[derive(Debug)]
pub struct Reservation {
    budget: Budget,
    amount: Money,
}

impl Budget {
    /// Caps the spend at `cap`, of which `spent` is gone already.
    pub fn limit(&self, cap: Money, spent: Money) {
        let mut s = self.lock();
        s.cap = Some(cap);
        s.spent = spent;
    }

    /// Whether a cap is set (else no worst case need be computed).
    pub fn capped(&self) -> bool {
        self.lock().cap.is_some()
    }

    pub fn standing(&self) -> Standing {
        let s = self.lock();
        Standing {
            cap: s.cap,
            spent: s.spent,
            reserved: s.reserved,
        }
    }

    /// Holds `worst` if it fits in what is left; `None` when it does not.
    pub fn reserve(&self, worst: Money) -> Option<Reservation> {
        let mut s = self.lock();
        if let Some(cap) = s.cap {
            let after = s.spent.saturating_add(s.reserved).saturating_add(worst);
            if after > cap {
                return None;
            }
        }
        s.reserved = s.reserved.saturating_add(worst);
        Some(Reservation {
            budget: self.clone(),
            amount: worst,
        })
    }

    /// Holds `amount` whether it fits or not: spend already committed (lines a provider
    /// is running).
    pub fn force(&self, amount: Money) -> Reservation {
        let mut s = self.lock();
        s.reserved = s.reserved.saturating_add(amount);
        Reservation {
            budget: self.clone(),
            amount,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Reservation {
    /// The answer cost `actual`: the reservation becomes spend.
    pub fn settle(self, actual: Money) {
        let mut s = self.budget.lock();
        s.spent = s.spent.saturating_add(actual);
        drop(s);
        // Dropping `self` now releases the reserved amount.
    }

    pub fn amount(&self) -> Money {
        self.amount
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut s = self.budget.lock();
        s.reserved = s.reserved.saturating_sub(self.amount);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_in_what_is_left_and_settle_into_spend() {
        let b = Budget::default();
        assert!(
            b.reserve(Money(u64::MAX)).is_some(),
            "no cap: everything fits"
        );
        b.limit(Money(100), Money(30));
        let a = b.reserve(Money(50)).unwrap();
        assert!(b.reserve(Money(21)).is_none());
        let c = b.reserve(Money(20)).unwrap();
        assert_eq!(b.standing().left(), Some(Money(0)));
        a.settle(Money(10));
        drop(c);
        let s = b.standing();
        assert_eq!(
            (s.spent, s.reserved, s.left()),
            (Money(40), Money(0), Some(Money(60)))
        );
    }
}
