//! Choosing the next token from logits, and stop strings.
//!
//! The chain mirrors llama.cpp's default sampler order (repetition penalty, top-k, top-p,
//! min-p, temperature, draw) so that the same settings mean the same thing to users coming
//! from llama.cpp or its servers. Sampling is deterministic for a given seed: the node that
//! holds the output head can be replaced mid-session and, given the same seed and the same
//! number of tokens drawn, continue the same stream.

use std::cmp::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// Sampling settings of one session.
///
/// Missing fields deserialize to their [`Default`] (greedy) values, so API clients can send
/// only what they change.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise logits are divided by it before the draw.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 turns it off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`;
    /// 1.0 turns it off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 turns it off.
    pub min_p: f32,
    /// CTRL-style penalty for tokens seen in the recent history; 1.0 turns it off.
    pub repetition_penalty: f32,
    /// How many of the most recent history tokens the penalty looks at.
    pub repetition_window: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repetition_window: 64,
            seed: 0,
        }
    }
}

/// The wire's settings (what the last hop is told) from the sampler's.
impl From<&SamplingParams> for lamina_protocol::SamplingSettings {
    fn from(p: &SamplingParams) -> Self {
        Self {
            temperature: p.temperature,
            top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            repetition_window: u32::try_from(p.repetition_window).unwrap_or(u32::MAX),
            seed: p.seed,
        }
    }
}

/// The sampler's settings from the wire's (on the last hop).
impl From<&lamina_protocol::SamplingSettings> for SamplingParams {
    fn from(s: &lamina_protocol::SamplingSettings) -> Self {
        Self {
            temperature: s.temperature,
            top_k: s.top_k as usize,
            top_p: s.top_p,
            min_p: s.min_p,
            repetition_penalty: s.repetition_penalty,
            repetition_window: s.repetition_window as usize,
            seed: s.seed,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Rejects settings that would make the distribution empty or undefined, naming the
    /// field so an API error can point the user at it.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: f32, rule: &str| {
            Err(Error::Sampling(format!(
                "{field} = {value}: must be {rule}"
            )))
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, "finite and >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1]");
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return bad("min_p", self.min_p, "in [0, 1)");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty,
                "finite and > 0",
            );
        }
        Ok(())
    }

    /// True when the chosen token is the argmax of the penalized logits, so the RNG is not
    /// used (temperature 0, or top-k 1 which leaves a single candidate).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    fn penalizes(&self) -> bool {
        self.repetition_penalty != 1.0 && self.repetition_window > 0
    }
}

/// Index of the first maximum; NaN never wins (NaN logits come from broken weights or
/// masks, and picking one would hide the bug behind a plausible token id).
///
/// Returns 0 for empty or all-NaN input; [`Sampler::sample`] reports those as errors.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if x <= b => {}
            _ => best = Some((i, x)),
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

/// A seeded sampler for one session.
///
/// Scratch buffers are kept between calls, so after the first token sampling allocates
/// nothing (it runs once per generated token on the hot path of the last shard).
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// (logit, token id) candidates, reused across calls.
    candidates: Vec<(f32, u32)>,
    /// Distinct recent tokens for the repetition penalty, reused across calls.
    recent: Vec<u32>,
}

/// Orders by logit descending, then id ascending: a total order (NaN excluded beforehand)
/// so results never depend on the sort algorithm, and ties resolve like [`argmax`].
fn by_logit_desc(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then(a.1.cmp(&b.1))
}

/// How many top candidates are sorted first when looking for the nucleus; most real
/// distributions reach `top_p` well within this, which avoids sorting a 128k vocabulary.
const NUCLEUS_PREFIX: usize = 256;

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Sampler {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            candidates: Vec::new(),
            recent: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one per vocabulary entry); `history` is the
    /// session's tokens so far (prompt and generated), newest last.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::Sampling("empty logits".into()));
        }
        if u32::try_from(logits.len()).is_err() {
            return Err(Error::Sampling(format!(
                "{} logits do not fit u32 token ids",
                logits.len()
            )));
        }
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        if self.params.penalizes() {
            self.apply_repetition_penalty(history);
        }
        // NaN never takes part; without this, sorting and softmax would be undefined.
        self.candidates.retain(|c| !c.0.is_nan());
        let Some(&best) = self.candidates.iter().min_by(|a, b| by_logit_desc(a, b)) else {
            return Err(Error::Sampling("all logits are NaN".into()));
        };
        // An infinite maximum means a certain token (+inf) or an impossible vocabulary
        // (all -inf); either way softmax is undefined and the first best token is the answer.
        if self.params.is_greedy() || !best.0.is_finite() {
            return Ok(best.1);
        }

        let p = &self.params;
        let (top_k, top_p, min_p, temperature) = (p.top_k, p.top_p, p.min_p, p.temperature);
        if top_k > 0 && top_k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(top_k - 1, by_logit_desc);
            self.candidates.truncate(top_k);
        }
        if top_p < 1.0 {
            self.apply_top_p(top_p, best.0);
        }
        if min_p > 0.0 {
            // p_i >= min_p * p_max  <=>  l_i >= l_max + ln(min_p); the best token always stays.
            let threshold = best.0 + min_p.ln();
            self.candidates.retain(|c| c.0 >= threshold);
        }

        let inv_t = 1.0 / f64::from(temperature);
        let max = f64::from(best.0);
        let total: f64 = self
            .candidates
            .iter()
            .map(|c| ((f64::from(c.0) - max) * inv_t).exp())
            .sum();
        let mut target = self.rng.random::<f64>() * total;
        for c in &self.candidates {
            target -= ((f64::from(c.0) - max) * inv_t).exp();
            if target < 0.0 {
                return Ok(c.1);
            }
        }
        // Only rounding can leave mass undrawn; the most likely token is the safe answer.
        Ok(best.1)
    }

    /// CTRL (Keskar et al. 2019) as in llama.cpp: dividing a positive logit and multiplying a
    /// negative one both make the token less likely. Each distinct token is penalized once,
    /// however often it occurs.
    fn apply_repetition_penalty(&mut self, history: &[u32]) {
        let window = &history[history.len().saturating_sub(self.params.repetition_window)..];
        self.recent.clear();
        self.recent.extend_from_slice(window);
        self.recent.sort_unstable();
        self.recent.dedup();
        let penalty = self.params.repetition_penalty;
        for &t in &self.recent {
            // Out-of-vocabulary ids in the history (e.g. from another model) are ignored.
            if let Some(c) = self.candidates.get_mut(t as usize) {
                c.0 = if c.0 > 0.0 {
                    c.0 / penalty
                } else {
                    c.0 * penalty
                };
            }
        }
    }

    /// Keeps the shortest prefix (by probability, before temperature, as llama.cpp does)
    /// whose mass reaches `top_p`, and at least one token. Leaves candidates sorted.
    fn apply_top_p(&mut self, top_p: f32, max_logit: f32) {
        let max = f64::from(max_logit);
        let total: f64 = self
            .candidates
            .iter()
            .map(|c| (f64::from(c.0) - max).exp())
            .sum();
        let goal = f64::from(top_p) * total;
        let n = self.candidates.len();
        let mut sorted = n.min(NUCLEUS_PREFIX);
        if sorted < n {
            self.candidates
                .select_nth_unstable_by(sorted - 1, by_logit_desc);
        }
        self.candidates[..sorted].sort_unstable_by(by_logit_desc);
        loop {
            let mut cum = 0.0;
            for (i, c) in self.candidates[..sorted].iter().enumerate() {
                cum += (f64::from(c.0) - max).exp();
                if cum >= goal {
                    self.candidates.truncate(i + 1);
                    return;
                }
            }
            if sorted == n {
                // Only rounding can get here: everything is in the nucleus.
                return;
            }
            sorted = n;
            self.candidates.sort_unstable_by(by_logit_desc);
        }
    }
}

/// Holds back text that could be the start of a stop string, so a stop string split over
/// several tokens is never partly shown to the user.
pub struct StopChecker {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopChecker {
    /// Empty stop strings are ignored: they would match before any text.
    pub fn new(stop: Vec<String>) -> Self {
        StopChecker {
            stops: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds newly decoded text. Returns the text that is safe to emit now and whether a
    /// stop string matched; on a match, the stop string and everything after it are dropped,
    /// and every later call returns nothing.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(text);
        // The earliest match wins, so the emitted text never contains any stop string.
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            let mut emit = std::mem::take(&mut self.pending);
            emit.truncate(pos);
            return (emit, true);
        }
        let hold = self.held_back_len();
        let emit_len = self.pending.len() - hold;
        let rest = self.pending.split_off(emit_len);
        let emit = std::mem::replace(&mut self.pending, rest);
        (emit, false)
    }

    /// Ends the stream: text that was held back as a possible stop prefix is released
    /// (nothing after a stop).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn held_back_len(&self) -> usize {
        let p = &self.pending;
        p.char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let suffix = &p[i..];
                self.stops.iter().any(|s| s.starts_with(suffix))
            })
            .map_or(0, |i| p.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_ignores_nan_and_takes_first_max() {
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, 3.0]), 2);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1.0]), 1);
    }

    #[test]
    fn nucleus_beyond_the_sorted_prefix() {
        // A flat distribution over 1000 tokens needs 900 of them for top_p = 0.9, more than
        // the presorted prefix; the fallback full sort must find exactly those.
        let logits = vec![0.0f32; 1000];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            ..Default::default()
        })
        .unwrap();
        s.candidates.clear();
        s.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        s.apply_top_p(0.9, 0.0);
        assert_eq!(s.candidates.len(), 900);
        assert!(s
            .candidates
            .iter()
            .enumerate()
            .all(|(i, c)| c.1 == i as u32));
    }

    #[test]
    fn scratch_buffers_are_reused_between_tokens() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            repetition_penalty: 1.2,
            ..Default::default()
        })
        .unwrap();
        let logits: Vec<f32> = (0..5000).map(|i| (i % 97) as f32 / 10.0).collect();
        let history: Vec<u32> = (0..100).collect();
        s.sample(&logits, &history).unwrap();
        let buffers = (s.candidates.as_ptr(), s.recent.as_ptr());
        for _ in 0..10 {
            s.sample(&logits, &history).unwrap();
        }
        assert_eq!(buffers, (s.candidates.as_ptr(), s.recent.as_ptr()));
    }

    #[test]
    fn held_back_respects_char_boundaries() {
        let mut c = StopChecker::new(vec!["éa".into()]);
        assert_eq!(c.push("xé"), ("x".to_string(), false));
        assert_eq!(c.held_back_len(), "é".len());
    }
}
