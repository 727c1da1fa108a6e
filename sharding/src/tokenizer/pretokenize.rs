//! Pre-tokenizer regexes of byte-level BPE vocabularies, as llama.cpp applies them.
//!
//! llama.cpp picks a list of regexes from `tokenizer.ggml.pre` and applies them in order:
//! every regex splits each segment left by the previous one into its matches and the gaps
//! between them (both kept), treating the segment's ends as the text's ends (so a look-ahead
//! never sees across a boundary). That is what lets "smollm" first isolate every digit and only
//! then run GPT-2's regex on the rest.
//!
//! Like llama.cpp, the two look-ahead regexes (GPT-2's and Llama 3's family) are hand-written
//! matchers: a backtracking engine needs stack proportional to a whitespace run, and
//! `fancy_regex` gives up at a million entries, while these run in linear time on any input.
//! The other, simple regexes go through `fancy_regex`, which hands them to the linear-time
//! `regex` engine.

use crate::{Error, Result};
use fancy_regex::Regex;
use std::sync::OnceLock;

/// GPT-2's regex (with the final `\s+` that llama.cpp's matcher and Hugging Face's ByteLevel
/// pre-tokenizer apply): what [`Splitter::Gpt2`] matches. Kept for the tests that compare.
#[cfg(test)]
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3's regex as llama.cpp adapts it: what [`Splitter::Llama3`] matches with
/// `max_digits = 3`.
#[cfg(test)]
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's regex: Llama 3's with single digits ([`Splitter::Llama3`], `max_digits = 1`).
#[cfg(test)]
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

/// One step of a pre-tokenizer.
#[derive(Debug)]
enum Splitter {
    Regex(Regex),
    /// GPT-2's regex.
    Gpt2,
    /// Llama 3's regex, numbers in groups of at most `max_digits`.
    Llama3 {
        max_digits: usize,
    },
}

/// A compiled regex list.
#[derive(Debug)]
pub(crate) struct PreTokenizer {
    name: String,
    steps: Vec<Splitter>,
}

enum Step {
    Re(&'static str),
    Gpt2,
    Llama3(usize),
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre = name` (`None`: key absent,
    /// which llama.cpp treats as "default").
    pub(crate) fn from_name(name: Option<&str>) -> Result<(Self, PreFlags)> {
        use Step::*;
        let name = name.unwrap_or("default");
        let mut flags = PreFlags::default();
        let steps: &[Step] = match name {
            "default" => &[
                Re(r"[\p{P}\$\+<=>\^~\|]+"),
                Gpt2,
                Re(r"\p{N}+"),
                Re(r"[0-9][0-9][0-9]"),
            ],
            "gpt2" | "gpt-2" | "mpt" | "olmo" | "phi-2" => &[Gpt2],
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => {
                flags.ignore_merges = true;
                flags.add_bos = true;
                &[Llama3(3)]
            }
            "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone"
            | "minerva-7b" => &[Re(r"\p{N}"), Gpt2],
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => &[Llama3(1)],
            "chatglm-bpe" | "glm4" => &[Llama3(3)],
            "falcon" => &[Re(r"[\p{P}\$\+<=>\^~\|`]+"), Gpt2, Re(r"[0-9][0-9][0-9]")],
            other => {
                return Err(Error::Tokenizer(format!(
                    "unsupported pre-tokenizer `{other}` (tokenizer.ggml.pre); supported: {}",
                    SUPPORTED.join(", ")
                )))
            }
        };
        let steps = steps
            .iter()
            .map(|step| match step {
                Re(p) => Regex::new(p).map(Splitter::Regex).map_err(|e| {
                    Error::Tokenizer(format!("pre-tokenizer `{name}`: bad regex {p:?}: {e}"))
                }),
                Gpt2 => Ok(Splitter::Gpt2),
                Llama3(n) => Ok(Splitter::Llama3 { max_digits: *n }),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((
            PreTokenizer {
                name: name.to_owned(),
                steps,
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
        let mut chars = Vec::new();
        for step in &self.steps {
            let mut next = Vec::with_capacity(segments.len() * 2);
            for &(start, end) in &segments {
                let seg = &text[start..end];
                match step {
                    Splitter::Regex(re) => {
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
                    Splitter::Gpt2 => {
                        chars.clear();
                        chars.extend(seg.char_indices().map(|(i, c)| (start + i, c)));
                        Cursor::new(&chars, end, &mut next).gpt2();
                    }
                    Splitter::Llama3 { max_digits } => {
                        chars.clear();
                        chars.extend(seg.char_indices().map(|(i, c)| (start + i, c)));
                        Cursor::new(&chars, end, &mut next).llama3(*max_digits);
                    }
                }
            }
            segments = next;
        }
        Ok(segments)
    }
}

/// `\p{L}` (general category Letter). `char::is_alphabetic` is a different property (it
/// includes letter numbers and many combining marks), so the table is taken once from the
/// `regex` engine's Unicode data, which `fancy_regex` delegates `\p{L}+` to.
fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    static TABLE: OnceLock<Vec<u64>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut bits = vec![0u64; 0x11_0000_usize / 64];
        let all: String = (0x80..0x11_0000u32).filter_map(char::from_u32).collect();
        if let Ok(re) = Regex::new(r"\p{L}+") {
            for m in re.find_iter(&all).flatten() {
                for c in m.as_str().chars() {
                    let cp = c as usize;
                    bits[cp / 64] |= 1 << (cp % 64);
                }
            }
        }
        bits
    });
    let cp = c as usize;
    table[cp / 64] & (1 << (cp % 64)) != 0
}

/// Character classes of one position; all false past the segment's end.
#[derive(Clone, Copy, Default)]
struct Class {
    in_range: bool,
    letter: bool,
    number: bool,
    space: bool,
}

/// A port of llama.cpp's `unicode_regex_split_custom_gpt2` / `_llama3` over one segment.
struct Cursor<'a> {
    /// (byte offset in the text, character) of the segment.
    chars: &'a [(usize, char)],
    /// Byte offset of the segment's end.
    end: usize,
    out: &'a mut Vec<(usize, usize)>,
    prev_end: usize,
}

impl<'a> Cursor<'a> {
    fn new(chars: &'a [(usize, char)], end: usize, out: &'a mut Vec<(usize, usize)>) -> Self {
        Cursor {
            chars,
            end,
            out,
            prev_end: 0,
        }
    }

    fn cpt(&self, pos: usize) -> Option<char> {
        self.chars.get(pos).map(|&(_, c)| c)
    }

    fn class(&self, pos: usize) -> Class {
        match self.cpt(pos) {
            None => Class::default(),
            Some(c) => Class {
                in_range: true,
                letter: is_letter(c),
                number: c.is_numeric(),
                space: c.is_whitespace(),
            },
        }
    }

    fn byte(&self, pos: usize) -> usize {
        self.chars.get(pos).map_or(self.end, |&(b, _)| b)
    }

    /// Ends the current word at character `end`.
    fn add(&mut self, end: usize) {
        if end > self.prev_end {
            let word = (self.byte(self.prev_end), self.byte(end));
            self.out.push(word);
        }
        self.prev_end = end;
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` at `pos`, optionally ASCII case-insensitive: its length.
    fn contraction(&self, pos: usize, fold: bool) -> Option<usize> {
        if self.cpt(pos) != Some('\'') {
            return None;
        }
        let at = |i: usize| {
            self.cpt(pos + i)
                .map(|c| if fold { c.to_ascii_lowercase() } else { c })
        };
        match at(1)? {
            's' | 't' | 'm' | 'd' => Some(2),
            'r' | 'v' if at(2) == Some('e') => Some(3),
            'l' if at(2) == Some('l') => Some(3),
            _ => None,
        }
    }

    /// Length of the whitespace run at `pos`, and the end of its last `\r`/`\n`.
    fn whitespace_run(&self, pos: usize) -> (usize, Option<usize>) {
        let mut n = 0;
        let mut last_newline = None;
        while self.class(pos + n).space {
            if matches!(self.cpt(pos + n), Some('\r' | '\n')) {
                last_newline = Some(pos + n + 1);
            }
            n += 1;
        }
        (n, last_newline)
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    fn gpt2(mut self) {
        let n = self.chars.len();
        let mut pos = 0;
        while pos < n {
            if let Some(len) = self.contraction(pos, false) {
                pos += len;
                self.add(pos);
                continue;
            }
            let space = self.cpt(pos) == Some(' ');
            let mut c2 = if space {
                self.class(pos + 1)
            } else {
                self.class(pos)
            };
            if c2.letter || c2.number {
                let letters = c2.letter;
                pos += usize::from(space);
                while (letters && c2.letter) || (!letters && c2.number) {
                    pos += 1;
                    c2 = self.class(pos);
                }
                self.add(pos);
                continue;
            }
            if !(c2.space || c2.letter || c2.number) && c2.in_range {
                pos += usize::from(space);
                while !(c2.space || c2.letter || c2.number) && c2.in_range {
                    pos += 1;
                    c2 = self.class(pos);
                }
                self.add(pos);
                continue;
            }
            let (run, _) = self.whitespace_run(pos);
            if run > 1 && self.cpt(pos + run).is_some() {
                pos += run - 1; // \s+(?!\S)
            } else if run > 0 {
                pos += run; // \s+
            } else {
                pos += 1;
            }
            self.add(pos);
        }
    }

    /// Llama 3's regex (numbers in groups of `max_digits`).
    fn llama3(mut self, max_digits: usize) {
        let n = self.chars.len();
        let mut pos = 0;
        while pos < n {
            if let Some(len) = self.contraction(pos, true) {
                pos += len;
                self.add(pos);
                continue;
            }
            let cpt = self.cpt(pos);
            let here = self.class(pos);
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(matches!(cpt, Some('\r' | '\n')) || here.number)
                && (here.letter || self.class(pos + 1).letter)
            {
                pos += 1;
                while self.class(pos).letter {
                    pos += 1;
                }
                self.add(pos);
                continue;
            }
            // \p{N}{1,max_digits}
            if here.number {
                let mut start = pos;
                while self.class(pos).number {
                    pos += 1;
                    if pos - start >= max_digits {
                        self.add(pos);
                        start = pos;
                    }
                }
                self.add(pos);
                continue;
            }
            // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
            let space = cpt == Some(' ');
            let mut c2 = if space { self.class(pos + 1) } else { here };
            if !(c2.space || c2.letter || c2.number) && here.in_range {
                pos += usize::from(space);
                while !(c2.space || c2.letter || c2.number) && c2.in_range {
                    pos += 1;
                    c2 = self.class(pos);
                }
                while matches!(self.cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                self.add(pos);
                continue;
            }
            let (run, last_newline) = self.whitespace_run(pos);
            if let Some(end) = last_newline {
                pos = end; // \s*[\r\n]+
            } else if run > 1 && self.cpt(pos + run).is_some() {
                pos += run - 1; // \s+(?!\S)
            } else if run > 0 {
                pos += run; // \s+
            } else {
                pos += 1;
            }
            self.add(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words<'a>(name: &str, text: &'a str) -> Vec<&'a str> {
        let (pre, _) = PreTokenizer::from_name(Some(name)).unwrap();
        pre.split(text)
            .unwrap()
            .into_iter()
            .map(|(a, b)| &text[a..b])
            .collect()
    }

    /// The same split done by the regex itself (matches and gaps).
    fn regex_words<'a>(pattern: &str, text: &'a str) -> Vec<&'a str> {
        let re = Regex::new(pattern).unwrap();
        let mut out = Vec::new();
        let mut last = 0;
        for m in re.find_iter(text) {
            let m = m.unwrap();
            if m.start() > last {
                out.push(&text[last..m.start()]);
            }
            out.push(m.as_str());
            last = m.end();
        }
        if last < text.len() {
            out.push(&text[last..]);
        }
        out
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
        assert_eq!(words("qwen2", "ab 12"), ["ab", " ", "1", "2"]);
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

    #[test]
    fn huge_whitespace_run_is_linear() {
        let text = " ".repeat(2_000_000) + "x";
        assert_eq!(words("gpt2", &text).len(), 2);
        assert_eq!(words("llama3", &text).len(), 2);
    }

    #[test]
    fn letter_table_is_the_letter_category() {
        for c in ['a', 'Z', 'é', 'ß', 'Ж', '日', 'ا', 'ǅ', 'ʰ', '𝒜'] {
            assert!(is_letter(c), "{c:?}");
        }
        for c in [
            '1', '²', 'Ⅻ', '\u{301}', '\u{93f}', ' ', '😀', '!', '\u{200d}',
        ] {
            assert!(!is_letter(c), "{c:?}");
        }
    }

    fn tricky() -> impl Strategy<Value = String> {
        let chars = prop::sample::select(vec![
            ' ', ' ', ' ', '\t', '\n', '\r', '\u{a0}', '\u{3000}', '\u{85}', 'a', 'Z', 's', 'S',
            't', 'l', 'L', 'r', 'e', 'E', 'v', 'm', 'd', 'D', '\'', '1', '7', '²', '٣', 'Ⅻ', '!',
            '.', '$', '+', '<', '`', '|', 'é', 'ß', '日', '\u{301}', '\u{93f}', '😀', '\u{200d}',
            '\u{fe0f}', '\u{0}', '\u{7f}',
        ]);
        prop::collection::vec(chars, 0..40).prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #[test]
        fn hand_written_splitters_match_the_regexes(text in tricky()) {
            prop_assert_eq!(words("gpt2", &text), regex_words(GPT2, &text));
            prop_assert_eq!(words("llama3", &text), regex_words(LLAMA3, &text));
            prop_assert_eq!(words("qwen2", &text), regex_words(QWEN2, &text));
        }

        #[test]
        fn hand_written_splitters_match_on_any_text(text in any::<String>()) {
            prop_assert_eq!(words("gpt2", &text), regex_words(GPT2, &text));
            prop_assert_eq!(words("llama3", &text), regex_words(LLAMA3, &text));
        }
    }
}
