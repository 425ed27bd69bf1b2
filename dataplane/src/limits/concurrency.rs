//! Requests in flight for one key: an atomic counter, taken with a
//! compare-and-swap (so a refused attempt never shows as a held slot to
//! another request) and given back when the request's context drops.

use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicU32,
}

impl InFlight {
    /// Takes a slot unless `limit` are taken.
    pub fn try_acquire(&self, limit: u32) -> bool {
        self.count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limit).then_some(n + 1)).is_ok()
    }

    /// Gives back a slot taken by [`try_acquire`](Self::try_acquire).
    pub fn release(&self) {
        let _ = self.count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Slots taken.
    pub fn current(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[test]
    fn never_more_than_the_limit_at_once() {
        let slots = Arc::new(InFlight::default());
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (slots, peak) = (slots.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if slots.try_acquire(3) {
                            peak.fetch_max(slots.current(), Ordering::Relaxed);
                            slots.release();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap_or_else(|_| panic!("thread"));
        }
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(slots.current(), 0, "every slot came back");
    }
}
