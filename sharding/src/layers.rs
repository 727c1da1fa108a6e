//! Layer ranges and splits of a model into them.
//!
//! The range type is the wire protocol's [`LayerRange`] (`a..b`, half-open, `u32` bounds,
//! validated wherever it enters the program): one type from the command line to the
//! executor, so "0..15" means the same thing in a flag, a record and a shard. This module
//! adds what the model side needs: checks against a model's layer count and splits.

use crate::{Error, Result};

pub use lamina_protocol::LayerRange;

/// A non-empty range `start..end`; `start >= end` is refused because an empty shard
/// would be a hop that does nothing but add latency.
pub fn range(start: usize, end: usize) -> Result<LayerRange> {
    let bad = || Error::ParseLayerRange {
        text: format!("{start}..{end}"),
        reason: "the start must be below the end, both below 2^32".into(),
    };
    let s = u32::try_from(start).map_err(|_| bad())?;
    let e = u32::try_from(end).map_err(|_| bad())?;
    LayerRange::new(s, e).map_err(|_| bad())
}

/// Parses `"a..b"`.
pub fn parse_range(text: &str) -> Result<LayerRange> {
    text.trim()
        .parse::<LayerRange>()
        .map_err(|e| Error::ParseLayerRange {
            text: text.to_string(),
            reason: e.to_string(),
        })
}

/// Checks `r` against a model of `n_layers` layers.
pub fn check_range(r: LayerRange, n_layers: usize) -> Result<()> {
    if !r.fits(n_layers) {
        return Err(Error::LayerRangeOutOfBounds {
            range: r.to_string(),
            n_layers,
        });
    }
    Ok(())
}

/// Parses "0..2,2..5" and checks that the ranges are contiguous and cover `0..n_layers`
/// exactly, since a chain with a gap or an overlap cannot compute the model.
pub fn parse_split(text: &str, n_layers: usize) -> Result<Vec<LayerRange>> {
    let ranges = text
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(parse_range)
        .collect::<Result<Vec<_>>>()?;
    check_split(&ranges, n_layers)?;
    Ok(ranges)
}

/// Checks that `ranges` are contiguous, in order, and cover `0..n_layers`.
pub fn check_split(ranges: &[LayerRange], n_layers: usize) -> Result<()> {
    if ranges.is_empty() {
        return Err(Error::BadSplit("no ranges given".into()));
    }
    let mut next = 0usize;
    for r in ranges {
        check_range(*r, n_layers)?;
        if r.indices().start != next {
            return Err(Error::BadSplit(format!(
                "range {r} should start at layer {next} (ranges must be contiguous and in order)"
            )));
        }
        next = r.indices().end;
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
        out.push(range(start, start + len)?);
        start += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let r = parse_range("3..7").unwrap();
        assert_eq!(r, LayerRange { start: 3, end: 7 });
        assert_eq!(r.to_string(), "3..7");
        assert_eq!(r.len(), 4);
        for bad in ["7..3", "3..3", "a..3", "3-4"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
        assert!(range(2, 1).is_err());
        assert!(range(0, 1usize << 33).is_err());
        assert!(check_range(range(0, 5).unwrap(), 4).is_err());
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
