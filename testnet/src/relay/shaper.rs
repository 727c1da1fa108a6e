//! The shaping core: what a link does to one datagram, without I/O or clocks.
//!
//! Time is a [`Duration`] since an epoch the caller picks (the relay uses its start), and
//! randomness comes from the RNG the [`Shaper`] is built with, so a seed replays the same
//! decisions.

use std::time::Duration;

use rand::Rng;

use super::RelayError;

/// Depth of the bandwidth token bucket: bursts up to this many bytes pass at line rate.
pub const BUCKET_DEPTH: u64 = 64 * 1024;

/// What one direction of a link does to datagrams.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkSpec {
    /// One-way delay added to every datagram.
    pub latency: Duration,
    /// Each datagram's delay is `latency + u`, `u` uniform in `[-jitter, +jitter]`, clamped
    /// at 0. Jitter never reorders (see [`Shaper`]).
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a datagram is dropped.
    pub loss: f64,
    /// Bits per second (token bucket of [`BUCKET_DEPTH`] bytes); `None`: unlimited.
    pub bandwidth_bps: Option<u64>,
}

impl LinkSpec {
    /// A link that only adds `latency`.
    pub fn latency(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }

    /// Whether the link does nothing (datagrams pass at once).
    pub fn is_transparent(&self) -> bool {
        self.latency.is_zero()
            && self.jitter.is_zero()
            && self.loss <= 0.0
            && self.bandwidth_bps.is_none()
    }

    /// A spec from the CLI forms (`--latency 20ms --jitter 2ms --loss 0.1% --bandwidth
    /// 100mbit`); absent parts are zero / unlimited.
    pub fn from_cli(
        latency: Option<&str>,
        jitter: Option<&str>,
        loss: Option<&str>,
        bandwidth: Option<&str>,
    ) -> Result<Self, RelayError> {
        let spec = Self {
            latency: latency.map(parse_duration).transpose()?.unwrap_or_default(),
            jitter: jitter.map(parse_duration).transpose()?.unwrap_or_default(),
            loss: loss.map(parse_loss).transpose()?.unwrap_or(0.0),
            bandwidth_bps: bandwidth.map(parse_bandwidth).transpose()?,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the ranges (loss in `[0, 1]`, bandwidth > 0).
    pub fn validate(&self) -> Result<(), RelayError> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(RelayError::Loss(format!("{}", self.loss)));
        }
        if self.bandwidth_bps == Some(0) {
            return Err(RelayError::Bandwidth("0".into()));
        }
        Ok(())
    }
}

impl std::fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "latency {:?}", self.latency)?;
        if !self.jitter.is_zero() {
            write!(f, " jitter {:?}", self.jitter)?;
        }
        if self.loss > 0.0 {
            write!(f, " loss {}%", self.loss * 100.0)?;
        }
        match self.bandwidth_bps {
            Some(b) => write!(f, " bandwidth {b} bit/s"),
            None => write!(f, " bandwidth unlimited"),
        }
    }
}

fn split_number(s: &str) -> (&str, &str) {
    let t = s.trim();
    let at = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, u) = t.split_at(at);
    (n, u.trim())
}

/// `20ms`, `2.5ms`, `500us`, `1s`, `0` (a bare number is milliseconds).
pub fn parse_duration(s: &str) -> Result<Duration, RelayError> {
    let bad = || RelayError::Duration(s.to_string());
    let (num, unit) = split_number(s);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.to_ascii_lowercase().as_str() {
        "" | "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "ns" => n / 1e9,
        "s" => n,
        _ => return Err(bad()),
    };
    if !(secs.is_finite() && (0.0..=3600.0).contains(&secs)) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `0.1%` (a percentage) or `0.001` (a probability); in `[0, 1]`.
pub fn parse_loss(s: &str) -> Result<f64, RelayError> {
    let bad = || RelayError::Loss(s.to_string());
    let (num, unit) = split_number(s);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let p = match unit {
        "%" => n / 100.0,
        "" => n,
        _ => return Err(bad()),
    };
    if !(0.0..=1.0).contains(&p) {
        return Err(bad());
    }
    Ok(p)
}

/// `100mbit`, `1gbit`, `500kbit`, `9600bit` (tc's units: bits per second, powers of 1000).
pub fn parse_bandwidth(s: &str) -> Result<u64, RelayError> {
    let bad = || RelayError::Bandwidth(s.to_string());
    let (num, unit) = split_number(s);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        _ => return Err(bad()),
    };
    let bps = n * mult;
    if !(bps.is_finite() && (1.0..1e15).contains(&bps)) {
        return Err(bad());
    }
    Ok(bps as u64)
}

/// What happens to a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped by the loss model.
    Lost,
    /// Sent on at this time (since the epoch).
    Release(Duration),
}

/// One direction of a link: decides, for each datagram in arrival order, whether it is lost
/// and when it leaves.
///
/// A datagram first waits for bandwidth tokens (a token bucket of [`BUCKET_DEPTH`] bytes
/// that starts full, refilled at `bandwidth_bps`; datagrams queue for tokens in FIFO order
/// rather than being dropped), then for `latency ± jitter`. Release times never decrease:
/// a datagram that drew a shorter delay than its predecessor leaves right after it, so
/// jitter never reorders datagrams (like netem with a `rate`); the mean delay is then a
/// little above `latency` when datagrams come closer together than `2 * jitter`.
/// Lost datagrams consume no tokens.
#[derive(Debug)]
pub struct Shaper<R> {
    spec: LinkSpec,
    rng: R,
    /// Bucket fill (bytes) at `tokens_at`.
    tokens: f64,
    tokens_at: Duration,
    /// When the previous datagram got its tokens (FIFO through the bucket).
    bucket_free_at: Duration,
    /// The previous release time.
    last_release: Duration,
}

impl<R: Rng> Shaper<R> {
    pub fn new(spec: LinkSpec, rng: R) -> Self {
        Self {
            spec,
            rng,
            tokens: BUCKET_DEPTH as f64,
            tokens_at: Duration::ZERO,
            bucket_free_at: Duration::ZERO,
            last_release: Duration::ZERO,
        }
    }

    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    /// The fate of a datagram of `len` bytes arriving at `now`. Calls must come in arrival
    /// order (`now` non-decreasing).
    pub fn offer(&mut self, now: Duration, len: usize) -> Verdict {
        if self.spec.loss > 0.0 && self.rng.random::<f64>() < self.spec.loss {
            return Verdict::Lost;
        }
        let sent = match self.spec.bandwidth_bps {
            None => now,
            Some(bps) => self.take_tokens(now, len as f64, bps as f64 / 8.0),
        };
        let mut delay = self.spec.latency;
        if !self.spec.jitter.is_zero() {
            let j = self.spec.jitter.as_secs_f64();
            let d = delay.as_secs_f64() + self.rng.random_range(-j..=j);
            delay = Duration::from_secs_f64(d.max(0.0));
        }
        let release = (sent + delay).max(self.last_release);
        self.last_release = release;
        Verdict::Release(release)
    }

    /// When `len` bytes have their tokens, for a datagram arriving at `now`.
    fn take_tokens(&mut self, now: Duration, len: f64, bytes_per_sec: f64) -> Duration {
        let t = now.max(self.bucket_free_at);
        let refill = t.saturating_sub(self.tokens_at).as_secs_f64() * bytes_per_sec;
        self.tokens = (self.tokens + refill).min(BUCKET_DEPTH as f64);
        self.tokens_at = t;
        let at = if self.tokens >= len {
            self.tokens -= len;
            t
        } else {
            let wait = (len - self.tokens) / bytes_per_sec;
            let at = t + Duration::from_secs_f64(wait);
            self.tokens = 0.0;
            self.tokens_at = at;
            at
        };
        self.bucket_free_at = at;
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn shaper(spec: LinkSpec) -> Shaper<StdRng> {
        Shaper::new(spec, StdRng::seed_from_u64(7))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_cli_forms() {
        assert_eq!(parse_duration("20ms").unwrap(), ms(20));
        assert_eq!(
            parse_duration("2.5ms").unwrap(),
            Duration::from_micros(2500)
        );
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("1s").unwrap(), ms(1000));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!((parse_loss("0.1%").unwrap() - 0.001).abs() < 1e-12);
        assert_eq!(parse_loss("100%").unwrap(), 1.0);
        assert_eq!(parse_loss("0.25").unwrap(), 0.25);
        assert_eq!(parse_bandwidth("100mbit").unwrap(), 100_000_000);
        assert_eq!(parse_bandwidth("1gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_bandwidth("500kbit").unwrap(), 500_000);
        assert_eq!(parse_bandwidth("1.5Mbit").unwrap(), 1_500_000);
        let spec =
            LinkSpec::from_cli(Some("20ms"), Some("2ms"), Some("0.1%"), Some("100mbit")).unwrap();
        assert_eq!(spec.latency, ms(20));
        assert_eq!(spec.jitter, ms(2));
        assert_eq!(spec.bandwidth_bps, Some(100_000_000));
        assert!(LinkSpec::from_cli(None, None, None, None)
            .unwrap()
            .is_transparent());
    }

    #[test]
    fn rejects_bad_forms() {
        assert!(matches!(
            parse_duration("20 parsecs"),
            Err(RelayError::Duration(_))
        ));
        assert!(matches!(
            parse_duration("-3ms"),
            Err(RelayError::Duration(_))
        ));
        assert!(matches!(parse_loss("120%"), Err(RelayError::Loss(_))));
        assert!(matches!(parse_loss("1.5"), Err(RelayError::Loss(_))));
        assert!(matches!(
            parse_bandwidth("100mbps"),
            Err(RelayError::Bandwidth(_))
        ));
        assert!(matches!(
            parse_bandwidth("100"),
            Err(RelayError::Bandwidth(_))
        ));
        assert!(matches!(
            parse_bandwidth("0kbit"),
            Err(RelayError::Bandwidth(_))
        ));
    }

    #[test]
    fn transparent_link_releases_at_once() {
        let mut s = shaper(LinkSpec::default());
        for i in 0..100 {
            assert_eq!(s.offer(ms(i), 1200), Verdict::Release(ms(i)));
        }
    }

    #[test]
    fn releases_are_monotonic_and_average_the_latency() {
        let spec = LinkSpec {
            latency: ms(20),
            jitter: ms(5),
            ..LinkSpec::default()
        };
        let mut s = shaper(spec);
        let mut last = Duration::ZERO;
        let mut total = 0.0;
        let n = 10_000u64;
        // 10 ms apart (more than 2 * jitter): the FIFO clamp never bites, the mean is exact.
        for i in 0..n {
            let now = ms(10 * i);
            let Verdict::Release(r) = s.offer(now, 1200) else {
                panic!("no loss configured")
            };
            assert!(r >= last, "release times went back");
            assert!(
                r >= now + ms(15) && r <= now + ms(25),
                "{r:?} outside ±jitter"
            );
            last = r;
            total += (r - now).as_secs_f64();
        }
        let mean = total / n as f64;
        assert!((mean - 0.020).abs() < 0.0003, "mean delay {mean}");
    }

    #[test]
    fn jitter_never_reorders_back_to_back_datagrams() {
        let spec = LinkSpec {
            latency: ms(2),
            jitter: ms(2),
            ..LinkSpec::default()
        };
        let mut s = shaper(spec);
        let mut last = Duration::ZERO;
        for i in 0..10_000u64 {
            let Verdict::Release(r) = s.offer(Duration::from_micros(10 * i), 100) else {
                unreachable!()
            };
            assert!(r >= last);
            last = r;
        }
    }

    #[test]
    fn loss_rate_matches_the_spec() {
        for p in [0.001, 0.1, 0.5] {
            let mut s = shaper(LinkSpec {
                loss: p,
                ..LinkSpec::default()
            });
            let n = 200_000;
            let lost = (0..n)
                .filter(|&i| s.offer(Duration::from_micros(i), 1200) == Verdict::Lost)
                .count();
            let rate = lost as f64 / n as f64;
            // 5 standard deviations of a binomial.
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((rate - p).abs() < 5.0 * sd, "p {p}: measured {rate}");
        }
        let mut all = shaper(LinkSpec {
            loss: 1.0,
            ..LinkSpec::default()
        });
        assert!((0..1000).all(|i| all.offer(ms(i), 1) == Verdict::Lost));
    }

    #[test]
    fn bandwidth_bounds_throughput() {
        let bps = 10_000_000u64; // 10 mbit: 1.25 MB/s
        let mut s = shaper(LinkSpec {
            bandwidth_bps: Some(bps),
            ..LinkSpec::default()
        });
        // 2 MB offered at once: all but the bucket's burst wait for tokens.
        let len = 1200usize;
        let n = 2_000_000 / len;
        let mut last = Duration::ZERO;
        for _ in 0..n {
            let Verdict::Release(r) = s.offer(Duration::ZERO, len) else {
                unreachable!()
            };
            assert!(r >= last);
            last = r;
        }
        let bytes = (n * len) as f64;
        let min = (bytes - BUCKET_DEPTH as f64) * 8.0 / bps as f64;
        let max = bytes * 8.0 / bps as f64;
        let took = last.as_secs_f64();
        assert!(took >= min - 1e-9, "{took} < {min}");
        assert!(took <= max + 1e-9, "{took} > {max}");
        // After an idle second the bucket is full again: a burst passes at once.
        let idle = last + ms(1000);
        assert_eq!(s.offer(idle, len), Verdict::Release(idle));
    }

    #[test]
    fn paced_below_the_rate_nothing_waits() {
        let mut s = shaper(LinkSpec {
            latency: ms(5),
            bandwidth_bps: Some(100_000_000),
            ..LinkSpec::default()
        });
        // 1200 B every 1 ms = 9.6 mbit/s, far below 100 mbit/s.
        for i in 0..1000 {
            assert_eq!(s.offer(ms(i), 1200), Verdict::Release(ms(i + 5)));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_spec_releases_in_order_and_not_early(
            lat_us in 0u64..50_000,
            jit_us in 0u64..20_000,
            loss in 0.0f64..0.5,
            bw in proptest::option::of(10_000u64..10_000_000_000),
            gaps in proptest::collection::vec((0u64..5_000, 1usize..9000), 1..300),
            seed in 0u64..1000,
        ) {
            let spec = LinkSpec {
                latency: Duration::from_micros(lat_us),
                jitter: Duration::from_micros(jit_us),
                loss,
                bandwidth_bps: bw,
            };
            let mut s = Shaper::new(spec, StdRng::seed_from_u64(seed));
            let mut now = Duration::ZERO;
            let mut last = Duration::ZERO;
            let mut bytes = 0.0;
            for (gap, len) in gaps {
                now += Duration::from_micros(gap);
                if let Verdict::Release(r) = s.offer(now, len) {
                    proptest::prop_assert!(r >= last);
                    let floor = spec.latency.saturating_sub(spec.jitter);
                    proptest::prop_assert!(r + Duration::from_nanos(1) >= now + floor);
                    bytes += len as f64;
                    if let Some(bps) = bw {
                        // Tokens: the bucket plus what refilled since the start.
                        let budget = BUCKET_DEPTH as f64 + r.as_secs_f64() * bps as f64 / 8.0;
                        proptest::prop_assert!(bytes <= budget + len as f64 + 1.0);
                    }
                    last = r;
                }
            }
        }
    }
}
