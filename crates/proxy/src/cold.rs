//! Cold start: until the first instance is ready, a request waits for it (bounded) instead of
//! being answered 503.
//!
//! A restarted cutover accepts connections at once (its listeners may have queued them while
//! it was down, see socket activation), but its instances are still starting: without this, every
//! request in that gap would get "no ready instance". The host arms the hold when it knows
//! instances are about to start ([`crate::Proxy::hold_while_cold`]); the first table with a
//! ready backend ends it for good, and so does the bound. After that a table without backends
//! answers 503 at once, as before: the hold is for a start, not for a fleet that lost its
//! instances.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
pub(crate) struct Cold {
    /// Read by every request: the only cost once warm.
    cold: AtomicBool,
    until: Mutex<Option<Instant>>,
    published: Notify,
}

impl Cold {
    /// Requests wait for a routable table, at most until `bound` from now.
    pub(crate) fn hold(&self, bound: Duration) {
        *self.until.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + bound);
        self.cold.store(true, Ordering::Release);
    }

    /// A table was published; `routable`: some pool in it has a backend.
    pub(crate) fn published(&self, routable: bool) {
        if routable {
            self.cold.store(false, Ordering::Release);
        }
        self.published.notify_waiters();
    }

    /// Whether requests are being held now.
    pub(crate) fn is_held(&self) -> bool {
        self.cold.load(Ordering::Acquire)
    }

    /// Returns at once when warm; else when a routable table is published or the bound passes.
    pub(crate) async fn wait(&self) {
        if !self.cold.load(Ordering::Acquire) {
            return;
        }
        let Some(until) = *self.until.lock().unwrap_or_else(PoisonError::into_inner) else {
            return;
        };
        loop {
            let published = self.published.notified();
            let mut published = std::pin::pin!(published);
            // Registered before the check, so a publication between the two is not missed.
            published.as_mut().enable();
            if !self.cold.load(Ordering::Acquire) {
                return;
            }
            if Instant::now() >= until {
                self.cold.store(false, Ordering::Release);
                return;
            }
            tokio::select! {
                () = published => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn warm_returns_at_once_and_cold_waits_for_a_routable_table_or_the_bound() {
        let c = std::sync::Arc::new(Cold::default());
        let start = Instant::now();
        c.wait().await;
        assert_eq!(Instant::now(), start, "never held: no wait");

        c.hold(Duration::from_secs(10));
        let waiter = tokio::spawn({
            let c = c.clone();
            async move {
                c.wait().await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.published(false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !waiter.is_finished(),
            "a table without backends does not end the hold"
        );
        c.published(true);
        let woke = waiter.await.unwrap();
        assert_eq!(woke - start, Duration::from_secs(2));

        // Warm for good: a later empty table does not hold again.
        c.published(false);
        let t = Instant::now();
        c.wait().await;
        assert_eq!(Instant::now(), t);

        // The bound: held again, nothing published, released after it.
        c.hold(Duration::from_secs(5));
        let t = Instant::now();
        c.wait().await;
        assert_eq!(Instant::now() - t, Duration::from_secs(5));
    }
}
