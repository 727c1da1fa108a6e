//! Pre-tokenizer regexes of byte-level BPE vocabularies, as llama.cpp applies them.
//!
//! llama.cpp picks a list of regexes from `tokenizer.ggml.pre` and applies them in order:
//! every regex splits each segment left by the previous one into its matches and the gaps
//! between them (both kept), treating the segment's ends as the text's ends (so a look-ahead
//! never sees across a boundary). That is what lets "smollm" first isolate every digit and only
//! then run GPT-2's regex on the rest. llama.cpp hand-codes some of these regexes and runs the
//! others through `std::regex` over Unicode categories; `fancy_regex` gives the same splits with
//! the patterns themselves, look-ahead included.

use crate::{Error, Result};
use fancy_regex::Regex;

/// GPT-2's regex, with the final `\s+` that llama.cpp's hand-written matcher (and Hugging Face's
/// ByteLevel pre-tokenizer) apply to whitespace the look-ahead alternative leaves.
const GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3's regex as llama.cpp adapts it (case-insensitive contractions spelled out, because
/// `(?i:...)` would also fold non-ASCII letters such as U+017F into `s`).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's regex: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Names accepted in `tokenizer.ggml.pre`, for the error message of an unknown one.
pub(crate) const SUPPORTED: &[&str] = &[
    "default",
    "gpt2",
    "gpt-2",
    "mpt",
    "olmo",
    "phi-2",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "pixtral",
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "command-r",
    "exaone",
    "minerva-7b",
    "qwen2",
    "deepseek-r1-qwen",
    "stablelm2",
    "megrez",
    "chatglm-bpe",
    "glm4",
    "falcon",
];

/// What the pre-tokenizer name implies beyond the regexes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PreFlags {
    /// Whole pre-token words found in the vocabulary skip BPE (llama.cpp's `ignore_merges`).
    pub ignore_merges: bool,
    /// The vocabulary adds BOS unless `tokenizer.ggml.add_bos_token` says otherwise.
    pub add_bos: bool,
}

/// A compiled regex list.
#[derive(Debug)]
pub(crate) struct PreTokenizer {
    name: String,
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre = name` (`None`: key absent,
    /// which llama.cpp treats as "default").
    pub(crate) fn from_name(name: Option<&str>) -> Result<(Self, PreFlags)> {
        let name = name.unwrap_or("default");
        let mut flags = PreFlags::default();
        let patterns: &[&str] = match name {
            "default" => &[
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2,
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ],
            "gpt2" | "gpt-2" | "mpt" | "olmo" | "phi-2" => &[GPT2],
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => {
                flags.ignore_merges = true;
                flags.add_bos = true;
                &[LLAMA3]
            }
            "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone"
            | "minerva-7b" => &[r"\p{N}", GPT2],
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => &[QWEN2],
            "chatglm-bpe" | "glm4" => &[LLAMA3],
            "falcon" => &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
            other => {
                return Err(Error::Tokenizer(format!(
                    "unsupported pre-tokenizer `{other}` (tokenizer.ggml.pre); supported: {}",
                    SUPPORTED.join(", ")
                )))
            }
        };
        let regexes = patterns
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| {
                    Error::Tokenizer(format!("pre-tokenizer `{name}`: bad regex {p:?}: {e}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((
            PreTokenizer {
                name: name.to_owned(),
                regexes,
            },
            flags,
        ))
    }

    /// Splits `text` into pre-token words (byte ranges, in order, covering all of `text`).
    pub(crate) fn split(&self, text: &str) -> Result<Vec<(usize, usize)>> {
        let mut segments = if text.is_empty() {
            Vec::new()
        } else {
            vec![(0, text.len())]
        };
        for re in &self.regexes {
            let mut next = Vec::with_capacity(segments.len() * 2);
            for &(start, end) in &segments {
                let seg = &text[start..end];
                let mut last = 0;
                for m in re.find_iter(seg) {
                    let m = m.map_err(|e| {
                        Error::Tokenizer(format!("pre-tokenizer `{}`: {e}", self.name))
                    })?;
                    if m.start() == m.end() {
                        continue;
                    }
                    if m.start() > last {
                        next.push((start + last, start + m.start()));
                    }
                    next.push((start + m.start(), start + m.end()));
                    last = m.end();
                }
                if last < seg.len() {
                    next.push((start + last, end));
                }
            }
            segments = next;
        }
        Ok(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words<'a>(name: &str, text: &'a str) -> Vec<&'a str> {
        let (pre, _) = PreTokenizer::from_name(Some(name)).unwrap();
        pre.split(text)
            .unwrap()
            .into_iter()
            .map(|(a, b)| &text[a..b])
            .collect()
    }

    #[test]
    fn gpt2_splits_like_the_reference_regex() {
        assert_eq!(
            words("gpt2", "Hello world's  end 123!!\n"),
            ["Hello", " world", "'s", " ", " end", " 123", "!!", "\n"]
        );
    }

    #[test]
    fn smollm_isolates_digits_first() {
        // The space before the digits ends its own segment, so GPT-2's ` ?\p{N}+` cannot take it.
        assert_eq!(
            words("smollm", "a 123 b  45"),
            ["a", " ", "1", "2", "3", " b", "  ", "4", "5"]
        );
    }

    #[test]
    fn llama3_groups_three_digits_and_newlines() {
        assert_eq!(
            words("llama-bpe", "x 12345\n\n  y"),
            ["x", " ", "123", "45", "\n\n", " ", " y"]
        );
    }

    #[test]
    fn unknown_name_lists_supported_ones() {
        let err = PreTokenizer::from_name(Some("martian")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("martian") && msg.contains("smollm"), "{msg}");
    }

    #[test]
    fn empty_text_has_no_words() {
        assert!(words("default", "").is_empty());
    }
}
