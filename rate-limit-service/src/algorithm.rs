//! Window arithmetic: fixed window, sliding window and token bucket (GCRA), as pure
//! functions of the stored state, the hits asked for and an injected `now`.
//!
//! The memory store runs these functions directly; the Redis store runs the same arithmetic
//! in Lua (`store/scripts/*.lua`) so that read-decide-write is one atomic step on the server.
//! Times are microseconds since the Unix epoch (`now_us`): whole milliseconds would make the
//! emission interval of a `10000/second` bucket round to zero.
//!
//! The sliding window is a *conservative* sub-window counter: the window is cut into
//! [`SLIDING_BUCKETS`] buckets and a request is counted against every bucket that overlaps
//! the last window, including the oldest one in full. The counted span always contains any
//! window of the rule's length that ends now, so no such window ever admits more than the
//! limit (a two-window weighted estimate cannot promise that: it assumes the previous window's
//! requests were spread evenly). The price is that a hit is forgotten between one window and
//! one window plus one bucket (5%) after it was admitted.

use std::time::Duration;

/// Buckets per sliding window: 20 keeps the state small and the over-caution at 5%.
pub const SLIDING_BUCKETS: u64 = 20;

/// The outcome of one check against one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// How many hits the limit holds at once: the quota, or the burst of a token bucket.
    pub capacity: u64,
    /// Hits counted against the limit after this check (capacity − remaining).
    pub used: u64,
    pub remaining: u64,
    /// Until the counted hits are forgotten: the window's end, or a full bucket.
    pub reset: Duration,
    /// Until this request could be admitted; zero when it was. `None`: never, because it
    /// asks for more than the capacity.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// A denial remembered locally: nothing asking for more than `remaining` can pass
    /// before `reset` (set so by the store from the algorithm's own retry time).
    pub fn denied_from_cache(capacity: u64, remaining: u64, wait: Duration) -> Decision {
        Decision {
            allowed: false,
            capacity,
            used: capacity.saturating_sub(remaining),
            remaining,
            reset: wait,
            retry_after: Some(wait),
        }
    }

    /// True when the hits left are at most a fifth of the capacity (80% used).
    pub fn is_near_limit(&self) -> bool {
        self.used.saturating_mul(5) >= self.capacity.saturating_mul(4)
    }
}

/// How a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Fixed(FixedWindow),
    Sliding(SlidingWindow),
    TokenBucket(TokenBucket),
}

impl Policy {
    pub fn capacity(&self) -> u64 {
        match self {
            Policy::Fixed(f) => f.limit,
            Policy::Sliding(s) => s.limit,
            Policy::TokenBucket(b) => b.burst,
        }
    }
}

/// `limit` hits per window, windows aligned to the epoch (as envoyproxy/ratelimit does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedWindow {
    pub limit: u64,
    pub window: Duration,
}

impl FixedWindow {
    pub fn new(limit: u64, window: Duration) -> Self {
        FixedWindow { limit, window }
    }

    fn window_us(&self) -> u64 {
        duration_us(self.window).max(1)
    }

    /// The start of the window `now_us` falls in.
    pub fn window_start_us(&self, now_us: u64) -> u64 {
        now_us - now_us % self.window_us()
    }

    /// Judges a counter that already includes this check's hits (INCRBY's answer): every
    /// hit is counted, admitted or not, so a window once over stays over.
    pub fn decide(&self, count_after: u64, now_us: u64) -> Decision {
        let reset = Duration::from_micros(self.window_start_us(now_us) + self.window_us() - now_us);
        let allowed = count_after <= self.limit;
        Decision {
            allowed,
            capacity: self.limit,
            used: count_after.min(self.limit),
            remaining: self.limit.saturating_sub(count_after),
            reset,
            retry_after: if allowed {
                Some(Duration::ZERO)
            } else {
                Some(reset)
            },
        }
    }
}

/// `limit` hits in any window of length `window`, counted in [`SLIDING_BUCKETS`] buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlidingWindow {
    pub limit: u64,
    pub window: Duration,
}

/// A sliding window's counts: `(bucket index, hits)`, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlidingCounts {
    pub buckets: Vec<(u64, u64)>,
}

impl SlidingWindow {
    pub fn new(limit: u64, window: Duration) -> Self {
        SlidingWindow { limit, window }
    }

    pub fn window_us(&self) -> u64 {
        duration_us(self.window).max(SLIDING_BUCKETS)
    }

    /// Bucket length; a window is a whole number of buckets.
    pub fn bucket_us(&self) -> u64 {
        self.window_us() / SLIDING_BUCKETS
    }

    /// Counts `hits` if they fit, and says so. Buckets whose start is at least one window
    /// before the current bucket's start are dropped; the rest are all counted, so the span
    /// counted always covers `(now - window, now]`.
    pub fn decide(&self, counts: &mut SlidingCounts, now_us: u64, hits: u64) -> Decision {
        let bucket_us = self.bucket_us();
        let current = now_us / bucket_us;
        let first_counted = current.saturating_sub(SLIDING_BUCKETS);
        counts.buckets.retain(|(index, _)| *index >= first_counted);
        let count: u64 = counts.buckets.iter().map(|(_, n)| n).sum();
        let allowed = count.saturating_add(hits) <= self.limit;
        let count = if allowed && hits > 0 {
            match counts.buckets.last_mut() {
                Some((index, n)) if *index == current => *n += hits,
                _ => counts.buckets.push((current, hits)),
            }
            count + hits
        } else {
            count
        };
        // A bucket stops being counted once the current bucket is SLIDING_BUCKETS + 1 later.
        let leaves_at = |index: u64| (index + SLIDING_BUCKETS + 1) * bucket_us - now_us;
        let reset = counts.buckets.first().map_or(Duration::ZERO, |(index, _)| {
            Duration::from_micros(leaves_at(*index))
        });
        let retry_after = if allowed {
            Some(Duration::ZERO)
        } else if hits > self.limit {
            None
        } else {
            let mut left = count;
            counts.buckets.iter().find_map(|(index, n)| {
                left -= n;
                (left + hits <= self.limit).then(|| Duration::from_micros(leaves_at(*index)))
            })
        };
        Decision {
            allowed,
            capacity: self.limit,
            used: count.min(self.limit),
            remaining: self.limit.saturating_sub(count),
            reset,
            retry_after,
        }
    }
}

/// GCRA: one hit every `period / rate`, with room for `burst` hits at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    pub rate: u64,
    pub period: Duration,
    pub burst: u64,
}

impl TokenBucket {
    pub fn new(rate: u64, period: Duration, burst: u64) -> Self {
        TokenBucket {
            rate: rate.max(1),
            period,
            burst: burst.max(1),
        }
    }

    /// Time between two hits at the steady rate, rounded up so the rate is never exceeded.
    pub fn emission_us(&self) -> u64 {
        duration_us(self.period).div_ceil(self.rate).max(1)
    }

    /// `tat` is the theoretical arrival time stored for the key (absent for a new key);
    /// returns the decision and the `tat` to store.
    pub fn decide(&self, tat: Option<u64>, now_us: u64, hits: u64) -> (Decision, u64) {
        let emission = self.emission_us();
        let capacity_us = self.burst.saturating_mul(emission);
        let tat = tat.unwrap_or(now_us).max(now_us);
        let new_tat = tat.saturating_add(hits.saturating_mul(emission));
        let allowed = new_tat - now_us <= capacity_us;
        let stored = if allowed { new_tat } else { tat };
        let remaining = (capacity_us - (stored - now_us).min(capacity_us)) / emission;
        let retry_after = if allowed {
            Some(Duration::ZERO)
        } else if hits > self.burst {
            None
        } else {
            Some(Duration::from_micros(new_tat - capacity_us - now_us))
        };
        let decision = Decision {
            allowed,
            capacity: self.burst,
            used: self.burst - remaining.min(self.burst),
            remaining,
            reset: Duration::from_micros(stored - now_us),
            retry_after,
        };
        (decision, stored)
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Microseconds since the Unix epoch, from a `SystemTime`.
pub fn unix_micros(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(duration_us)
        .unwrap_or(0)
}

/// Where `now` comes from; tests use [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    fn now_us(&self) -> u64;
}

/// The system's wall clock: windows are aligned to the epoch, so instances sharing a Redis
/// must agree on the time (NTP), as with envoyproxy/ratelimit.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        unix_micros(std::time::SystemTime::now())
    }
}

/// A clock moved by hand.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl ManualClock {
    pub fn at(now_us: u64) -> Self {
        ManualClock(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
            now_us,
        )))
    }

    pub fn advance(&self, by: Duration) {
        self.0
            .fetch_add(duration_us(by), std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set(&self, now_us: u64) {
        self.0.store(now_us, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Whole seconds, rounded up (`retry-after` must not invite a retry that is still early).
pub fn seconds_rounded_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;
    /// A Monday, 2023-11-13 22:13:20 UTC: an arbitrary but realistic epoch offset.
    const T0: u64 = 1_700_000_000 * SECOND;

    #[test]
    fn fixed_window_admits_the_limit_then_refuses_until_the_window_ends() {
        let fixed = FixedWindow::new(3, Duration::from_secs(60));
        let now = T0 + 15 * SECOND;
        assert!(fixed.decide(3, now).allowed);
        let over = fixed.decide(4, now);
        assert!(!over.allowed);
        assert_eq!(over.remaining, 0);
        // T0 is 20 s into its minute: the window ends 60 - 20 - 15 = 25 s later.
        assert_eq!(over.reset, Duration::from_secs(25));
        assert_eq!(over.retry_after, Some(Duration::from_secs(25)));
        assert_eq!(fixed.window_start_us(now), T0 - 20 * SECOND);
    }

    #[test]
    fn fixed_window_remaining_counts_down() {
        let fixed = FixedWindow::new(10, Duration::from_secs(1));
        let d = fixed.decide(7, T0);
        assert_eq!((d.allowed, d.remaining, d.used), (true, 3, 7));
    }

    /// Replays `arrivals` (µs offsets, one hit each) and checks every window of the rule's
    /// length ending at an admitted hit: none may hold more than the limit.
    fn assert_no_window_exceeds(window: &SlidingWindow, arrivals: &[u64]) -> usize {
        let mut counts = SlidingCounts::default();
        let mut admitted = Vec::new();
        for &t in arrivals {
            if window.decide(&mut counts, T0 + t, 1).allowed {
                admitted.push(t);
            }
        }
        let w = window.window_us();
        for (i, &end) in admitted.iter().enumerate() {
            let inside = admitted[..=i].iter().filter(|&&t| t + w > end).count();
            assert!(
                inside as u64 <= window.limit,
                "{inside} hits admitted in the window ending at {end}"
            );
        }
        admitted.len()
    }

    #[test]
    fn sliding_window_never_admits_more_than_the_limit_in_any_window() {
        let window = SlidingWindow::new(10, Duration::from_secs(1));
        // A deterministic, bursty arrival pattern: xorshift gaps between 0 and 40 ms.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut t = 0;
        let mut arrivals = Vec::new();
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += x % 40_000;
            arrivals.push(t);
        }
        let admitted = assert_no_window_exceeds(&window, &arrivals);
        // And it is not uselessly strict: ~10/s over the run's length.
        let seconds = t / SECOND;
        assert!(admitted as u64 >= seconds * 9, "{admitted} in {seconds}s");
    }

    #[test]
    fn sliding_window_refuses_a_burst_straddling_the_window_edge() {
        // The case a fixed window gets wrong: 10 at the end of one window, 10 at the start
        // of the next.
        let window = SlidingWindow::new(10, Duration::from_secs(60));
        let mut counts = SlidingCounts::default();
        let end_of_minute = T0 - T0 % (60 * SECOND) + 59 * SECOND;
        for _ in 0..10 {
            assert!(window.decide(&mut counts, end_of_minute, 1).allowed);
        }
        let next = window.decide(&mut counts, end_of_minute + 2 * SECOND, 1);
        assert!(!next.allowed);
        // The bucket holding the 10 hits stops counting one window and at most one bucket
        // (3 s) later.
        let retry = next.retry_after.expect("a retry time");
        assert!(retry >= Duration::from_secs(58) && retry <= Duration::from_secs(61));
        assert!(
            window
                .decide(
                    &mut counts,
                    end_of_minute + 2 * SECOND + retry.as_micros() as u64,
                    1
                )
                .allowed
        );
    }

    #[test]
    fn sliding_window_query_with_zero_hits_counts_nothing() {
        let window = SlidingWindow::new(2, Duration::from_secs(1));
        let mut counts = SlidingCounts::default();
        let d = window.decide(&mut counts, T0, 0);
        assert_eq!((d.allowed, d.remaining), (true, 2));
        assert!(counts.buckets.is_empty());
    }

    #[test]
    fn sliding_window_refuses_more_hits_than_fit_without_counting_them() {
        let window = SlidingWindow::new(5, Duration::from_secs(1));
        let mut counts = SlidingCounts::default();
        assert!(window.decide(&mut counts, T0, 3).allowed);
        let d = window.decide(&mut counts, T0, 3);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 2);
        assert!(window.decide(&mut counts, T0, 2).allowed);
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_steady_rate() {
        // 10 per second (one every 100 ms), bursts of 5.
        let bucket = TokenBucket::new(10, Duration::from_secs(1), 5);
        let mut tat = None;
        for i in 0..5 {
            let (d, t) = bucket.decide(tat, T0, 1);
            assert!(d.allowed, "hit {i} of the burst");
            assert_eq!(d.remaining, 4 - i);
            tat = Some(t);
        }
        let (d, _) = bucket.decide(tat, T0, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
        let (d, t) = bucket.decide(tat, T0 + 100_000, 1);
        assert!(d.allowed);
        tat = Some(t);
        let (d, _) = bucket.decide(tat, T0 + 150_000, 1);
        assert!(!d.allowed, "the next token is 50 ms away");
        assert_eq!(d.retry_after, Some(Duration::from_millis(50)));
    }

    #[test]
    fn token_bucket_refills_to_the_burst_and_no_further() {
        let bucket = TokenBucket::new(10, Duration::from_secs(1), 5);
        let (_, tat) = bucket.decide(None, T0, 5);
        let (d, _) = bucket.decide(Some(tat), T0 + 60 * SECOND, 0);
        assert_eq!(d.remaining, 5);
        let (d, _) = bucket.decide(Some(tat), T0 + 60 * SECOND, 6);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, None, "6 never fit a bucket of 5");
    }

    #[test]
    fn token_bucket_admits_at_most_burst_plus_rate_over_time() {
        let bucket = TokenBucket::new(10, Duration::from_secs(1), 5);
        let mut tat = None;
        let mut admitted = 0;
        // One attempt every millisecond for 10 s.
        for ms in 0..10_000u64 {
            let (d, t) = bucket.decide(tat, T0 + ms * 1_000, 1);
            tat = Some(t);
            admitted += u64::from(d.allowed);
        }
        assert!((100..=105).contains(&admitted), "{admitted}");
    }

    #[test]
    fn near_limit_is_eighty_percent_used() {
        let fixed = FixedWindow::new(10, Duration::from_secs(1));
        assert!(!fixed.decide(7, T0).is_near_limit());
        assert!(fixed.decide(8, T0).is_near_limit());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(seconds_rounded_up(Duration::from_millis(1)), 1);
        assert_eq!(seconds_rounded_up(Duration::from_secs(2)), 2);
        assert_eq!(seconds_rounded_up(Duration::from_millis(2001)), 3);
    }
}
