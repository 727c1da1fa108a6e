//! Contiguous layer ranges and splits of a model into them.
//!
//! A range is half-open, `a..b`, the notation operators type on the command line and the
//! one the wire protocol uses, so that "0..15" and "15..30" visibly meet.

use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// Layers `start..end` of a model (half-open).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct LayerRange {
    pub start: usize,
    pub end: usize,
}

impl LayerRange {
    /// A non-empty range; `start >= end` is refused because an empty shard would be a
    /// hop that does nothing but add latency.
    pub fn new(start: usize, end: usize) -> Result<Self> {
        if start >= end {
            return Err(Error::ParseLayerRange {
                text: format!("{start}..{end}"),
                reason: "the start must be below the end".into(),
            });
        }
        Ok(Self { start, end })
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    pub fn contains(&self, layer: usize) -> bool {
        (self.start..self.end).contains(&layer)
    }

    /// Whether this range holds the token embedding (it starts the model).
    pub fn is_first(&self) -> bool {
        self.start == 0
    }

    /// Whether this range holds the final norm and output head.
    pub fn is_last(&self, n_layers: usize) -> bool {
        self.end == n_layers
    }

    /// Checks the range against a model's layer count.
    pub fn check(&self, n_layers: usize) -> Result<()> {
        if self.end > n_layers || self.start >= self.end {
            return Err(Error::LayerRangeOutOfBounds {
                range: self.to_string(),
                n_layers,
            });
        }
        Ok(())
    }

    pub fn iter(&self) -> std::ops::Range<usize> {
        self.start..self.end
    }
}

impl fmt::Display for LayerRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

impl FromStr for LayerRange {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::ParseLayerRange {
            text: s.to_string(),
            reason: reason.to_string(),
        };
        let (a, b) = s
            .trim()
            .split_once("..")
            .ok_or_else(|| bad("expected the form a..b, e.g. 0..15"))?;
        let start = a
            .trim()
            .parse::<usize>()
            .map_err(|_| bad("the start is not a non-negative integer"))?;
        let end = b
            .trim()
            .parse::<usize>()
            .map_err(|_| bad("the end is not a non-negative integer"))?;
        if start >= end {
            return Err(bad("the start must be below the end"));
        }
        Ok(Self { start, end })
    }
}

/// Parses "0..2,2..5" and checks that the ranges are contiguous and cover `0..n_layers`
/// exactly, since a chain with a gap or an overlap cannot compute the model.
pub fn parse_split(text: &str, n_layers: usize) -> Result<Vec<LayerRange>> {
    let ranges = text
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(LayerRange::from_str)
        .collect::<Result<Vec<_>>>()?;
    check_split(&ranges, n_layers)?;
    Ok(ranges)
}

/// Checks that `ranges` are contiguous, in order, and cover `0..n_layers`.
pub fn check_split(ranges: &[LayerRange], n_layers: usize) -> Result<()> {
    if ranges.is_empty() {
        return Err(Error::BadSplit("no ranges given".into()));
    }
    let mut next = 0;
    for r in ranges {
        r.check(n_layers)?;
        if r.start != next {
            return Err(Error::BadSplit(format!(
                "range {r} should start at layer {next} (ranges must be contiguous and in order)"
            )));
        }
        next = r.end;
    }
    if next != n_layers {
        return Err(Error::BadSplit(format!(
            "the ranges end at layer {next}, but the model has {n_layers} layers"
        )));
    }
    Ok(())
}

/// Splits `0..n_layers` into `parts` contiguous ranges whose sizes differ by at most one
/// (the larger ones first).
pub fn even_split(n_layers: usize, parts: usize) -> Result<Vec<LayerRange>> {
    if parts == 0 || parts > n_layers {
        return Err(Error::BadSplit(format!(
            "cannot split {n_layers} layers into {parts} non-empty ranges"
        )));
    }
    let base = n_layers / parts;
    let extra = n_layers % parts;
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 0..parts {
        let len = base + usize::from(i < extra);
        out.push(LayerRange {
            start,
            end: start + len,
        });
        start += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let r: LayerRange = "3..7".parse().unwrap();
        assert_eq!(r, LayerRange { start: 3, end: 7 });
        assert_eq!(r.to_string(), "3..7");
        assert_eq!(r.len(), 4);
        assert!("7..3".parse::<LayerRange>().is_err());
        assert!("3..3".parse::<LayerRange>().is_err());
        assert!("a..3".parse::<LayerRange>().is_err());
        assert!("3-4".parse::<LayerRange>().is_err());
    }

    #[test]
    fn splits_are_checked() {
        assert_eq!(parse_split("0..2,2..5", 5).unwrap().len(), 2);
        assert!(parse_split("0..2,3..5", 5).is_err());
        assert!(parse_split("0..2,2..4", 5).is_err());
        assert!(parse_split("0..2,2..6", 5).is_err());
        assert!(parse_split("", 5).is_err());
    }

    #[test]
    fn even_split_covers() {
        for n in 1..40 {
            for p in 1..=n {
                let s = even_split(n, p).unwrap();
                check_split(&s, n).unwrap();
                let max = s.iter().map(|r| r.len()).max().unwrap();
                let min = s.iter().map(|r| r.len()).min().unwrap();
                assert!(max - min <= 1);
            }
        }
        assert!(even_split(3, 4).is_err());
    }
}
