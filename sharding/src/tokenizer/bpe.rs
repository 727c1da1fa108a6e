//! Byte-level BPE (GPT-2 style), reproducing llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! Each pre-token word is mapped byte by byte to GPT-2's printable stand-in characters, then
//! adjacent symbols are merged by merge rank (lowest first, leftmost on ties) until no ranked
//! pair is left. A priority queue with lazy invalidation keeps a word of n bytes at
//! O(n log n), so long runs of one character do not blow up.
//!
//! Merge sides and results are interned as "pieces": a vocabulary token's piece id is its token
//! id, and strings that occur only in merges get ids past the vocabulary, so the inner loop
//! compares integers instead of building strings.

use super::pretokenize::PreTokenizer;
use crate::{Error, Result};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::OnceLock;

/// Piece id of a byte whose stand-in character is neither a token nor a merge side.
const NO_PIECE: u32 = u32::MAX;

/// GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, the others
/// are shifted to U+0100 and up, so every byte has a visible, non-space character.
pub(crate) fn byte_to_char() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut n = 0u32;
        for (b, slot) in table.iter_mut().enumerate() {
            let keep = (0x21..=0x7e).contains(&b)
                || (0xa1..=0xac).contains(&b)
                || (0xae..=0xff).contains(&b);
            let cp = if keep {
                b as u32
            } else {
                n += 1;
                255 + n
            };
            // Every value is below U+0200, a valid scalar value.
            *slot = char::from_u32(cp).unwrap_or('\u{fffd}');
        }
        table
    })
}

/// Inverse of [`byte_to_char`].
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    static TABLE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            byte_to_char()
                .iter()
                .enumerate()
                .map(|(b, &c)| (c, b as u8))
                .collect()
        })
        .get(&c)
        .copied()
}

/// Bytes of a byte-level token string. A character outside GPT-2's table (malformed vocab)
/// keeps its own UTF-8 bytes rather than llama.cpp's `[UNK_BYTE_..]` marker, so text survives.
pub(crate) fn decode_byte_level(token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// GPT-2 byte-level encoding of raw text.
pub(crate) fn encode_byte_level(bytes: &[u8]) -> String {
    let table = byte_to_char();
    bytes.iter().map(|&b| table[b as usize]).collect()
}

#[derive(Debug)]
pub(crate) struct Bpe {
    pre: PreTokenizer,
    ignore_merges: bool,
    n_vocab: u32,
    /// (left piece, right piece) -> (rank, merged piece).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Piece of each byte's stand-in character.
    byte_piece: Box<[u32; 256]>,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    piece: u32,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Bpe {
    /// `merges` are llama.cpp's "left right" strings, rank = index.
    pub(crate) fn new(
        pre: PreTokenizer,
        ignore_merges: bool,
        token_to_id: &HashMap<String, u32>,
        n_vocab: u32,
        merges: &[&str],
    ) -> Result<Self> {
        let mut extra: HashMap<String, u32> = HashMap::new();
        let mut intern = |s: &str| -> u32 {
            if let Some(&id) = token_to_id.get(s) {
                return id;
            }
            let next = n_vocab + extra.len() as u32;
            *extra.entry(s.to_owned()).or_insert(next)
        };
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte.
            let split = m
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(i, _)| i);
            let Some(i) = split else {
                return Err(Error::BadMetadata {
                    key: "tokenizer.ggml.merges".into(),
                    reason: format!("merge {rank} ({m:?}) is not two pieces separated by a space"),
                });
            };
            let (left, right) = (&m[..i], &m[i + 1..]);
            if right.is_empty() {
                return Err(Error::BadMetadata {
                    key: "tokenizer.ggml.merges".into(),
                    reason: format!("merge {rank} ({m:?}) has an empty right piece"),
                });
            }
            let l = intern(left);
            let r = intern(right);
            let merged = intern(&format!("{left}{right}"));
            let rank = u32::try_from(rank).map_err(|_| Error::BadMetadata {
                key: "tokenizer.ggml.merges".into(),
                reason: "too many merges".into(),
            })?;
            // The first occurrence of a pair wins, as with llama.cpp's `emplace`.
            table.entry((l, r)).or_insert((rank, merged));
        }
        let table_chars = byte_to_char();
        let mut byte_piece = Box::new([NO_PIECE; 256]);
        for (b, slot) in byte_piece.iter_mut().enumerate() {
            let mut buf = [0u8; 4];
            let s: &str = table_chars[b].encode_utf8(&mut buf);
            if let Some(&id) = token_to_id.get(s) {
                *slot = id;
            } else if let Some(&id) = extra.get(s) {
                *slot = id;
            }
        }
        Ok(Bpe {
            pre,
            ignore_merges,
            n_vocab,
            merges: table,
            byte_piece,
        })
    }

    /// Tokenizes raw text (no special tokens inside) and appends the ids to `out`.
    pub(crate) fn tokenize(
        &self,
        text: &str,
        token_to_id: &HashMap<String, u32>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let mut symbols = Vec::new();
        let mut heap = BinaryHeap::new();
        for (a, b) in self.pre.split(text)? {
            self.tokenize_word(
                &text.as_bytes()[a..b],
                token_to_id,
                &mut symbols,
                &mut heap,
                out,
            );
        }
        Ok(())
    }

    fn tokenize_word(
        &self,
        word: &[u8],
        token_to_id: &HashMap<String, u32>,
        symbols: &mut Vec<Symbol>,
        heap: &mut BinaryHeap<Reverse<(u32, usize, u32, u32)>>,
        out: &mut Vec<u32>,
    ) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges {
            if let Some(&id) = token_to_id.get(encode_byte_level(word).as_str()) {
                out.push(id);
                return;
            }
        }
        symbols.clear();
        heap.clear();
        let n = word.len();
        symbols.extend(word.iter().enumerate().map(|(i, &b)| Symbol {
            start: i,
            len: 1,
            piece: self.byte_piece[b as usize],
            prev: i.checked_sub(1),
            next: if i + 1 < n { Some(i + 1) } else { None },
        }));
        for i in 1..n {
            self.push_pair(symbols, heap, i - 1, i);
        }
        while let Some(Reverse((_, left, lp, rp))) = heap.pop() {
            let l = symbols[left];
            let Some(right) = l.next else { continue };
            let r = symbols[right];
            // Stale entry: one side was merged since it was queued.
            if l.len == 0 || r.len == 0 || l.piece != lp || r.piece != rp {
                continue;
            }
            let Some(&(_, merged)) = self.merges.get(&(lp, rp)) else {
                continue;
            };
            symbols[left].len += r.len;
            symbols[left].piece = merged;
            symbols[left].next = r.next;
            symbols[right].len = 0;
            if let Some(nn) = r.next {
                symbols[nn].prev = Some(left);
            }
            if let Some(p) = l.prev {
                self.push_pair(symbols, heap, p, left);
            }
            if let Some(nn) = r.next {
                self.push_pair(symbols, heap, left, nn);
            }
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let s = symbols[i];
            at = s.next;
            if s.len == 0 {
                continue;
            }
            if s.piece < self.n_vocab {
                out.push(s.piece);
                continue;
            }
            // Not a token: llama.cpp looks each byte of the symbol's byte-level text up as a
            // one-byte token, which only printable ASCII can be; the rest is dropped.
            for &b in &word[s.start..s.start + s.len] {
                if (0x21..=0x7e).contains(&b) {
                    let piece = self.byte_piece[b as usize];
                    if piece < self.n_vocab {
                        out.push(piece);
                    }
                }
            }
        }
    }

    fn push_pair(
        &self,
        symbols: &[Symbol],
        heap: &mut BinaryHeap<Reverse<(u32, usize, u32, u32)>>,
        left: usize,
        right: usize,
    ) {
        let (lp, rp) = (symbols[left].piece, symbols[right].piece);
        if lp == NO_PIECE || rp == NO_PIECE {
            return;
        }
        if let Some(&(rank, _)) = self.merges.get(&(lp, rp)) {
            heap.push(Reverse((rank, left, lp, rp)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (Bpe, HashMap<String, u32>) {
        let mut vocab: Vec<String> = (0u8..=255)
            .map(|b| encode_byte_level(&[b]))
            .collect::<Vec<_>>();
        for t in ["aa", "aaaa", "Ġa", "Ġaa", "he", "hel", "hell", "hello"] {
            vocab.push(t.to_owned());
        }
        let map: HashMap<String, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = [
            "a a", "aa aa", "Ġ a", "Ġa a", "h e", "he l", "hel l", "hell o",
        ];
        let (pre, _) = PreTokenizer::from_name(Some("gpt2")).unwrap();
        let bpe = Bpe::new(pre, false, &map, vocab.len() as u32, &merges).unwrap();
        (bpe, map)
    }

    fn ids(bpe: &Bpe, map: &HashMap<String, u32>, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        bpe.tokenize(text, map, &mut out).unwrap();
        out
    }

    #[test]
    fn byte_table_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char()[b as usize]), Some(b));
        }
        assert_eq!(byte_to_char()[b' ' as usize], 'Ġ');
        assert_eq!(byte_to_char()[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn merges_by_rank_leftmost_first() {
        let (bpe, map) = tiny();
        // "aaaaa": a a -> (aa)(aa)a -> (aaaa)a
        assert_eq!(ids(&bpe, &map, "aaaaa"), vec![map["aaaa"], map["a"]]);
        // " aaa": "a a" outranks "Ġ a", so the space stays alone.
        assert_eq!(
            ids(&bpe, &map, "hello aaa"),
            vec![map["hello"], map["Ġ"], map["aa"], map["a"]]
        );
        assert_eq!(ids(&bpe, &map, " a"), vec![map["Ġa"]]);
    }

    #[test]
    fn long_run_is_fast() {
        let (bpe, map) = tiny();
        let text = "a".repeat(20_000);
        let start = std::time::Instant::now();
        let out = ids(&bpe, &map, &text);
        assert_eq!(out.len(), 5_000);
        assert!(start.elapsed().as_secs() < 5);
    }

    #[test]
    fn malformed_merge_is_an_error() {
        let (pre, _) = PreTokenizer::from_name(Some("gpt2")).unwrap();
        let map = HashMap::new();
        assert!(Bpe::new(pre, false, &map, 0, &["nospace"]).is_err());
    }
}
