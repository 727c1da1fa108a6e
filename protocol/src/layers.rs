//! [`LayerRange`]: a contiguous, non-empty range of transformer layers.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;

/// Layers `start..end` (end exclusive) of a model, the unit a node hosts and a session runs.
///
/// The fields are public so ranges can be written and matched as literals, which means a
/// value with `start >= end` can exist in memory. Every boundary where a range enters the
/// program checks it: [`LayerRange::new`], `FromStr`, serde deserialisation and frame
/// decoding (via [`Message::validate`](crate::Message::validate)). The methods are total on
/// invalid values (an invalid range is empty and contains nothing).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode, Serialize, Deserialize,
)]
#[serde(try_from = "RawLayerRange")]
pub struct LayerRange {
    /// First layer in the range.
    pub start: u32,
    /// One past the last layer in the range.
    pub end: u32,
}

impl LayerRange {
    /// A validated range: `start < end`.
    pub fn new(start: u32, end: u32) -> Result<Self, ProtocolError> {
        let range = Self { start, end };
        range.validate()?;
        Ok(range)
    }

    /// Checks `start < end`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.start < self.end {
            Ok(())
        } else {
            Err(ProtocolError::InvalidLayerRange {
                start: self.start,
                end: self.end,
            })
        }
    }

    /// Number of layers (0 for an invalid range).
    pub fn len(&self) -> u32 {
        self.end.saturating_sub(self.start)
    }

    /// True only for an invalid range; a validated range is never empty.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// Whether `layer` is in the range.
    pub fn contains(&self, layer: u32) -> bool {
        self.start <= layer && layer < self.end
    }

    /// Whether every layer of `other` is in this range.
    pub fn covers(&self, other: &LayerRange) -> bool {
        !other.is_empty() && self.start <= other.start && other.end <= self.end
    }

    /// The range as a `std::ops::Range`, e.g. for iterating layer indices.
    pub fn as_range(&self) -> Range<u32> {
        self.start..self.end
    }

    /// The layer indices as `usize`, for indexing per-layer tables.
    pub fn indices(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Whether the range holds the token embedding (it starts the model).
    pub fn is_first(&self) -> bool {
        self.start == 0
    }

    /// Whether the range holds the final norm and output head of a model of `n_layers`.
    pub fn is_last(&self, n_layers: usize) -> bool {
        self.end as usize == n_layers
    }

    /// Whether the range is valid and lies within a model of `n_layers` layers.
    pub fn fits(&self, n_layers: usize) -> bool {
        !self.is_empty() && self.end as usize <= n_layers
    }
}

impl fmt::Display for LayerRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

impl fmt::Debug for LayerRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LayerRange({self})")
    }
}

impl FromStr for LayerRange {
    type Err = ProtocolError;

    /// Parses `"a..b"` (decimal, no spaces) and validates `a < b`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "layer range";
        let (a, b) = s
            .split_once("..")
            .ok_or_else(|| ProtocolError::parse(WHAT, s, "expected START..END"))?;
        let parse = |part: &str| {
            // u32::from_str accepts a leading '+'; the wire text form does not.
            if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(ProtocolError::parse(
                    WHAT,
                    s,
                    "bounds must be decimal integers",
                ));
            }
            part.parse::<u32>()
                .map_err(|_| ProtocolError::parse(WHAT, s, "bound does not fit in u32"))
        };
        LayerRange::new(parse(a)?, parse(b)?)
    }
}

impl From<LayerRange> for Range<u32> {
    fn from(r: LayerRange) -> Self {
        r.as_range()
    }
}

impl TryFrom<Range<u32>> for LayerRange {
    type Error = ProtocolError;

    fn try_from(r: Range<u32>) -> Result<Self, Self::Error> {
        LayerRange::new(r.start, r.end)
    }
}

/// Unvalidated serde shape of [`LayerRange`]; `try_from` runs the check.
#[derive(Deserialize)]
struct RawLayerRange {
    start: u32,
    end: u32,
}

impl TryFrom<RawLayerRange> for LayerRange {
    type Error = ProtocolError;

    fn try_from(raw: RawLayerRange) -> Result<Self, Self::Error> {
        LayerRange::new(raw.start, raw.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let r: LayerRange = "3..10".parse().unwrap();
        assert_eq!(r, LayerRange { start: 3, end: 10 });
        assert_eq!(r.to_string(), "3..10");
        assert_eq!(r.len(), 7);
        assert!(!r.is_empty());
        assert!(r.contains(3) && r.contains(9));
        assert!(!r.contains(10) && !r.contains(2));
        assert_eq!(r.as_range(), 3..10);
    }

    #[test]
    fn parse_rejects() {
        for bad in [
            "",
            "3",
            "3..",
            "..3",
            "5..5",
            "6..5",
            "a..b",
            "+1..2",
            "1..2..3",
            " 1..2",
            "1..4294967296",
        ] {
            assert!(bad.parse::<LayerRange>().is_err(), "{bad:?} parsed");
        }
        assert!(matches!(
            "5..5".parse::<LayerRange>(),
            Err(ProtocolError::InvalidLayerRange { start: 5, end: 5 })
        ));
    }

    #[test]
    fn invalid_ranges_are_total() {
        let r = LayerRange { start: 5, end: 3 };
        assert_eq!(r.len(), 0);
        assert!(r.is_empty());
        assert!(!r.contains(4));
        assert!(r.validate().is_err());
        assert!(!LayerRange { start: 0, end: 10 }.covers(&r));
    }

    #[test]
    fn covers() {
        let outer = LayerRange::new(0, 10).unwrap();
        assert!(outer.covers(&LayerRange::new(2, 10).unwrap()));
        assert!(!outer.covers(&LayerRange::new(2, 11).unwrap()));
    }

    #[test]
    fn serde_validates() {
        let r = LayerRange::new(1, 2).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"start":1,"end":2}"#);
        assert_eq!(serde_json::from_str::<LayerRange>(&json).unwrap(), r);
        assert!(serde_json::from_str::<LayerRange>(r#"{"start":2,"end":2}"#).is_err());
    }
}
