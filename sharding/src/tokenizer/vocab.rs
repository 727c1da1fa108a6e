//! The vocabulary shared by every tokenizer model: token strings, llama.cpp token attributes,
//! special ids, the decoded bytes of every token, and the GGUF metadata reader that fills it.

use super::bpe::{decode_byte_level, Bpe};
use super::pretokenize::PreTokenizer;
use super::spm::Spm;
use super::Model;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;

/// llama.cpp's token attributes (`LLAMA_TOKEN_ATTR_*`); several may be set at once.
pub(crate) mod attr {
    pub const NORMAL: u8 = 1 << 0;
    pub const UNKNOWN: u8 = 1 << 1;
    pub const CONTROL: u8 = 1 << 2;
    pub const USER_DEFINED: u8 = 1 << 3;
    pub const UNUSED: u8 = 1 << 4;
    pub const BYTE: u8 = 1 << 5;
    pub const UNDEFINED: u8 = 1 << 6;
}

/// Token texts that end generation. llama.cpp recognizes these by name (and forces them to be
/// control tokens) because converters often leave them out of `eot_token_id`.
/// llama.cpp also stops on FIM repo/separator/pad tokens; lamina does not, since those only
/// matter for infill and, matched by name, would make SmolLM2 stop at `<reponame>`.
const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end_of_text|>",
    "</s>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<end_of_turn>",
];

/// How a token's text becomes bytes when decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PieceStyle {
    /// SentencePiece: U+2581 is a space, `<0xNN>` byte tokens are bytes.
    Spm,
    /// GPT-2 byte-level characters.
    ByteLevel,
    /// The text as is.
    Raw,
}

#[derive(Debug)]
pub(crate) struct Vocab {
    pub tokens: Vec<String>,
    pub attrs: Vec<u8>,
    pub token_to_id: HashMap<String, u32>,
    /// Decoded bytes of every token, concatenated; token `i` is `pieces[offsets[i]..offsets[i+1]]`.
    pieces: Vec<u8>,
    offsets: Vec<usize>,
    /// Tokens that split raw text before the model runs (control, user-defined, unknown),
    /// longest first, like llama.cpp's `cache_special_tokens`.
    pub special_tokens: Vec<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eog: Vec<u32>,
    pub add_bos: bool,
    /// SentencePiece's dummy prefix: encoding adds a space at the start of text, so decoding
    /// after BOS drops it.
    pub add_space_prefix: bool,
}

/// What a vocabulary's owner knows besides the token list.
pub(crate) struct VocabParts {
    pub tokens: Vec<String>,
    pub attrs: Vec<u8>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub extra_eog: Vec<u32>,
    pub add_bos: bool,
    pub add_space_prefix: bool,
    pub style: PieceStyle,
}

impl Vocab {
    pub(crate) fn build(parts: VocabParts) -> Result<Self> {
        let VocabParts {
            mut tokens,
            mut attrs,
            bos,
            eos,
            extra_eog,
            add_bos,
            add_space_prefix,
            style,
        } = parts;
        if attrs.len() != tokens.len() {
            return Err(Error::Tokenizer(format!(
                "{} token attributes for {} tokens",
                attrs.len(),
                tokens.len()
            )));
        }
        let mut token_to_id = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                // llama.cpp renames empty tokens so that they cannot match anything.
                *t = format!("[EMPTY_{i}]");
            }
            let id = i as u32;
            if let Some(prev) = token_to_id.insert(t.clone(), id) {
                return Err(Error::BadMetadata {
                    key: "tokenizer.ggml.tokens".into(),
                    reason: format!("duplicate token {t:?} at ids {prev} and {id}"),
                });
            }
        }
        let mut eog = Vec::new();
        for name in EOG_NAMES {
            if let Some(&id) = token_to_id.get(*name) {
                attrs[id as usize] |= attr::CONTROL;
                eog.push(id);
            }
        }
        eog.extend(eos);
        eog.extend(extra_eog);
        eog.sort_unstable();
        eog.dedup();

        let mut pieces = Vec::new();
        let mut offsets = Vec::with_capacity(tokens.len() + 1);
        offsets.push(0);
        for (t, &a) in tokens.iter().zip(&attrs) {
            append_piece(&mut pieces, t, a, style);
            offsets.push(pieces.len());
        }

        let mut special_tokens: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&i| {
                attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        special_tokens.sort_by(|&a, &b| {
            tokens[b as usize]
                .len()
                .cmp(&tokens[a as usize].len())
                .then(a.cmp(&b))
        });

        Ok(Vocab {
            tokens,
            attrs,
            token_to_id,
            pieces,
            offsets,
            special_tokens,
            bos,
            eos,
            eog,
            add_bos,
            add_space_prefix,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Decoded bytes of one token (empty for control, unknown and unused tokens).
    pub(crate) fn piece(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let (a, b) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        self.pieces.get(a..b)
    }
}

/// llama.cpp's `token_to_piece` with `special = false`. A byte-typed token that is not
/// `<0xNN>` (llama.cpp would read garbage from it) decodes like a normal token instead.
fn append_piece(out: &mut Vec<u8>, text: &str, a: u8, style: PieceStyle) {
    if a & (attr::UNKNOWN | attr::CONTROL) != 0 {
        return;
    }
    if a & attr::USER_DEFINED != 0 {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    if a & attr::BYTE != 0 {
        if let Some(b) = parse_byte_token(text) {
            out.push(b);
            return;
        }
    } else if a & attr::NORMAL == 0 {
        return; // unused / undefined
    }
    match style {
        PieceStyle::Spm => out.extend_from_slice(text.replace('\u{2581}', " ").as_bytes()),
        PieceStyle::ByteLevel => out.extend(decode_byte_level(text)),
        PieceStyle::Raw => out.extend_from_slice(text.as_bytes()),
    }
}

/// The byte of a `<0xNN>` token.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

// ---------------------------------------------------------------------------------------------
// GGUF metadata

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TYPES: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";

fn bad(key: &str, reason: impl Into<String>) -> Error {
    Error::BadMetadata {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Array(items) => match items.first() {
            Some(first) => format!("array of {}", type_name(first)),
            None => "empty array".into(),
        },
        other => format!("{:?}", other.value_type()),
    }
}

fn get_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(bad(
            key,
            format!("expected a string, found {}", type_name(v)),
        )),
    }
}

fn get_bool(md: &HashMap<String, Value>, key: &str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(bad(key, format!("expected a bool, found {}", type_name(v)))),
    }
}

fn as_int(v: &Value) -> Option<i128> {
    Some(match v {
        Value::U8(x) => *x as i128,
        Value::I8(x) => *x as i128,
        Value::U16(x) => *x as i128,
        Value::I16(x) => *x as i128,
        Value::U32(x) => *x as i128,
        Value::I32(x) => *x as i128,
        Value::U64(x) => *x as i128,
        Value::I64(x) => *x as i128,
        _ => return None,
    })
}

fn get_array<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<&'a [Value]>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(v) => Err(bad(
            key,
            format!("expected an array, found {}", type_name(v)),
        )),
    }
}

/// A token id key: `Ok(None)` when absent, `Ok(Some(None))` for the "none" markers
/// 0xFFFFFFFF / -1 that converters write, an error when out of range.
fn get_id(md: &HashMap<String, Value>, key: &str, n_vocab: usize) -> Result<Option<Option<u32>>> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let x = as_int(v).ok_or_else(|| {
        bad(
            key,
            format!("expected an integer token id, found {}", type_name(v)),
        )
    })?;
    if x < 0 || x == u32::MAX as i128 || x == u64::MAX as i128 {
        return Ok(Some(None));
    }
    if x >= n_vocab as i128 {
        return Err(bad(
            key,
            format!("token id {x} is out of range (vocabulary of {n_vocab})"),
        ));
    }
    Ok(Some(Some(x as u32)))
}

/// Reads `tokenizer.ggml.*` into a vocabulary and its model.
pub(crate) fn from_gguf(md: &HashMap<String, Value>) -> Result<(Vocab, Model)> {
    let model = get_str(md, KEY_MODEL)?.ok_or_else(|| Error::MissingMetadata(KEY_MODEL.into()))?;
    let is_spm = match model {
        "llama" => true,
        "gpt2" => false,
        other => {
            return Err(Error::Tokenizer(format!(
                "unsupported tokenizer model `{other}` ({KEY_MODEL}); supported: llama (SentencePiece), gpt2 (byte-level BPE)"
            )))
        }
    };

    let raw_tokens =
        get_array(md, KEY_TOKENS)?.ok_or_else(|| Error::MissingMetadata(KEY_TOKENS.into()))?;
    if raw_tokens.is_empty() {
        return Err(bad(KEY_TOKENS, "the vocabulary is empty"));
    }
    if raw_tokens.len() > u32::MAX as usize / 2 {
        return Err(bad(KEY_TOKENS, "the vocabulary is too large"));
    }
    let tokens = raw_tokens
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(bad(
                KEY_TOKENS,
                format!("token {i} is {}, expected a string", type_name(other)),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    let n = tokens.len();

    let scores = match get_array(md, KEY_SCORES)? {
        None => vec![0.0; n],
        Some(items) => {
            if items.len() < n {
                return Err(bad(
                    KEY_SCORES,
                    format!("{} scores for {n} tokens", items.len()),
                ));
            }
            items[..n]
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let s = match v {
                        Value::F32(x) => *x,
                        Value::F64(x) => *x as f32,
                        Value::I32(x) => *x as f32,
                        other => {
                            return Err(bad(
                                KEY_SCORES,
                                format!("score {i} is {}, expected f32", type_name(other)),
                            ))
                        }
                    };
                    if s.is_nan() {
                        return Err(bad(KEY_SCORES, format!("score {i} is NaN")));
                    }
                    // -0.0 and 0.0 must tie, as they do for llama.cpp's `<`.
                    Ok(if s == 0.0 { 0.0 } else { s })
                })
                .collect::<Result<Vec<f32>>>()?
        }
    };

    let attrs = match get_array(md, KEY_TYPES)? {
        None => vec![attr::NORMAL; n],
        Some(items) => {
            if items.len() < n {
                return Err(bad(
                    KEY_TYPES,
                    format!("{} token types for {n} tokens", items.len()),
                ));
            }
            items[..n]
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let t = as_int(v).ok_or_else(|| {
                        bad(
                            KEY_TYPES,
                            format!("type {i} is {}, expected an integer", type_name(v)),
                        )
                    })?;
                    Ok(match t {
                        1 => attr::NORMAL,
                        2 => attr::UNKNOWN,
                        3 => attr::CONTROL,
                        4 => attr::USER_DEFINED,
                        5 => attr::UNUSED,
                        6 => attr::BYTE,
                        _ => attr::UNDEFINED,
                    })
                })
                .collect::<Result<Vec<u8>>>()?
        }
    };

    // llama.cpp's defaults per model, kept only when inside the vocabulary.
    let in_range = |id: u32| ((id as usize) < n).then_some(id);
    let (mut bos, mut eos, mut unk) = if is_spm {
        (in_range(1), in_range(2), in_range(0))
    } else {
        (in_range(11), in_range(11), None)
    };
    let mut extra_eog = Vec::new();
    if let Some(v) = get_id(md, "tokenizer.ggml.bos_token_id", n)? {
        bos = v;
    }
    if let Some(v) = get_id(md, "tokenizer.ggml.eos_token_id", n)? {
        eos = v;
    }
    if let Some(v) = get_id(md, "tokenizer.ggml.unknown_token_id", n)? {
        unk = v;
    }
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(Some(id)) = get_id(md, key, n)? {
            extra_eog.push(id);
        }
    }

    let mut add_space_prefix = is_spm;
    if let Some(v) = get_bool(md, "tokenizer.ggml.add_space_prefix")? {
        add_space_prefix = v;
    }

    let (vocab_parts, model) = if is_spm {
        let add_bos = get_bool(md, "tokenizer.ggml.add_bos_token")?.unwrap_or(true);
        (
            VocabParts {
                tokens,
                attrs,
                bos,
                eos,
                extra_eog,
                add_bos,
                add_space_prefix,
                style: PieceStyle::Spm,
            },
            None,
        )
    } else {
        let (pre, flags) = PreTokenizer::from_name(get_str(md, KEY_PRE)?)?;
        let add_bos = get_bool(md, "tokenizer.ggml.add_bos_token")?.unwrap_or(flags.add_bos);
        let merges =
            get_array(md, KEY_MERGES)?.ok_or_else(|| Error::MissingMetadata(KEY_MERGES.into()))?;
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(bad(
                    KEY_MERGES,
                    format!("merge {i} is {}, expected a string", type_name(other)),
                )),
            })
            .collect::<Result<Vec<&str>>>()?;
        (
            VocabParts {
                tokens,
                attrs,
                bos,
                eos,
                extra_eog,
                add_bos,
                // The dummy prefix is a SentencePiece rule; llama.cpp's BPE ignores the key.
                add_space_prefix: false,
                style: PieceStyle::ByteLevel,
            },
            Some((pre, flags, merges)),
        )
    };
    let vocab = Vocab::build(vocab_parts)?;
    let model = match model {
        None => Model::Spm {
            spm: Spm::new(&vocab.token_to_id, unk),
            scores,
        },
        Some((pre, flags, merges)) => Model::Bpe(Bpe::new(
            pre,
            flags.ignore_merges,
            &vocab.token_to_id,
            n as u32,
            &merges,
        )?),
    };
    Ok((vocab, model))
}
