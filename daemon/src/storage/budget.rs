//! The memory budget: an atomic byte counter with a cap, and RAII
//! reservations against it.
//!
//! Every byte of object data held in memory — by a writer still receiving it
//! or by a committed in-memory object — is covered by a [`Reservation`], so
//! `used() <= cap` holds at every instant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes of object data allowed in memory, and how many are reserved.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    cap: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    pub(crate) fn new(cap: u64) -> Arc<Self> {
        Arc::new(Self {
            cap,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes currently reserved.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Reserve `n` bytes if that keeps the total within the cap.
    fn try_reserve(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                cur.checked_add(n).filter(|&total| total <= self.cap)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        let prev = self.used.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(prev >= n, "memory budget underflow: {prev} < {n}");
    }
}

/// Bytes reserved from a [`MemoryBudget`]; released when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Reservation {
    /// A reservation of zero bytes, to be grown.
    pub(crate) fn empty(budget: &Arc<MemoryBudget>) -> Self {
        Self {
            budget: Arc::clone(budget),
            bytes: 0,
        }
    }

    /// Reserve `n` bytes at once, or nothing.
    pub(crate) fn try_new(budget: &Arc<MemoryBudget>, n: u64) -> Option<Self> {
        let mut r = Self::empty(budget);
        r.try_grow(n).then_some(r)
    }

    /// Add `n` bytes to this reservation if the budget allows.
    pub(crate) fn try_grow(&mut self, n: u64) -> bool {
        if n == 0 {
            return true;
        }
        let ok = self.budget.try_reserve(n);
        if ok {
            self.bytes += n;
        }
        ok
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_respect_cap_and_release_on_drop() {
        let b = MemoryBudget::new(100);
        let mut r1 = Reservation::empty(&b);
        assert!(r1.try_grow(60));
        assert!(!r1.try_grow(41), "would exceed the cap");
        assert_eq!(r1.bytes(), 60);
        let r2 = Reservation::try_new(&b, 40).expect("fits exactly");
        assert!(Reservation::try_new(&b, 1).is_none());
        assert_eq!(b.used(), 100);
        drop(r1);
        assert_eq!(b.used(), 40);
        drop(r2);
        assert_eq!(b.used(), 0);
        assert!(Reservation::try_new(&b, u64::MAX).is_none(), "no overflow");
    }

    #[test]
    fn concurrent_reservations_never_exceed_cap() {
        let b = MemoryBudget::new(1000);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        if let Some(r) = Reservation::try_new(&b, 7) {
                            assert!(b.used() <= 1000);
                            drop(r);
                        }
                    }
                });
            }
        });
        assert_eq!(b.used(), 0);
    }
}
