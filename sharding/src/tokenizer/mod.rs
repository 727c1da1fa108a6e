//! Tokenizers that reproduce llama.cpp's tokenization exactly, so that a prompt gives the same
//! token ids (and so the same logits) as llama.cpp on the same GGUF file.
//!
//! - GGUF `tokenizer.ggml.model = "llama"`: SentencePiece BPE (`spm`).
//! - GGUF `tokenizer.ggml.model = "gpt2"`: byte-level BPE (`bpe`) with the pre-tokenizer
//!   regexes llama.cpp picks from `tokenizer.ggml.pre` (`pretokenize`).
//! - Hugging Face `tokenizer.json` (`hf`), for safetensors checkpoints.
//!
//! Special tokens written in the text are split out first, like llama.cpp's
//! `tokenizer_st_partition`: user-defined tokens always, control tokens only when the caller
//! asks (`parse_special`, for rendered chat templates), so user text cannot forge them.
//!
//! Decoding follows llama.cpp's `token_to_piece(special = false)` per token, plus the rule
//! llama-cpp-python applies to a whole sequence: after a leading BOS, the SentencePiece dummy
//! prefix space is dropped; without BOS every space is kept (a continuation's first word keeps
//! its space).

mod bpe;
mod hf;
mod pretokenize;
mod spm;
mod vocab;

use crate::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;
use std::sync::Arc;
use vocab::{attr, Vocab};

pub(crate) enum Model {
    Spm { spm: spm::Spm, scores: Vec<f32> },
    Bpe(bpe::Bpe),
    Hf(Box<hf::HfModel>),
}

struct Inner {
    vocab: Vocab,
    model: Model,
}

/// A tokenizer of one model. Cloning is cheap (the vocabulary is shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner.model {
            Model::Spm { .. } => "spm",
            Model::Bpe(_) => "bpe",
            Model::Hf(_) => "tokenizer.json",
        };
        f.debug_struct("Tokenizer")
            .field("kind", &kind)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.inner.vocab.bos)
            .field("eos", &self.inner.vocab.eos)
            .finish()
    }
}

/// A piece of input text after special tokens are split out.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

impl Tokenizer {
    /// From GGUF metadata (`tokenizer.ggml.*` keys).
    pub fn from_gguf_metadata(md: &HashMap<String, Value>) -> Result<Self> {
        let (vocab, model) = vocab::from_gguf(md)?;
        Ok(Tokenizer {
            inner: Arc::new(Inner { vocab, model }),
        })
    }

    /// From a Hugging Face `tokenizer.json`, via the `tokenizers` crate.
    ///
    /// BOS/EOS come from `tokenizer_config.json` / `config.json` next to the file when present,
    /// else from the token the file's post-processor prepends, else from well-known names.
    /// `add_bos` overrides whether BOS is added by default (`None`: the config's
    /// `add_bos_token`, else whether the post-processor adds it).
    pub fn from_hf_file(path: &std::path::Path, add_bos: Option<bool>) -> Result<Self> {
        let (vocab, model) = hf::load(path, add_bos)?;
        Ok(Tokenizer {
            inner: Arc::new(Inner {
                vocab,
                model: Model::Hf(Box::new(model)),
            }),
        })
    }

    /// From the bytes of a `tokenizer.json` alone (no companion config files), for tests
    /// and the `tokenizer_json` fuzz target; otherwise as [`Tokenizer::from_hf_file`].
    pub fn from_hf_json_bytes(bytes: &[u8], add_bos: Option<bool>) -> Result<Self> {
        let name = std::path::Path::new("tokenizer.json");
        let (vocab, model) = hf::load_bytes(name, bytes, None, None, add_bos)?;
        Ok(Tokenizer {
            inner: Arc::new(Inner {
                vocab,
                model: Model::Hf(Box::new(model)),
            }),
        })
    }

    /// Encodes `text`. `add_bos` prepends BOS (when the model has one; pass
    /// [`Self::add_bos_default`] normally). With `parse_special`, control tokens written in the
    /// text (e.g. `<|im_start|>`) become their ids; without, they are tokenized as plain text.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let Inner { vocab, model } = &*self.inner;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            out.extend(vocab.bos);
        }
        if let Model::Hf(hf) = model {
            hf.encode(text, parse_special, &mut out)?;
            return Ok(out);
        }
        // SentencePiece adds the dummy prefix at the start and again after every special token.
        let mut prev_special = true;
        for fragment in partition(vocab, text, parse_special) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(raw) => {
                    match model {
                        Model::Spm { spm, scores } => {
                            let mut s = String::with_capacity(raw.len() + 3);
                            if vocab.add_space_prefix && prev_special {
                                s.push(' ');
                            }
                            s.push_str(raw);
                            let s = s.replace(' ', "\u{2581}");
                            spm.tokenize(&s, &vocab.token_to_id, scores, &mut out)?;
                        }
                        Model::Bpe(bpe) => bpe.tokenize(raw, &vocab.token_to_id, &mut out)?,
                        Model::Hf(_) => {}
                    }
                    prev_special = false;
                }
            }
        }
        Ok(out)
    }

    /// Whether the model wants BOS at the start of a prompt.
    pub fn add_bos_default(&self) -> bool {
        self.inner.vocab.add_bos && self.inner.vocab.bos.is_some()
    }

    /// Text of a sequence of ids; control and unknown tokens render as nothing.
    /// Invalid UTF-8 (a sequence cut inside a character) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.piece(id)?);
        }
        if self.drops_space_after(ids.first().copied()) && bytes.first() == Some(&b' ') {
            bytes.remove(0);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Raw bytes of one token's piece (after byte-level / U+2581 / `<0xNN>` decoding); empty
    /// for control and unknown tokens, as in [`Self::decode`].
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        self.piece(id).map(<[u8]>::to_vec)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.vocab.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.inner.vocab.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.inner.vocab.eos
    }

    /// All ids that end generation: EOS, EOT/EOM from the metadata, and end-of-turn tokens
    /// recognized by name (`<|im_end|>`, `<|eot_id|>`, `<|end_of_text|>`, `</s>`,
    /// `<|endoftext|>`, `<|eom_id|>`, `<end_of_turn>`), sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.inner.vocab.eog
    }

    /// The raw vocabulary string of a token.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.inner.vocab.tokens.get(id as usize).map(String::as_str)
    }

    /// Whether a token is a control or unknown token: it renders as nothing and is only
    /// produced from text with `parse_special`.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .vocab
            .attrs
            .get(id as usize)
            .is_some_and(|a| a & (attr::CONTROL | attr::UNKNOWN) != 0)
    }

    fn piece(&self, id: u32) -> Result<&[u8]> {
        self.inner.vocab.piece(id).ok_or_else(|| {
            Error::Tokenizer(format!(
                "token id {id} is out of range (vocabulary of {})",
                self.vocab_size()
            ))
        })
    }

    /// The SentencePiece rule: a sequence that starts with BOS had a dummy prefix space added
    /// by encoding, so its first space is not text.
    fn drops_space_after(&self, first: Option<u32>) -> bool {
        let v = &self.inner.vocab;
        v.add_space_prefix && first.is_some() && first == v.bos
    }
}

/// Splits `text` on special tokens the way llama.cpp's `tokenizer_st_partition` does: each
/// token in turn, longest first, splits every remaining text fragment at all its occurrences.
fn partition<'a>(vocab: &Vocab, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
    let mut fragments = Vec::new();
    if text.is_empty() {
        return fragments;
    }
    fragments.push(Fragment::Text(text));
    for &id in &vocab.special_tokens {
        let a = vocab.attrs[id as usize];
        if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
            continue;
        }
        let needle = vocab.tokens[id as usize].as_str();
        let present = fragments
            .iter()
            .any(|f| matches!(f, Fragment::Text(s) if s.contains(needle)));
        if !present {
            continue;
        }
        let mut next = Vec::with_capacity(fragments.len() + 2);
        for f in fragments {
            match f {
                Fragment::Token(_) => next.push(f),
                Fragment::Text(s) => {
                    let mut last = 0;
                    for (pos, _) in s.match_indices(needle) {
                        if pos > last {
                            next.push(Fragment::Text(&s[last..pos]));
                        }
                        next.push(Fragment::Token(id));
                        last = pos + needle.len();
                    }
                    if last < s.len() {
                        next.push(Fragment::Text(&s[last..]));
                    }
                }
            }
        }
        fragments = next;
    }
    fragments
}

/// Incremental detokenizer for streaming: feed ids one at a time, get the text that became
/// complete. Bytes of a character split across tokens (byte-fallback or byte-level pieces of
/// an emoji) are held back until the character is whole, and the concatenation of all outputs
/// plus [`Self::finish`] equals [`Tokenizer::decode`] of the whole sequence.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
    /// Whether the next bytes may still be the dummy-prefix space to drop after BOS.
    strip_space: bool,
    started: bool,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        StreamDecoder {
            tok,
            pending: Vec::new(),
            strip_space: false,
            started: false,
        }
    }

    /// Adds one id; returns the text completed by it (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        let piece = self.tok.piece(id)?;
        if !self.started {
            self.started = true;
            self.strip_space = self.tok.drops_space_after(Some(id));
        }
        let mut piece = piece;
        if self.strip_space && !piece.is_empty() {
            self.strip_space = false;
            if piece[0] == b' ' {
                piece = &piece[1..];
            }
        }
        self.pending.extend_from_slice(piece);
        Ok(self.drain(false))
    }

    /// Flushes what is left (an incomplete character becomes U+FFFD, as in `decode`).
    pub fn finish(&mut self) -> String {
        self.drain(true)
    }

    /// Moves the valid prefix of `pending` out, replacing invalid sequences like
    /// `String::from_utf8_lossy` does; an incomplete trailing sequence waits unless `all`.
    fn drain(&mut self, all: bool) -> String {
        let mut out = String::new();
        let mut consumed = 0;
        loop {
            let rest = &self.pending[consumed..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    consumed = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid` bytes were just checked to be UTF-8.
                    out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{fffd}');
                            consumed += valid + bad;
                        }
                        None => {
                            consumed += valid;
                            if all {
                                out.push('\u{fffd}');
                                consumed = self.pending.len();
                            }
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
    }

    /// A tiny SentencePiece vocabulary: <unk>, <s>, </s>, bytes, a few merges.
    fn spm_md() -> HashMap<String, Value> {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let normal = ["▁", "a", "b", "ab", "▁a", "▁ab", "▁b"];
        tokens.extend(normal.iter().map(|s| s.to_string()));
        let mut types = vec![Value::I32(2), Value::I32(3), Value::I32(3)];
        types.extend((0..256).map(|_| Value::I32(6)));
        types.extend(normal.iter().map(|_| Value::I32(1)));
        let mut scores: Vec<Value> = (0..259).map(|_| Value::F32(0.0)).collect();
        scores.extend((0..normal.len()).map(|i| Value::F32(-(i as f32))));
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        HashMap::from([
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("llama".into()),
            ),
            ("tokenizer.ggml.tokens".to_string(), strs(&tokens)),
            ("tokenizer.ggml.scores".to_string(), Value::Array(scores)),
            ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
            (
                "tokenizer.ggml.padding_token_id".to_string(),
                Value::U32(u32::MAX),
            ),
        ])
    }

    #[test]
    fn spm_dummy_prefix_and_bos_rule() {
        let tok = Tokenizer::from_gguf_metadata(&spm_md()).unwrap();
        assert!(tok.add_bos_default());
        let ids = tok.encode("ab b", true, false).unwrap();
        let id = |s: &str| tok.inner.vocab.token_to_id[s];
        assert_eq!(ids, vec![1, id("▁ab"), id("▁b")]);
        assert_eq!(tok.decode(&ids).unwrap(), "ab b");
        // Without BOS the dummy space is text.
        assert_eq!(tok.decode(&ids[1..]).unwrap(), " ab b");
        // Special tokens only with parse_special; the dummy prefix comes back after them.
        assert_eq!(
            tok.encode("a</s>a", false, true).unwrap(),
            vec![id("▁a"), 2, id("▁a")]
        );
        assert_eq!(tok.encode("</s>", false, false).unwrap().len(), 5);
        assert_eq!(tok.eog_ids(), &[2]);
    }

    #[test]
    fn stream_decoder_matches_decode() {
        let tok = Tokenizer::from_gguf_metadata(&spm_md()).unwrap();
        let ids = tok.encode("a 😀b é", true, false).unwrap();
        let mut dec = StreamDecoder::new(&tok);
        let mut text = String::new();
        for &id in &ids {
            text.push_str(&dec.push(id).unwrap());
        }
        text.push_str(&dec.finish());
        assert_eq!(text, tok.decode(&ids).unwrap());
        assert_eq!(text, "a 😀b é");
    }

    #[test]
    fn stream_decoder_replaces_broken_utf8_like_decode() {
        let tok = Tokenizer::from_gguf_metadata(&spm_md()).unwrap();
        // 0xF0 0x9F then 'a' then a lone 0x80, then a truncated sequence at the end.
        let ids = [3 + 0xF0, 3 + 0x9F, 3 + b'a' as u32, 3 + 0x80, 3 + 0xE2];
        let mut dec = StreamDecoder::new(&tok);
        let mut text = String::new();
        for &id in &ids {
            text.push_str(&dec.push(id).unwrap());
        }
        text.push_str(&dec.finish());
        assert_eq!(text, tok.decode(&ids).unwrap());
    }

    #[test]
    fn out_of_range_ids_are_errors() {
        let tok = Tokenizer::from_gguf_metadata(&spm_md()).unwrap();
        assert!(tok.decode(&[100_000]).is_err());
        assert!(tok.token_bytes(100_000).is_err());
        assert!(StreamDecoder::new(&tok).push(100_000).is_err());
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let mut md = spm_md();
        md.remove("tokenizer.ggml.tokens");
        assert!(matches!(
            Tokenizer::from_gguf_metadata(&md),
            Err(Error::MissingMetadata(_))
        ));

        let mut md = spm_md();
        md.insert("tokenizer.ggml.scores".into(), strs(&["not", "a", "float"]));
        assert!(matches!(
            Tokenizer::from_gguf_metadata(&md),
            Err(Error::BadMetadata { .. })
        ));

        let mut md = spm_md();
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(70_000));
        assert!(matches!(
            Tokenizer::from_gguf_metadata(&md),
            Err(Error::BadMetadata { .. })
        ));

        let mut md = spm_md();
        md.insert(
            "tokenizer.ggml.model".into(),
            Value::String("wordpiece".into()),
        );
        assert!(matches!(
            Tokenizer::from_gguf_metadata(&md),
            Err(Error::Tokenizer(_))
        ));

        let mut md = spm_md();
        md.insert("tokenizer.ggml.tokens".into(), Value::U32(3));
        assert!(matches!(
            Tokenizer::from_gguf_metadata(&md),
            Err(Error::BadMetadata { .. })
        ));
    }
}
