//! A made-up SentencePiece vocabulary of exactly the preset's size.
//!
//! Real tokenizers cannot be shipped, but tokenizer code paths (byte fallback, specials,
//! space handling, merges by score) still need a vocabulary that behaves like a real one:
//! the `<unk>`, `<s>`, `</s>` specials at their usual ids, all 256 byte tokens, the `▁` word
//! marker, single characters so any ASCII text tokenizes without falling back, and then
//! English-looking pieces so that merges actually happen.

use std::collections::HashSet;

/// SentencePiece's word-boundary marker (U+2581), which replaces spaces.
pub const SPACE_MARKER: &str = "\u{2581}";

/// `llama_token_type` values that llama.cpp and lamina's tokenizer read from
/// `tokenizer.ggml.token_type`.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const BYTE: i32 = 6;
}

pub const UNK_ID: u32 = 0;
pub const BOS_ID: u32 = 1;
pub const EOS_ID: u32 = 2;
/// The id of the byte token `<0x00>`; byte `b` is `FIRST_BYTE_ID + b`.
pub const FIRST_BYTE_ID: u32 = 3;

/// The three parallel arrays of the `tokenizer.ggml.*` metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Vocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub token_types: Vec<i32>,
}

/// Frequent English letter groups: concatenations of them read like word pieces, so
/// tokenizing English-ish text with this vocabulary merges the way a trained one would.
const UNITS: &[&str] = &[
    "th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or", "te", "of", "ed",
    "is", "it", "al", "ar", "st", "to", "nt", "ng", "se", "ha", "as", "ou", "io", "le", "ve", "co",
    "me", "de", "hi", "ri", "ro", "ic", "ne", "ea", "ra", "ce", "li", "ch", "ll", "be", "ma", "si",
    "om", "ur", "the", "and", "ing", "ion", "ent", "her", "for", "tha", "nth", "int", "ere", "tio",
    "ter", "est", "ers", "ati", "hat", "ate", "all", "eth", "hes", "ver", "his", "oft", "ith",
    "res", "ont", "a", "e", "i", "o", "s", "t", "y",
];

/// Builds a vocabulary of exactly `size` unique pieces (`size` must be at least 259, which
/// [`super::Preset::validate`] ensures; smaller sizes are truncated and lose byte tokens).
///
/// Scores follow SentencePiece's convention that earlier (more frequent) pieces score
/// higher: specials and bytes get 0, normal piece `id` gets `-id`.
pub fn build_vocab(size: usize) -> Vocab {
    let mut v = Builder {
        vocab: Vocab {
            tokens: Vec::with_capacity(size),
            scores: Vec::with_capacity(size),
            token_types: Vec::with_capacity(size),
        },
        seen: HashSet::with_capacity(size),
        size,
    };
    v.push("<unk>".into(), token_type::UNKNOWN);
    v.push("<s>".into(), token_type::CONTROL);
    v.push("</s>".into(), token_type::CONTROL);
    for b in 0..=255u8 {
        v.push(format!("<0x{b:02X}>"), token_type::BYTE);
    }
    v.push(SPACE_MARKER.into(), token_type::NORMAL);
    for c in 0x21u8..=0x7e {
        v.push(char::from(c).to_string(), token_type::NORMAL);
    }
    for c in ('a'..='z').chain('A'..='Z') {
        v.push(format!("{SPACE_MARKER}{c}"), token_type::NORMAL);
    }
    // Pieces of 1, 2, 3, ... units, each as a word start (`▁the`) and a continuation
    // (`the`); every level is finite and strictly longer than the last, so this ends.
    let n = UNITS.len();
    let mut level = 1u32;
    while !v.full() {
        let combos = n.pow(level);
        for mut index in 0..combos {
            let mut piece = String::new();
            for _ in 0..level {
                piece.insert_str(0, UNITS[index % n]);
                index /= n;
            }
            v.push(format!("{SPACE_MARKER}{piece}"), token_type::NORMAL);
            v.push(piece, token_type::NORMAL);
            if v.full() {
                break;
            }
        }
        level += 1;
    }
    v.vocab
}

struct Builder {
    vocab: Vocab,
    seen: HashSet<String>,
    size: usize,
}

impl Builder {
    fn full(&self) -> bool {
        self.vocab.tokens.len() >= self.size
    }

    /// Skips duplicates (different unit sequences can spell the same piece) because
    /// llama.cpp rejects a vocabulary whose pieces are not unique.
    fn push(&mut self, token: String, ty: i32) {
        if self.full() || self.seen.contains(&token) {
            return;
        }
        let id = self.vocab.tokens.len();
        let score = if ty == token_type::NORMAL {
            -(id as f32)
        } else {
            0.0
        };
        self.seen.insert(token.clone());
        self.vocab.tokens.push(token);
        self.vocab.scores.push(score);
        self.vocab.token_types.push(ty);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_specials_and_bytes() {
        let v = build_vocab(512);
        assert_eq!(v.tokens.len(), 512);
        assert_eq!(v.tokens[UNK_ID as usize], "<unk>");
        assert_eq!(v.tokens[BOS_ID as usize], "<s>");
        assert_eq!(v.tokens[EOS_ID as usize], "</s>");
        assert_eq!(v.token_types[0], token_type::UNKNOWN);
        assert_eq!(v.token_types[1], token_type::CONTROL);
        for b in 0..256usize {
            assert_eq!(v.tokens[3 + b], format!("<0x{b:02X}>"));
            assert_eq!(v.token_types[3 + b], token_type::BYTE);
        }
        assert_eq!(v.tokens[259], SPACE_MARKER);
        assert_eq!(v.tokens[260], "!");
    }

    #[test]
    fn unique_and_exact_size_for_every_preset() {
        for p in super::super::presets() {
            let v = build_vocab(p.vocab_size);
            assert_eq!(v.tokens.len(), p.vocab_size, "{}", p.name);
            assert_eq!(v.scores.len(), p.vocab_size);
            assert_eq!(v.token_types.len(), p.vocab_size);
            let set: HashSet<&String> = v.tokens.iter().collect();
            assert_eq!(set.len(), v.tokens.len(), "duplicate pieces in {}", p.name);
        }
    }

    #[test]
    fn normal_scores_decrease() {
        let v = build_vocab(2000);
        let normal: Vec<f32> = v
            .scores
            .iter()
            .zip(&v.token_types)
            .filter(|(_, t)| **t == token_type::NORMAL)
            .map(|(s, _)| *s)
            .collect();
        assert!(normal.windows(2).all(|w| w[0] > w[1]));
    }
}
