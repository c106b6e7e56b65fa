//! Leadership: only the replica holding the `Lease` writes (argo-rollouts #2117: two leaders
//! reconciling at once).
//!
//! [`Leadership`] is what the reconcile asks before every write. It is the conjunction of
//! two things:
//!
//! - `kube-lease-manager`'s watch channel, which acquires and renews the Lease (server-side
//!   apply, so two replicas cannot both lock it) and reports when this replica gains or
//!   loses it;
//! - a *fence*: the channel reports a change only when the manager *sees* one; when renewals
//!   merely fail (the API server unreachable from this pod), it keeps saying `true`. So the
//!   controller also reads the Lease itself and keeps a local deadline, `renewTime +
//!   leaseDuration - grace`; past it, this replica stops writing, `grace` seconds before the
//!   Lease expires and anyone else may take it ([`valid_for`], the skew it tolerates).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Whether this replica holds the lease, as last reported and not yet past its fence.
#[derive(Debug, Clone)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    /// `None`: no fence (tests, `--no-leader-election`).
    fence: Option<Arc<Mutex<Instant>>>,
}

impl Leadership {
    /// Follows a channel that says whether the lease is held, fenced by `fence` (moved
    /// forward by [`Leadership::confirm`]).
    pub fn fenced(rx: watch::Receiver<bool>) -> Self {
        Leadership {
            rx,
            fence: Some(Arc::new(Mutex::new(Instant::now()))),
        }
    }

    /// Always the leader: for `cutover controller --no-leader-election` (one replica).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        // The sender is dropped: the value stays `true` for good.
        drop(tx);
        Leadership { rx, fence: None }
    }

    /// Leadership a test takes away through the sender.
    pub fn manual(initial: bool) -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(initial);
        (tx, Leadership { rx, fence: None })
    }

    /// The Lease was read and is ours for `valid` more (see [`valid_for`]).
    pub fn confirm(&self, valid: Duration) {
        if let Some(f) = &self.fence {
            if let Ok(mut f) = f.lock() {
                *f = Instant::now() + valid;
            }
        }
    }

    pub fn is_leader(&self) -> bool {
        let fenced = self
            .fence
            .as_ref()
            .is_none_or(|f| f.lock().is_ok_and(|f| Instant::now() < *f));
        *self.rx.borrow() && fenced
    }

    /// Waits until this replica may write: the lease held and, when fenced, confirmed by a
    /// read of the Lease (false if the manager stopped first).
    pub async fn acquired(&mut self) -> bool {
        loop {
            if self.is_leader() {
                return true;
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        // The manager is gone: nothing will change any more.
                        return self.is_leader();
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Waits until this replica may no longer write: the manager saw the lease lost, or the
    /// fence ran out (renewals failing).
    pub async fn lost(&mut self) {
        loop {
            if !self.is_leader() {
                return;
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        if self.fence.is_none() {
                            // `always()`: the value can never change.
                            std::future::pending::<()>().await;
                        }
                        // The lease manager is gone: nobody renews the Lease any more.
                        return;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// How much longer this replica may write, from a Lease it just read: nothing unless it is
/// the holder; else until `grace` before the Lease expires (`renew + duration`), counted on
/// the wall clock `now` (both in Unix ms). `grace` is the clock skew between nodes tolerated.
pub fn valid_for(
    holder: Option<&str>,
    identity: &str,
    renew_ms: Option<i64>,
    duration_s: i64,
    grace_s: i64,
    now_ms: i64,
) -> Duration {
    match (holder, renew_ms) {
        (Some(h), Some(renew)) if h == identity => {
            let until = renew + (duration_s - grace_s) * 1000;
            Duration::from_millis(u64::try_from(until - now_ms).unwrap_or(0))
        }
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_ends_grace_before_the_lease_expires() {
        // Renewed at t=100 s for 15 s with 5 s of grace: writes until 110 s.
        let v = valid_for(Some("a"), "a", Some(100_000), 15, 5, 104_000);
        assert_eq!(v, Duration::from_secs(6));
        assert_eq!(
            valid_for(Some("a"), "a", Some(100_000), 15, 5, 111_000),
            Duration::ZERO
        );
        assert_eq!(
            valid_for(Some("b"), "a", Some(100_000), 15, 5, 100_000),
            Duration::ZERO
        );
        assert_eq!(valid_for(None, "a", None, 15, 5, 0), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_past_its_fence_is_not_the_leader_though_the_channel_says_so() {
        let (tx, rx) = watch::channel(true);
        let l = Leadership::fenced(rx);
        assert!(!l.is_leader(), "no confirmation yet");
        l.confirm(Duration::from_secs(10));
        assert!(l.is_leader());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!l.is_leader(), "renewals failed: the fence ends the writes");
        l.confirm(Duration::from_secs(10));
        tx.send(false).unwrap();
        assert!(!l.is_leader(), "the manager saw the lease taken");
    }

    #[tokio::test(start_paused = true)]
    async fn lost_returns_when_the_fence_runs_out() {
        let (_tx, rx) = watch::channel(true);
        let mut l = Leadership::fenced(rx);
        l.confirm(Duration::from_secs(10));
        assert!(l.acquired().await);
        let t0 = Instant::now();
        l.lost().await;
        assert!(
            t0.elapsed() >= Duration::from_secs(10),
            "{:?}",
            t0.elapsed()
        );
    }
}
