//! OpenAI's request and response shapes, and the validation that turns a request into
//! lamina's generation settings.
//!
//! A body is parsed twice from one JSON value: once into the fields both endpoints share
//! ([`CommonParams`]) and once into the endpoint's own ([`CompletionFields`],
//! [`ChatFields`]). Unknown fields are ignored (clients send extras), wrong types are 400s
//! naming the field, and settings lamina cannot honour are refused rather than dropped,
//! so a client never gets an answer to a different question than it asked.

use lamina_protocol::WireDType;
use lamina_sharding::generate::FinishReason;
use lamina_sharding::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::ApiError;

/// One string or a list (`stop`, `prompt`).
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Fields of both `/v1/completions` and `/v1/chat/completions`.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct CommonParams {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<OneOrMany>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u64>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// lamina extension: keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// lamina extension.
    pub min_p: Option<f32>,
    /// lamina extension (sampled on the entry, since the penalty must see the prompt).
    pub repetition_penalty: Option<f32>,
    /// lamina extension: activations on the wire, "f16" (default) or "f32" (bit-exact).
    pub activation_dtype: Option<WireDType>,
}

/// `/v1/completions`' own fields.
#[derive(Deserialize, Debug, Clone)]
pub struct CompletionFields {
    pub prompt: OneOrMany,
    pub echo: Option<bool>,
    pub best_of: Option<u64>,
    pub suffix: Option<String>,
    /// An integer in OpenAI's API; only "none" is served.
    pub logprobs: Option<Value>,
}

/// `/v1/chat/completions`' own fields.
#[derive(Deserialize, Debug, Clone)]
pub struct ChatFields {
    pub messages: Vec<ChatMessageIn>,
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// A message's content: text, or a list of parts of which lamina reads the text ones.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug, Clone)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// A request's settings once checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub model: Option<String>,
    /// Asked for explicitly (`max_tokens`, or `max_completion_tokens` for chat).
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub activation_dtype: WireDType,
}

/// Stop strings OpenAI accepts at most.
const MAX_STOP: usize = 4;

fn refuse_nonzero(param: &str, v: Option<f32>) -> Result<(), ApiError> {
    match v {
        Some(x) if x != 0.0 => Err(ApiError::invalid_param(
            param,
            format!("{param} = {x} is not supported by lamina (only 0); use repetition_penalty"),
        )),
        _ => Ok(()),
    }
}

impl CommonParams {
    /// Checks what both endpoints share; `max_tokens` is the endpoint's chosen field.
    pub fn settings(self, max_tokens: Option<u64>) -> Result<Settings, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid_param(
                    "n",
                    format!("n = {n} is not supported: lamina returns one choice (n = 1)"),
                ));
            }
        }
        refuse_nonzero("frequency_penalty", self.frequency_penalty)?;
        refuse_nonzero("presence_penalty", self.presence_penalty)?;
        if self.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(ApiError::invalid_param(
                "logit_bias",
                "logit_bias is not supported by lamina",
            ));
        }
        let stop = self.stop.map(OneOrMany::into_vec).unwrap_or_default();
        if stop.len() > MAX_STOP {
            return Err(ApiError::invalid_param(
                "stop",
                format!("at most {MAX_STOP} stop sequences, got {}", stop.len()),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid_param(
                "stop",
                "stop sequences must not be empty",
            ));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid_param(
                "temperature",
                format!("temperature = {temperature}: must be in [0, 2]"),
            ));
        }
        let sampling = SamplingParams {
            temperature,
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            seed: self.seed.unwrap_or(0),
            ..SamplingParams::default()
        };
        if let Err(e) = sampling.validate() {
            let msg = e.to_string();
            let param = ["top_p", "min_p", "repetition_penalty", "temperature"]
                .into_iter()
                .find(|p| msg.contains(p))
                .unwrap_or("sampling");
            return Err(ApiError::invalid_param(param, msg));
        }
        let max_tokens = max_tokens
            .map(|m| {
                usize::try_from(m).map_err(|_| {
                    ApiError::context_length("max_tokens", format!("max_tokens = {m} is too big"))
                })
            })
            .transpose()?;
        let stream = self.stream.unwrap_or(false);
        Ok(Settings {
            model: self.model,
            max_tokens,
            sampling,
            stop,
            stream,
            include_usage: stream
                && self
                    .stream_options
                    .and_then(|o| o.include_usage)
                    .unwrap_or(false),
            activation_dtype: self.activation_dtype.unwrap_or(WireDType::F16),
        })
    }
}

impl CompletionFields {
    /// The one prompt, after refusing what lamina does not do.
    pub fn prompt(self) -> Result<String, ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::invalid_param("echo", "echo is not supported"));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::invalid_param(
                "best_of",
                "best_of is not supported (only 1)",
            ));
        }
        if self.suffix.is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_param("suffix", "suffix is not supported"));
        }
        match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Number(n)) if n.as_u64() == Some(0) => {}
            Some(v) => {
                return Err(ApiError::invalid_param(
                    "logprobs",
                    format!("logprobs = {v} is not supported (only null)"),
                ))
            }
        }
        match self.prompt {
            OneOrMany::One(p) => Ok(p),
            OneOrMany::Many(mut v) if v.len() == 1 => Ok(v.remove(0)),
            OneOrMany::Many(v) => Err(ApiError::invalid_param(
                "prompt",
                format!("one prompt per request, got a list of {}", v.len()),
            )),
        }
    }
}

impl ChatFields {
    /// The conversation as lamina's chat messages, after refusing what lamina does not do.
    pub fn messages(self) -> Result<Vec<lamina_sharding::chat::ChatMessage>, ApiError> {
        if self.logprobs == Some(true) {
            return Err(ApiError::invalid_param(
                "logprobs",
                "logprobs is not supported",
            ));
        }
        if self.top_logprobs.is_some_and(|n| n > 0) {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "top_logprobs is not supported",
            ));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "messages must not be empty",
            ));
        }
        self.messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let content = match m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t,
                    Some(Content::Parts(parts)) => {
                        let mut texts = Vec::with_capacity(parts.len());
                        for (j, p) in parts.into_iter().enumerate() {
                            match (p.kind.as_str(), p.text) {
                                ("text", Some(t)) => texts.push(t),
                                ("text", None) => {
                                    return Err(ApiError::invalid_param(
                                        &format!("messages[{i}].content[{j}].text"),
                                        "a text part needs `text`",
                                    ))
                                }
                                (other, _) => {
                                    return Err(ApiError::invalid_param(
                                        &format!("messages[{i}].content[{j}].type"),
                                        format!(
                                            "content parts of type {other:?} are not supported (only \"text\")"
                                        ),
                                    ))
                                }
                            }
                        }
                        texts.join("\n")
                    }
                };
                Ok(lamina_sharding::chat::ChatMessage {
                    role: m.role,
                    content,
                })
            })
            .collect()
    }
}

/// Which endpoint answers: the names in ids and `object`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

impl Kind {
    pub fn id_prefix(self) -> &'static str {
        match self {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        }
    }

    pub fn object(self) -> &'static str {
        match self {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion",
        }
    }

    pub fn chunk_object(self) -> &'static str {
        match self {
            // OpenAI streams legacy completions as `text_completion` objects too.
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        }
    }
}

/// OpenAI has two reasons; running out of context is "length" there too.
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length | FinishReason::ContextLength => "length",
    }
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// What identifies one response (shared by all chunks of a stream).
#[derive(Clone, Debug)]
pub struct ResponseMeta {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    /// The whole (non-streamed) answer. `token_ids` is a lamina extension.
    pub fn response(
        &self,
        text: &str,
        finish: FinishReason,
        token_ids: &[u32],
        usage_v: Value,
    ) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish_reason(finish),
                "token_ids": token_ids,
            }),
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish_reason(finish),
                "token_ids": token_ids,
            }),
        };
        json!({
            "id": self.id,
            "object": self.kind.object(),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage_v,
        })
    }

    /// One streamed chunk: `delta` is the chat delta or, for completions, ignored in
    /// favour of `text`.
    pub fn chunk(&self, text: Option<&str>, delta: Value, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
            Kind::Chat => json!({
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        json!({
            "id": self.id,
            "object": self.kind.chunk_object(),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    /// The last chunk asked for with `stream_options.include_usage`: no choices, usage.
    pub fn usage_chunk(&self, usage_v: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.kind.chunk_object(),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_v,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::errors::parse_value;
    use super::*;
    use axum::http::StatusCode;

    fn common(v: Value) -> Result<Settings, ApiError> {
        let c: CommonParams = parse_value(v.clone())?;
        let max = v.get("max_tokens").and_then(Value::as_u64);
        c.settings(max)
    }

    #[test]
    fn defaults_and_extensions() {
        let s = common(json!({"prompt": "x"})).unwrap();
        assert_eq!(s.max_tokens, None);
        assert_eq!(s.sampling.temperature, 1.0);
        assert!(!s.stream && !s.include_usage);
        assert_eq!(s.activation_dtype, WireDType::F16);
        let s = common(json!({
            "model": "m", "max_tokens": 5, "temperature": 0, "top_p": 0.5, "seed": 3,
            "stop": "\n", "stream": true, "stream_options": {"include_usage": true},
            "n": 1, "frequency_penalty": 0, "presence_penalty": 0.0, "user": "u",
            "top_k": 4, "activation_dtype": "f32", "some_future_field": {"x": 1},
        }))
        .unwrap();
        assert_eq!(s.model.as_deref(), Some("m"));
        assert_eq!(s.max_tokens, Some(5));
        assert_eq!(s.sampling.temperature, 0.0);
        assert_eq!(s.sampling.top_p, 0.5);
        assert_eq!(s.sampling.top_k, 4);
        assert_eq!(s.sampling.seed, 3);
        assert_eq!(s.stop, ["\n"]);
        assert!(s.stream && s.include_usage);
        assert_eq!(s.activation_dtype, WireDType::F32);
        let s =
            common(json!({"stop": ["a", "b"], "stream_options": {"include_usage": true}})).unwrap();
        assert_eq!(s.stop, ["a", "b"]);
        assert!(!s.include_usage, "usage chunks only when streaming");
    }

    #[test]
    fn refusals_name_the_param() {
        for (body, param) in [
            (json!({"n": 2}), "n"),
            (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
            (json!({"presence_penalty": -1}), "presence_penalty"),
            (json!({"temperature": 3}), "temperature"),
            (json!({"temperature": -0.1}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_p": 1.5}), "top_p"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"stop": ""}), "stop"),
            (json!({"logit_bias": {"5": 10}}), "logit_bias"),
            // Wrong types.
            (json!({"max_tokens": "5"}), "max_tokens"),
            (json!({"max_tokens": -1}), "max_tokens"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"stream": "yes"}), "stream"),
            (json!({"stop": 5}), "stop"),
            (json!({"seed": 1.5}), "seed"),
            (
                json!({"stream_options": {"include_usage": 1}}),
                "stream_options.include_usage",
            ),
        ] {
            let e = common(body.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.kind, "invalid_request_error", "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        let e = common(json!({"frequency_penalty": 0.5})).unwrap_err();
        assert!(e.message.contains("only 0"), "{}", e.message);
    }

    #[test]
    fn completion_prompt_forms() {
        let f = |v: Value| parse_value::<CompletionFields>(v).and_then(CompletionFields::prompt);
        assert_eq!(f(json!({"prompt": "hi"})).unwrap(), "hi");
        assert_eq!(f(json!({"prompt": ["hi"]})).unwrap(), "hi");
        assert_eq!(f(json!({"prompt": "hi", "logprobs": null})).unwrap(), "hi");
        for (body, param) in [
            (json!({"prompt": ["a", "b"]}), "prompt"),
            (json!({"prompt": 5}), "prompt"),
            (json!({}), ""),
            (json!({"prompt": "a", "echo": true}), "echo"),
            (json!({"prompt": "a", "logprobs": 2}), "logprobs"),
            (json!({"prompt": "a", "best_of": 3}), "best_of"),
        ] {
            let e = f(body.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(
                e.param.as_deref().unwrap_or(""),
                param,
                "{body}: {}",
                e.message
            );
        }
    }

    #[test]
    fn chat_message_forms() {
        let f = |v: Value| parse_value::<ChatFields>(v).and_then(ChatFields::messages);
        let m = f(json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "name": "x"},
        ]}))
        .unwrap();
        assert_eq!(m[0].content, "be brief");
        assert_eq!(m[1].content, "a\nb");
        assert_eq!(m[2].content, "");
        for (body, param) in [
            (json!({"messages": []}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": [{"content": "hi"}]}), "messages[0]"),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true}),
                "logprobs",
            ),
        ] {
            let e = f(body.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn response_shapes() {
        let meta = ResponseMeta {
            kind: Kind::Chat,
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
        };
        let r = meta.response("hi", FinishReason::ContextLength, &[1, 2], usage(3, 2));
        assert_eq!(r["object"], "chat.completion");
        assert_eq!(
            r["choices"][0]["message"],
            json!({"role": "assistant", "content": "hi"})
        );
        assert_eq!(r["choices"][0]["finish_reason"], "length");
        assert_eq!(r["usage"]["total_tokens"], 5);
        let c = meta.chunk(None, json!({"content": "x"}), None);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["choices"][0]["delta"]["content"], "x");
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
        let meta = ResponseMeta {
            kind: Kind::Completion,
            ..meta
        };
        let r = meta.response("hi", FinishReason::Stop, &[], usage(1, 0));
        assert_eq!(r["object"], "text_completion");
        assert_eq!(r["choices"][0]["text"], "hi");
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        let u = meta.usage_chunk(usage(1, 1));
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["total_tokens"], 2);
    }
}
