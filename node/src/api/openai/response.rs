//! OpenAI's response and stream-chunk shapes.

use lamina_sharding::generate::FinishReason;
use serde_json::{json, Value};

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
