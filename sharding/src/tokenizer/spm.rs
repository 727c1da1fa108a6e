//! SentencePiece BPE, reproducing llama.cpp's `llm_tokenizer_spm_session`.
//!
//! Unlike GPT-2 BPE there is no merge list: two adjacent symbols merge when their
//! concatenation is a vocabulary token, highest token score first (leftmost on ties). Symbols
//! left that are not tokens fall back to `<0xNN>` byte tokens. The caller has already replaced
//! spaces with U+2581 and added the dummy prefix.

use crate::{Error, Result};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

#[derive(Debug)]
pub(crate) struct Spm {
    /// `<0xNN>` token of each byte (or the byte itself as a one-character token).
    byte_tokens: Box<[Option<u32>; 256]>,
    unk: Option<u32>,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair. Scores are free of NaN and
    /// negative zero (normalized at load), so `total_cmp` agrees with llama.cpp's `<`.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl Spm {
    pub(crate) fn new(token_to_id: &HashMap<String, u32>, unk: Option<u32>) -> Self {
        let mut byte_tokens = Box::new([None; 256]);
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            let hex = format!("<0x{b:02X}>");
            *slot = token_to_id.get(hex.as_str()).copied().or_else(|| {
                // llama.cpp's fallback: the byte as a one-character string (ASCII only here,
                // since a lone byte >= 0x80 is not a UTF-8 string).
                if b < 0x80 {
                    let s = (b as u8 as char).to_string();
                    token_to_id.get(s.as_str()).copied()
                } else {
                    None
                }
            });
        }
        Spm { byte_tokens, unk }
    }

    /// Tokenizes `text` (spaces already escaped) and appends the ids to `out`.
    pub(crate) fn tokenize(
        &self,
        text: &str,
        token_to_id: &HashMap<String, u32>,
        scores: &[f32],
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
        }
        let n = symbols.len();
        for (i, s) in symbols.iter_mut().enumerate() {
            s.next = (i + 1 < n).then_some(i + 1);
        }
        let mut heap = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<Bigram>, symbols: &[Symbol], l: usize, r: usize| {
            let (a, b) = (symbols[l], symbols[r]);
            let piece = &text[a.start..b.start + b.len];
            if let Some(&id) = token_to_id.get(piece) {
                let score = scores.get(id as usize).copied().unwrap_or(0.0);
                heap.push(Bigram {
                    score,
                    left: l,
                    right: r,
                    size: piece.len(),
                });
            }
        };
        for i in 1..n {
            try_add(&mut heap, &symbols, i - 1, i);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (symbols[bg.left], symbols[bg.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
                continue;
            }
            symbols[bg.left].len += r.len;
            symbols[bg.left].next = r.next;
            symbols[bg.right].len = 0;
            if let Some(nn) = r.next {
                symbols[nn].prev = Some(bg.left);
            }
            if let Some(p) = l.prev {
                try_add(&mut heap, &symbols, p, bg.left);
            }
            if let Some(nn) = r.next {
                try_add(&mut heap, &symbols, bg.left, nn);
            }
        }
        let mut at = if n > 0 { Some(0) } else { None };
        while let Some(i) = at {
            let s = symbols[i];
            at = s.next;
            let piece = &text[s.start..s.start + s.len];
            if let Some(&id) = token_to_id.get(piece) {
                out.push(id);
                continue;
            }
            // Merged symbols are always tokens, so only single characters get here.
            for &b in piece.as_bytes() {
                match self.byte_tokens[b as usize].or(self.unk) {
                    Some(id) => out.push(id),
                    None => {
                        return Err(Error::Tokenizer(format!(
                            "no token for byte 0x{b:02X} and no unknown token"
                        )))
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_score_wins_then_bytes() {
        let vocab = ["<unk>", "<0x41>", "▁", "a", "b", "ab", "▁a", "▁ab"];
        let scores = [0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0];
        let map: HashMap<String, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let spm = Spm::new(&map, Some(0));
        let mut out = Vec::new();
        // "ab" (-4) beats "▁a" (-5), then "▁" + "ab" = "▁ab"; "A" falls back to <0x41>;
        // "é" has no byte tokens and goes to <unk>, one per byte.
        spm.tokenize("▁abAé", &map, &scores, &mut out).unwrap();
        assert_eq!(out, vec![7, 1, 0, 0]);
    }
}
