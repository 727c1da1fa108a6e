//! OpenAI's request shapes and the validation that turns them into lamina's settings.

use lamina_protocol::WireDType;
use lamina_sharding::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::Value;

use crate::api::errors::ApiError;

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
