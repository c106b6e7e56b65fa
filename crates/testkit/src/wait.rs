use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// The longest pause between two checks of [`eventually`] and [`eventually_blocking`]. The
/// first checks come sooner (1 ms, doubling up to this), so a condition that holds quickly is
/// seen quickly, and a long wait does not load a busy machine with checks.
pub const POLL: Duration = Duration::from_millis(20);

fn next(pause: Duration) -> Duration {
    (pause * 2).min(POLL)
}

/// Checks `cond` (at most [`POLL`] apart) until it returns `Ok`, and returns that value; panics after
/// `deadline` naming `what` and the last `Err` it saw (the state that was not yet right).
///
/// The deadline is measured on tokio's clock, so on a paused runtime it advances with the
/// paused time; on a real runtime it is wall time. `cond` runs at least once, even with a zero
/// deadline.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// let n = AtomicU32::new(0);
/// let seen = cutover_testkit::eventually(Duration::from_secs(5), "three polls", || async {
///     let v = n.fetch_add(1, Ordering::SeqCst) + 1;
///     if v >= 3 { Ok(v) } else { Err(format!("{v} polls")) }
/// })
/// .await;
/// assert_eq!(seen, 3);
/// # }
/// ```
pub async fn eventually<T, E, F, Fut>(deadline: Duration, what: &str, mut cond: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let last = match cond().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}; last seen:\n{last}");
        }
        tokio::time::sleep(pause).await;
        pause = next(pause);
    }
}

/// [`eventually`] for a condition that is a plain `bool` (a counter, a file, a flag): checks
/// `cond` until it holds; panics after `deadline` naming `what`.
pub async fn eventually_holds(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    eventually(deadline, what, || {
        std::future::ready(if cond() { Ok(()) } else { Err("not yet") })
    })
    .await
}

/// [`eventually`] for code outside an async runtime (a plain `#[test]`, a blocking thread):
/// same contract, measured on the monotonic clock (tokio's `Instant`, which outside a runtime
/// is the std one).
pub fn eventually_blocking<T, E, F>(deadline: Duration, what: &str, mut cond: F) -> T
where
    E: Display,
    F: FnMut() -> Result<T, E>,
{
    let start = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let last = match cond() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}; last seen:\n{last}");
        }
        std::thread::sleep(pause);
        pause = next(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn returns_the_first_ok_value() {
        let n = AtomicU32::new(0);
        let v = eventually(Duration::from_secs(1), "the third poll", || async {
            let v = n.fetch_add(1, Ordering::SeqCst);
            if v == 2 {
                Ok(v)
            } else {
                Err(v)
            }
        })
        .await;
        assert_eq!(v, 2);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "waiting for the impossible; last seen:\nstill 0")]
    async fn panics_after_the_deadline_with_what_and_the_last_state() {
        eventually(Duration::from_millis(100), "the impossible", || async {
            Err::<(), _>("still 0")
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn checks_soon_then_at_most_poll_apart() {
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        eventually(Duration::from_secs(1), "eight checks", || {
            at.push(start.elapsed());
            std::future::ready(if at.len() == 8 { Ok(()) } else { Err("") })
        })
        .await;
        let ms: Vec<u128> = at.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 1, 3, 7, 15, 31, 51, 71]);
    }

    #[test]
    fn blocking_form_checks_at_least_once() {
        assert_eq!(
            eventually_blocking(Duration::ZERO, "now", || Ok::<_, String>(7)),
            7
        );
    }

    #[test]
    #[should_panic(expected = "waiting for never")]
    fn blocking_form_panics_after_the_deadline() {
        eventually_blocking(Duration::from_millis(50), "never", || Err::<(), _>("no"));
    }
}
