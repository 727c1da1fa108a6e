//! Chat templates: the Jinja templates models ship (`tokenizer.chat_template` in GGUF,
//! `chat_template` in `tokenizer_config.json`), rendered with minijinja the way Hugging Face
//! `apply_chat_template` renders them.
//!
//! Compatibility with HF: `trim_blocks` and `lstrip_blocks` are on (HF's Jinja environment
//! sets both); the context has `messages`, `add_generation_prompt`, `bos_token` and
//! `eos_token`; the globals `raise_exception` and `strftime_now` exist; `tojson` formats like
//! Python's `json.dumps` (no HTML escaping); and the Python methods templates call on strings,
//! dicts and lists (`.strip()`, `.startswith()`, `.items()`, ...) are provided by an unknown-method
//! callback, since `minijinja-contrib` is not a dependency.

use crate::file_limits::{
    CHAT_RECURSION_LIMIT, CHAT_RENDER_FUEL, CHAT_RENDER_MAX_BYTES, CHAT_TEMPLATE_MAX_BYTES,
};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use minijinja::value::{Kwargs, Value as JValue, ValueKind};
use minijinja::{Environment, ErrorKind, State};
use std::collections::HashMap;

/// One message of a conversation.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// ChatML, the fallback for models without a template: every message as
/// `<|im_start|>{role}\n{content}<|im_end|>\n`, then `<|im_start|>assistant\n` when a
/// generation prompt is asked for.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// From GGUF metadata `tokenizer.chat_template` (`None` if the model has none); BOS/EOS
    /// strings are the tokenizer's.
    pub fn from_gguf_metadata(
        md: &HashMap<String, Value>,
        tok: &Tokenizer,
    ) -> Result<Option<Self>> {
        let key = "tokenizer.chat_template";
        let source = match md.get(key) {
            None => return Ok(None),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(Error::BadMetadata {
                    key: key.into(),
                    reason: format!("expected a string, found {:?}", other.value_type()),
                })
            }
        };
        let piece = |id: Option<u32>| id.and_then(|i| tok.id_to_piece(i)).unwrap_or("");
        Self::new(source, piece(tok.bos_id()), piece(tok.eos_id())).map(Some)
    }

    /// From a template string (e.g. `tokenizer_config.json`'s `chat_template`), with the
    /// BOS/EOS token strings the template may reference.
    ///
    /// The template is a model file's content: its source is capped at
    /// [`CHAT_TEMPLATE_MAX_BYTES`], and every render runs with [`CHAT_RENDER_FUEL`]
    /// instructions, [`CHAT_RECURSION_LIMIT`] levels of nesting and [`CHAT_RENDER_MAX_BYTES`]
    /// of output, so a hostile template costs a bounded amount of time and output.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        if source.len() > CHAT_TEMPLATE_MAX_BYTES {
            return Err(Error::limit(
                TEMPLATE_NAME,
                "chat template source size",
                source.len() as u64,
                CHAT_TEMPLATE_MAX_BYTES as u64,
            ));
        }
        let mut env = Environment::new();
        env.set_fuel(Some(CHAT_RENDER_FUEL));
        env.set_recursion_limit(CHAT_RECURSION_LIMIT);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(python_method);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The ChatML fallback for models that ship no template.
    pub fn chatml() -> Self {
        Self::new(CHATML, "", "<|im_end|>").expect("the built-in ChatML template is valid Jinja")
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins. Encode the result with [`encode_rendered`].
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(template_error)?;
        let mut out = CappedWriter {
            buf: Vec::new(),
            cap: CHAT_RENDER_MAX_BYTES,
            overflowed: false,
        };
        let rendered = tmpl.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            },
            &mut out,
        );
        if out.overflowed {
            return Err(Error::limit(
                TEMPLATE_NAME,
                "rendered chat prompt size",
                (out.buf.len() as u64).saturating_add(1),
                CHAT_RENDER_MAX_BYTES as u64,
            ));
        }
        match rendered {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                return Err(Error::limit(
                    TEMPLATE_NAME,
                    "chat template render instructions",
                    CHAT_RENDER_FUEL.saturating_add(1),
                    CHAT_RENDER_FUEL,
                ));
            }
            Err(e) => return Err(template_error(e)),
        }
        String::from_utf8(out.buf)
            .map_err(|e| Error::ChatTemplate(format!("the rendered prompt is not UTF-8: {e}")))
    }
}

/// The render's output, refusing to grow past `cap` bytes (the render then fails).
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.cap {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered chat prompt too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The prompt ids of a conversation: the template with the generation prompt, then
/// [`encode_rendered`]. What `lamina generate --chat` and the chat API both send.
pub fn encode_chat(
    tok: &Tokenizer,
    template: &ChatTemplate,
    messages: &[ChatMessage],
) -> Result<Vec<u32>> {
    encode_rendered(tok, &template.render(messages, true)?)
}

/// Encodes a rendered chat prompt: its special tokens are parsed, and BOS is added only when
/// the model wants it and the template did not already write it.
pub fn encode_rendered(tok: &Tokenizer, rendered: &str) -> Result<Vec<u32>> {
    let bos_written = tok
        .bos_id()
        .and_then(|id| tok.id_to_piece(id))
        .is_some_and(|bos| !bos.is_empty() && rendered.starts_with(bos));
    tok.encode(rendered, tok.add_bos_default() && !bos_written, true)
}

/// minijinja's message with its source location and cause chain.
fn template_error(e: minijinja::Error) -> Error {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        msg.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    Error::ChatTemplate(msg)
}

fn raise_exception(msg: String) -> std::result::Result<JValue, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(format)`: the current UTC time, with the usual `strftime` directives.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats a Unix time (UTC) like C's `strftime` for the common directives.
fn strftime(format: &str, unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let month_name = MONTHS[(month - 1) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let no_pad = spec == Some('-');
        if no_pad {
            spec = chars.next();
        }
        let num = |v: i64, width: usize| {
            if no_pad {
                v.to_string()
            } else {
                format!("{v:0width$}")
            }
        };
        match spec {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year.rem_euclid(100), 2)),
            Some('m') => out.push_str(&num(month, 2)),
            Some('d') => out.push_str(&num(day, 2)),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('j') => out.push_str(&num(yday, 3)),
            Some('H') => out.push_str(&num(hour, 2)),
            Some('I') => out.push_str(&num((hour + 11) % 12 + 1, 2)),
            Some('M') => out.push_str(&num(minute, 2)),
            Some('S') => out.push_str(&num(second, 2)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(month_name),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('F') => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            Some('T') => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// `tojson` like Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, which HF
/// uses, instead of minijinja's HTML-safe variant (that escapes `<` and `'`).
fn tojson(value: JValue, kwargs: Kwargs) -> std::result::Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    let mut out = String::new();
    write_json(&json, indent, 0, &mut out);
    Ok(JValue::from_safe_string(out))
}

fn write_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&J::String(k.clone()).to_string());
                out.push_str(": ");
                write_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn arg_str(args: &[JValue], i: usize) -> Option<&str> {
    args.get(i).and_then(JValue::as_str)
}

fn strip_set(s: &str, chars: Option<&str>, left: bool, right: bool) -> String {
    let hit = |c: char| match chars {
        Some(set) => set.contains(c),
        None => c.is_whitespace(),
    };
    let mut t = s;
    if left {
        t = t.trim_start_matches(hit);
    }
    if right {
        t = t.trim_end_matches(hit);
    }
    t.to_owned()
}

/// `startswith`/`endswith` take a string or a tuple (list) of strings.
fn affix_match(
    arg: Option<&JValue>,
    test: impl Fn(&str) -> bool,
) -> std::result::Result<bool, minijinja::Error> {
    let Some(arg) = arg else {
        return Err(minijinja::Error::new(
            ErrorKind::MissingArgument,
            "expected a prefix",
        ));
    };
    if let Some(s) = arg.as_str() {
        return Ok(test(s));
    }
    for item in arg.try_iter()? {
        if item.as_str().is_some_and(&test) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Python methods on template values that Jinja2 (running on Python objects) has and
/// minijinja lacks.
fn python_method(
    state: &State,
    value: &JValue,
    method: &str,
    args: &[JValue],
) -> std::result::Result<JValue, minijinja::Error> {
    let unknown = || Err(minijinja::Error::from(ErrorKind::UnknownMethod));
    match value.kind() {
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            Ok(match method {
                "strip" => JValue::from(strip_set(s, arg_str(args, 0), true, true)),
                "lstrip" => JValue::from(strip_set(s, arg_str(args, 0), true, false)),
                "rstrip" => JValue::from(strip_set(s, arg_str(args, 0), false, true)),
                "lower" => JValue::from(s.to_lowercase()),
                "upper" => JValue::from(s.to_uppercase()),
                "title" => state.apply_filter("title", std::slice::from_ref(value))?,
                "capitalize" => state.apply_filter("capitalize", std::slice::from_ref(value))?,
                "startswith" => JValue::from(affix_match(args.first(), |p| s.starts_with(p))?),
                "endswith" => JValue::from(affix_match(args.first(), |p| s.ends_with(p))?),
                "replace" => {
                    let (Some(from), Some(to)) = (arg_str(args, 0), arg_str(args, 1)) else {
                        return Err(minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            "replace() takes two strings",
                        ));
                    };
                    match args.get(2).and_then(|c| i64::try_from(c.clone()).ok()) {
                        Some(n) if n >= 0 => JValue::from(s.replacen(from, to, n as usize)),
                        _ => JValue::from(s.replace(from, to)),
                    }
                }
                "split" => {
                    let max = args
                        .get(1)
                        .and_then(|c| i64::try_from(c.clone()).ok())
                        .filter(|&n| n >= 0)
                        .map(|n| n as usize);
                    let parts: Vec<String> = match (arg_str(args, 0), max) {
                        (Some(sep), Some(n)) => s.splitn(n + 1, sep).map(str::to_owned).collect(),
                        (Some(sep), None) => s.split(sep).map(str::to_owned).collect(),
                        (None, _) => s.split_whitespace().map(str::to_owned).collect(),
                    };
                    JValue::from(parts)
                }
                "splitlines" => JValue::from(s.lines().map(str::to_owned).collect::<Vec<_>>()),
                "find" => match arg_str(args, 0) {
                    Some(sub) => JValue::from(
                        s.find(sub)
                            .map(|b| s[..b].chars().count() as i64)
                            .unwrap_or(-1),
                    ),
                    None => return unknown(),
                },
                "count" => match arg_str(args, 0) {
                    Some(sub) if !sub.is_empty() => JValue::from(s.matches(sub).count()),
                    _ => return unknown(),
                },
                "join" => {
                    let Some(items) = args.first() else {
                        return unknown();
                    };
                    let parts: Vec<String> = items.try_iter()?.map(|v| v.to_string()).collect();
                    JValue::from(parts.join(s))
                }
                "isdigit" => JValue::from(!s.is_empty() && s.chars().all(|c| c.is_ascii_digit())),
                "isalpha" => JValue::from(!s.is_empty() && s.chars().all(char::is_alphabetic)),
                "isspace" => JValue::from(!s.is_empty() && s.chars().all(char::is_whitespace)),
                _ => return unknown(),
            })
        }
        ValueKind::Map => match method {
            "items" => state.apply_filter("items", std::slice::from_ref(value)),
            "keys" => Ok(JValue::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => {
                let mut vals = Vec::new();
                for k in value.try_iter()? {
                    vals.push(value.get_item(&k)?);
                }
                Ok(JValue::from(vals))
            }
            "get" => {
                let Some(key) = args.first() else {
                    return unknown();
                };
                let v = value.get_item(key)?;
                Ok(if v.is_undefined() {
                    args.get(1).cloned().unwrap_or(JValue::from(()))
                } else {
                    v
                })
            }
            _ => unknown(),
        },
        ValueKind::Seq => match method {
            "count" => {
                let Some(needle) = args.first() else {
                    return unknown();
                };
                Ok(JValue::from(
                    value.try_iter()?.filter(|v| v == needle).count(),
                ))
            }
            "index" => {
                let Some(needle) = args.first() else {
                    return unknown();
                };
                match value.try_iter()?.position(|v| &v == needle) {
                    Some(i) => Ok(JValue::from(i)),
                    None => Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "value is not in list",
                    )),
                }
            }
            _ => unknown(),
        },
        _ => unknown(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> ChatMessage {
        ChatMessage::new("user", s)
    }

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::chatml();
        let out = t.render(&[user("hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t.render(&[user("hi")], false).unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n");
    }

    #[test]
    fn syntax_error_is_chat_template_error() {
        let err = ChatTemplate::new("{% for m in messages %}{{ m.content }", "", "").unwrap_err();
        assert!(matches!(err, Error::ChatTemplate(_)), "{err:?}");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'system' %}{{ raise_exception('need a system message') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let err = t.render(&[user("x")], false).unwrap_err();
        assert!(err.to_string().contains("need a system message"), "{err}");
    }

    #[test]
    fn python_methods_and_hf_whitespace_rules() {
        let src = "{% for m in messages %}\n  {{ m['content'].strip().upper() }}|{{ m.role.startswith(('us', 'x')) }}|{{ m.get('role', 'none') }}|{{ m.content.split(',') | length }}\n{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t.render(&[user("  a,b ")], false).unwrap();
        assert_eq!(out, "  A,B|True|user|2\n");
    }

    #[test]
    fn tojson_is_python_style() {
        let t = ChatTemplate::new("{{ {'a': '<b>', 'c': [1, 2]} | tojson }}", "", "").unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            r#"{"a": "<b>", "c": [1, 2]}"#
        );
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(
            strftime("%d %B %Y, %A %b %-d %j", t),
            "29 February 2024, Thursday Feb 29 060"
        );
        assert_eq!(strftime("%F", 0), "1970-01-01");
        let now = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
        assert!(now.render(&[], false).unwrap().starts_with("20"));
    }
}
