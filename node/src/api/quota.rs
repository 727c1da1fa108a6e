//! Quotas per API key: requests per minute (a sliding window), tokens per UTC day and
//! requests in flight. Pure: the clock is passed in (milliseconds since the Unix epoch),
//! so the rules are tested without waiting.
//!
//! Tokens are counted after a generation ends (its prompt and completion tokens; a failed
//! generation counts zero), so a key under its daily budget may overshoot it by one
//! request; the next one is refused. The day's counts are what `/v1/usage` shows and what
//! the node persists ([`UsageBook`]), so a restart does not reset a day's budget.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::keys::Limits;

/// The window of the requests-per-minute limit.
pub const MINUTE_MS: u64 = 60_000;
/// A UTC day.
pub const DAY_MS: u64 = 86_400_000;

/// Why a request over a quota is refused, and when it may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub limit: Exceeded,
    /// Seconds until the request would be admitted (at least 1), for `Retry-After`.
    pub retry_after_secs: u64,
}

/// Which limit a refused request hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    RequestsPerMinute(u32),
    TokensPerDay(u64),
    Concurrent(u32),
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::RequestsPerMinute(n) => write!(f, "{n} requests per minute"),
            Exceeded::TokensPerDay(n) => write!(f, "{n} tokens per day"),
            Exceeded::Concurrent(n) => write!(f, "{n} requests at once"),
        }
    }
}

/// A key's counts for one UTC day: what is persisted and shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayUsage {
    /// Days since the Unix epoch (UTC).
    pub day: u64,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl DayUsage {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// Every key's counts of the day, by key name: the persisted form.
pub type UsageBook = BTreeMap<String, DayUsage>;

/// One request in flight for a key; dropping it frees the slot.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Default)]
struct KeyState {
    /// Admission times within the last minute, oldest first; never longer than the
    /// key's `rpm` (the window is pruned before each admission).
    window: VecDeque<u64>,
    day: DayUsage,
    in_flight: Arc<AtomicU32>,
}

/// Every key's quota state.
#[derive(Debug, Default)]
pub struct Quotas {
    keys: HashMap<String, KeyState>,
}

fn day_of(now_ms: u64) -> u64 {
    now_ms / DAY_MS
}

/// Seconds from `now_ms` until `until_ms`, rounded up, at least 1.
fn secs_until(now_ms: u64, until_ms: u64) -> u64 {
    until_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

impl Quotas {
    /// Quotas with the day's counts of a previous run (those of another day are dropped).
    pub fn from_book(book: &UsageBook, now_ms: u64) -> Self {
        let today = day_of(now_ms);
        let keys = book
            .iter()
            .filter(|(_, u)| u.day == today)
            .map(|(name, u)| {
                (
                    name.clone(),
                    KeyState {
                        day: *u,
                        ..KeyState::default()
                    },
                )
            })
            .collect();
        Self { keys }
    }

    fn state(&mut self, name: &str, now_ms: u64) -> &mut KeyState {
        let st = self.keys.entry(name.to_owned()).or_default();
        let today = day_of(now_ms);
        if st.day.day != today {
            st.day = DayUsage {
                day: today,
                ..DayUsage::default()
            };
        }
        st
    }

    /// Admits a request of key `name` at `now_ms`, or says which limit refuses it. An
    /// admitted request counts toward the minute and the day, and holds a slot until the
    /// returned guard drops.
    pub fn admit(&mut self, name: &str, limits: &Limits, now_ms: u64) -> Result<InFlight, Refusal> {
        let st = self.state(name, now_ms);
        if let Some(max) = limits.concurrent {
            if st.in_flight.load(Ordering::Acquire) >= max {
                return Err(Refusal {
                    limit: Exceeded::Concurrent(max),
                    retry_after_secs: 1,
                });
            }
        }
        if let Some(max) = limits.tokens_per_day {
            if st.day.tokens() >= max {
                return Err(Refusal {
                    limit: Exceeded::TokensPerDay(max),
                    retry_after_secs: secs_until(now_ms, (day_of(now_ms) + 1) * DAY_MS),
                });
            }
        }
        let from = now_ms.saturating_sub(MINUTE_MS);
        while st.window.front().is_some_and(|&t| t <= from) {
            st.window.pop_front();
        }
        match limits.rpm {
            Some(max) => {
                if st.window.len() >= max as usize {
                    let oldest = st.window.front().copied().unwrap_or(now_ms);
                    return Err(Refusal {
                        limit: Exceeded::RequestsPerMinute(max),
                        retry_after_secs: secs_until(now_ms, oldest + MINUTE_MS),
                    });
                }
                st.window.push_back(now_ms);
            }
            None => st.window.clear(),
        }
        st.day.requests = st.day.requests.saturating_add(1);
        st.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(InFlight(st.in_flight.clone()))
    }

    /// Counts a finished generation's tokens for key `name`.
    pub fn add_tokens(&mut self, name: &str, prompt: u64, completion: u64, now_ms: u64) {
        let st = self.state(name, now_ms);
        st.day.prompt_tokens = st.day.prompt_tokens.saturating_add(prompt);
        st.day.completion_tokens = st.day.completion_tokens.saturating_add(completion);
    }

    /// Key `name`'s counts today, and its requests in flight.
    pub fn usage(&self, name: &str, now_ms: u64) -> (DayUsage, u32) {
        let today = day_of(now_ms);
        match self.keys.get(name) {
            Some(st) if st.day.day == today => (st.day, st.in_flight.load(Ordering::Acquire)),
            Some(st) => (
                DayUsage {
                    day: today,
                    ..DayUsage::default()
                },
                st.in_flight.load(Ordering::Acquire),
            ),
            None => (
                DayUsage {
                    day: today,
                    ..DayUsage::default()
                },
                0,
            ),
        }
    }

    /// Today's counts of every key, to persist.
    pub fn book(&self) -> UsageBook {
        self.keys
            .iter()
            .filter(|(_, st)| st.day.requests > 0 || st.day.tokens() > 0)
            .map(|(n, st)| (n.clone(), st.day))
            .collect()
    }
}

/// A day number as `YYYY-MM-DD` (proleptic Gregorian, UTC).
pub fn day_text(day: u64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let (y, mo, d) = civil_from_days(ms / DAY_MS);
    let in_day = ms % DAY_MS;
    let (h, mi, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Howard Hinnant's days-to-civil algorithm, for days since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_796_000_000_000; // an instant well inside a day

    fn lim(rpm: Option<u32>, tpd: Option<u64>, conc: Option<u32>) -> Limits {
        Limits {
            rpm,
            tokens_per_day: tpd,
            concurrent: conc,
        }
    }

    #[test]
    fn rpm_is_a_sliding_minute_with_retry_after_the_oldest_leaves() {
        let mut q = Quotas::default();
        let l = lim(Some(2), None, None);
        drop(q.admit("a", &l, T0).unwrap());
        drop(q.admit("a", &l, T0 + 10_000).unwrap());
        let r = q.admit("a", &l, T0 + 20_500).unwrap_err();
        assert_eq!(r.limit, Exceeded::RequestsPerMinute(2));
        assert_eq!(r.retry_after_secs, 40); // 39.5 s rounded up
                                            // Another key is not affected.
        assert!(q.admit("b", &l, T0 + 20_500).is_ok());
        // The oldest leaves the window at T0 + 60 s.
        assert!(q.admit("a", &l, T0 + 60_000).is_ok());
        assert!(q.admit("a", &l, T0 + 60_001).is_err());
        assert_eq!(q.usage("a", T0 + 60_001).0.requests, 3);
    }

    #[test]
    fn tokens_per_day_refuse_until_utc_midnight_and_reset() {
        let mut q = Quotas::default();
        let l = lim(None, Some(100), None);
        drop(q.admit("a", &l, T0).unwrap());
        q.add_tokens("a", 60, 50, T0);
        let r = q.admit("a", &l, T0 + 1).unwrap_err();
        assert_eq!(r.limit, Exceeded::TokensPerDay(100));
        let midnight = (T0 / DAY_MS + 1) * DAY_MS;
        assert_eq!(r.retry_after_secs, (midnight - T0 - 1).div_ceil(1000));
        let (u, _) = q.usage("a", T0 + 1);
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.tokens()),
            (60, 50, 110)
        );
        assert!(q.admit("a", &l, midnight).is_ok());
        assert_eq!(q.usage("a", midnight).0.tokens(), 0);
    }

    #[test]
    fn concurrent_slots_free_when_the_guard_drops() {
        let mut q = Quotas::default();
        let l = lim(None, None, Some(2));
        let g1 = q.admit("a", &l, T0).unwrap();
        let _g2 = q.admit("a", &l, T0).unwrap();
        let r = q.admit("a", &l, T0).unwrap_err();
        assert_eq!(r.limit, Exceeded::Concurrent(2));
        assert_eq!(r.retry_after_secs, 1);
        assert_eq!(q.usage("a", T0).1, 2);
        drop(g1);
        assert!(q.admit("a", &l, T0).is_ok());
        // A refused request is not counted.
        assert_eq!(q.usage("a", T0).0.requests, 3);
    }

    #[test]
    fn the_book_carries_todays_counts_only() {
        let mut q = Quotas::default();
        drop(q.admit("a", &Limits::default(), T0).unwrap());
        q.add_tokens("a", 3, 4, T0);
        let book = q.book();
        assert_eq!(book["a"].requests, 1);
        let again = Quotas::from_book(&book, T0 + 5);
        assert_eq!(again.usage("a", T0 + 5).0, book["a"]);
        let tomorrow = Quotas::from_book(&book, T0 + DAY_MS);
        assert_eq!(tomorrow.usage("a", T0 + DAY_MS).0.requests, 0);
        // A limit hit by restored counts still refuses.
        let mut again = Quotas::from_book(&book, T0 + 5);
        assert!(again.admit("a", &lim(None, Some(7), None), T0 + 6).is_err());
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(day_text(0), "1970-01-01");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // 2000-03-01 (a leap year's February behind it).
        assert_eq!(day_text(11_017), "2000-03-01");
        assert_eq!(rfc3339_ms(1_796_647_354_123), "2026-12-07T12:42:34.123Z");
    }
}
