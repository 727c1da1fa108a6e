//! Hugging Face `tokenizer.json` through the `tokenizers` crate (for safetensors models).
//!
//! Encoding is delegated to `tokenizers`; decoding is not: the per-token bytes are derived from
//! the vocabulary and the file's decoder kind, so that `decode`, `token_bytes` and streaming
//! follow the same llama.cpp rules as GGUF vocabularies (the `tokenizers` decoders, e.g.
//! stories260K's `Strip`, drop the first token's space in ways llama.cpp does not).

use super::vocab::{attr, parse_byte_token, PieceStyle, Vocab, VocabParts};
use crate::error::read_capped;
use crate::file_limits::{
    CONFIG_JSON_MAX_BYTES, MAX_VOCAB, TOKENIZER_CONFIG_MAX_BYTES, TOKENIZER_JSON_MAX_BYTES,
};
use crate::{Error, Result};
use serde_json::Value as Json;
use std::path::Path;

pub(crate) struct HfModel {
    /// Splits special added tokens out of the text (`parse_special = true`).
    with_special: tokenizers::Tokenizer,
    /// Tokenizes special added tokens as plain text; non-special added tokens still split, as
    /// llama.cpp does for user-defined tokens.
    plain: tokenizers::Tokenizer,
}

impl std::fmt::Debug for HfModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfModel").finish_non_exhaustive()
    }
}

impl HfModel {
    pub(crate) fn encode(&self, text: &str, parse_special: bool, out: &mut Vec<u32>) -> Result<()> {
        let tk = if parse_special {
            &self.with_special
        } else {
            &self.plain
        };
        let enc = tk
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json encode: {e}")))?;
        out.extend_from_slice(enc.get_ids());
        Ok(())
    }
}

/// Token names a model's BOS usually has, when nothing else says which one it is.
const BOS_NAMES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"];
/// Same for EOS, in order of preference.
const EOS_NAMES: &[&str] = &[
    "</s>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<eos>",
    "<|endoftext|>",
];

/// Every `"type"` value in a JSON component tree (decoders nest in `Sequence`s).
fn component_types(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::Object(map) => {
            if let Some(Json::String(t)) = map.get("type") {
                out.push(t.clone());
            }
            for child in map.values() {
                component_types(child, out);
            }
        }
        Json::Array(items) => items.iter().for_each(|i| component_types(i, out)),
        _ => {}
    }
}

/// Whether a normalizer/pre-tokenizer tree adds SentencePiece's dummy-prefix space.
fn adds_dummy_prefix(v: &Json) -> bool {
    match v {
        Json::Object(map) => {
            let ty = map.get("type").and_then(Json::as_str);
            let hit = match ty {
                Some("Metaspace") => match map.get("prepend_scheme").and_then(Json::as_str) {
                    Some(s) => s != "never",
                    None => map
                        .get("add_prefix_space")
                        .and_then(Json::as_bool)
                        .unwrap_or(true),
                },
                Some("Prepend") => map.get("prepend").and_then(Json::as_str) == Some("\u{2581}"),
                _ => false,
            };
            hit || map.values().any(adds_dummy_prefix)
        }
        Json::Array(items) => items.iter().any(adds_dummy_prefix),
        _ => false,
    }
}

/// A token string from `tokenizer_config.json` (`"<s>"` or `{"content": "<s>", ...}`).
fn config_token(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(map) => map.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// A JSON file next to `tokenizer.json`, read with a byte cap (`None` when absent).
fn read_json(path: &Path, limit: u64) -> Result<Option<Json>> {
    if !path.exists() {
        return Ok(None);
    }
    let field = format!(
        "{} size",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let bytes = read_capped(path, &field, limit)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
}

pub(crate) fn load(path: &Path, add_bos: Option<bool>) -> Result<(Vocab, HfModel)> {
    let bytes = read_capped(path, "tokenizer.json size", TOKENIZER_JSON_MAX_BYTES)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tok_config = read_json(
        &dir.join("tokenizer_config.json"),
        TOKENIZER_CONFIG_MAX_BYTES,
    )?;
    let model_config = read_json(&dir.join("config.json"), CONFIG_JSON_MAX_BYTES)?;
    load_bytes(path, &bytes, tok_config, model_config, add_bos)
}

/// [`load`] from the bytes of a `tokenizer.json` and its two optional companion files;
/// `path` names it in errors.
pub(crate) fn load_bytes(
    path: &Path,
    bytes: &[u8],
    tok_config: Option<Json>,
    model_config: Option<Json>,
    add_bos: Option<bool>,
) -> Result<(Vocab, HfModel)> {
    if bytes.len() as u64 > TOKENIZER_JSON_MAX_BYTES {
        return Err(Error::limit(
            path,
            "tokenizer.json size",
            bytes.len() as u64,
            TOKENIZER_JSON_MAX_BYTES,
        ));
    }
    let json: Json = serde_json::from_slice(bytes)
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    check_bpe_merges(&json["model"])
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    let with_special = tokenizers::Tokenizer::from_bytes(bytes)
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    let mut plain = with_special.clone();
    plain.set_encode_special_tokens(true);

    let vocab_map = with_special.get_vocab(true);
    let n = vocab_map
        .values()
        .map(|&i| i as usize + 1)
        .max()
        .unwrap_or(0);
    if n == 0 {
        return Err(Error::Tokenizer(format!(
            "{}: the vocabulary is empty",
            path.display()
        )));
    }
    // The token table is sized by the largest id, not by the number of tokens.
    if n as u64 > MAX_VOCAB {
        return Err(Error::limit(
            path,
            "tokenizer.json largest token id + 1",
            n as u64,
            MAX_VOCAB,
        ));
    }
    let mut tokens = vec![String::new(); n];
    for (t, &i) in &vocab_map {
        tokens[i as usize] = t.clone();
    }

    let mut decoder_types = Vec::new();
    component_types(&json["decoder"], &mut decoder_types);
    let has = |t: &str| decoder_types.iter().any(|d| d == t);
    let style = if has("ByteLevel") {
        PieceStyle::ByteLevel
    } else if has("ByteFallback") || has("Metaspace") || has("Replace") {
        PieceStyle::Spm
    } else {
        PieceStyle::Raw
    };
    let byte_fallback = has("ByteFallback") || json["model"]["byte_fallback"] == Json::Bool(true);

    let added = with_special.get_added_tokens_decoder();
    let attrs: Vec<u8> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match added.get(&(i as u32)) {
            Some(a) if a.special => attr::CONTROL,
            Some(_) => attr::USER_DEFINED,
            None if style == PieceStyle::Spm && byte_fallback && parse_byte_token(t).is_some() => {
                attr::BYTE
            }
            None if t.is_empty() => attr::UNUSED,
            None => attr::NORMAL,
        })
        .collect();

    // BOS/EOS: the model folder's tokenizer_config.json / config.json when present, else the
    // token the post-processor prepends, else well-known names.
    let id_of = |name: &str| vocab_map.get(name).copied();
    let config_id = |key: &str| -> Vec<u32> {
        let Some(cfg) = &model_config else {
            return Vec::new();
        };
        let ids = match &cfg[key] {
            Json::Number(x) => vec![x.as_u64()],
            Json::Array(items) => items.iter().map(Json::as_u64).collect(),
            _ => Vec::new(),
        };
        ids.into_iter()
            .flatten()
            .filter(|&i| (i as usize) < n)
            .map(|i| i as u32)
            .collect()
    };

    let probe = |add: bool| -> Result<Vec<u32>> {
        with_special
            .encode("a", add)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
    };
    let (with, without) = (probe(true)?, probe(false)?);
    let post_bos = (with.len() == without.len() + 1 && with[1..] == without[..]).then(|| with[0]);

    let cfg = tok_config.as_ref();
    let bos = cfg
        .and_then(|c| config_token(c.get("bos_token")))
        .and_then(|t| id_of(&t))
        .or_else(|| config_id("bos_token_id").first().copied())
        .or(post_bos)
        .or_else(|| BOS_NAMES.iter().find_map(|t| id_of(t)));
    let config_eos = config_id("eos_token_id");
    let eos = cfg
        .and_then(|c| config_token(c.get("eos_token")))
        .and_then(|t| id_of(&t))
        .or_else(|| config_eos.first().copied())
        .or_else(|| EOS_NAMES.iter().find_map(|t| id_of(t)));
    let add_bos = add_bos
        .or_else(|| {
            cfg.and_then(|c| c.get("add_bos_token"))
                .and_then(Json::as_bool)
        })
        .unwrap_or(post_bos.is_some())
        && bos.is_some();
    let add_space_prefix =
        adds_dummy_prefix(&json["normalizer"]) || adds_dummy_prefix(&json["pre_tokenizer"]);

    let vocab = Vocab::build(VocabParts {
        tokens,
        attrs,
        bos,
        eos,
        extra_eog: config_eos,
        add_bos,
        add_space_prefix,
        style,
    })?;
    Ok((
        vocab,
        HfModel {
            with_special,
            plain,
        },
    ))
}

/// Refuses BPE merges the `tokenizers` crate (0.23) would panic on while building its
/// merge table instead of returning an error: it copies each merge's result into a buffer
/// as long as the longest vocabulary entry *before* checking that the result is in the
/// vocabulary (a slice-index panic), and strips the continuing-subword prefix by bytes
/// (an index panic or invalid UTF-8 when the right piece is shorter). Found by the
/// `tokenizer_json` fuzz target; every merge of a real tokenizer passes.
fn check_bpe_merges(model: &Json) -> std::result::Result<(), String> {
    let (Some(vocab), Some(merges)) = (model["vocab"].as_object(), model["merges"].as_array())
    else {
        return Ok(());
    };
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
    for m in merges {
        let (a, b) = match m {
            Json::String(s) => match s.split_once(' ') {
                Some(p) => p,
                None => continue,
            },
            Json::Array(p) => match (
                p.first().and_then(Json::as_str),
                p.get(1).and_then(Json::as_str),
            ) {
                (Some(a), Some(b)) => (a, b),
                _ => continue,
            },
            _ => continue,
        };
        let Some(rest) = b.get(prefix.len()..) else {
            return Err(format!(
                "merge {a:?} {b:?}: the right piece is shorter than the subword prefix {prefix:?}"
            ));
        };
        let merged = format!("{a}{rest}");
        if !vocab.contains_key(&merged) {
            return Err(format!(
                "merge {a:?} {b:?} makes {merged:?}, which is not in the vocabulary"
            ));
        }
    }
    Ok(())
}
