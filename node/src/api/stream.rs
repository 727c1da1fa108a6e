//! Server-sent events in OpenAI's chunk format: `data: {json}\n\n` per chunk, the final
//! chunk with `finish_reason`, an optional usage chunk, then `data: [DONE]\n\n`.
//!
//! The body is a stream over the generation's channel: when the client goes away hyper
//! drops the body, the channel closes, and the generation's next `on_text` sees it and
//! stops the session.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::errors::ApiError;
use super::event::Event;
use super::openai::{finish_reason, usage, Kind, ResponseMeta};

/// One SSE event carrying `data`.
pub fn sse_data(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// The stream's terminator.
pub fn sse_done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// Turns generation events into SSE bytes for one response.
pub struct ChunkWriter {
    pub meta: ResponseMeta,
    pub include_usage: bool,
}

impl ChunkWriter {
    /// What goes before any text: chat streams announce the assistant's role first.
    pub fn start(&self) -> Vec<Bytes> {
        match self.meta.kind {
            Kind::Chat => vec![self.chunk(None, json!({"role": "assistant", "content": ""}), None)],
            Kind::Completion => vec![],
        }
    }

    pub fn text(&self, piece: &str) -> Bytes {
        self.chunk(Some(piece), json!({"content": piece}), None)
    }

    /// The end of a successful generation.
    pub fn finish(&self, out: &lamina_sharding::generate::GenerationOutput) -> Vec<Bytes> {
        let mut v = vec![self.chunk(Some(""), json!({}), Some(finish_reason(out.finish_reason)))];
        if self.include_usage {
            let u = usage(out.prompt_token_ids.len(), out.generated_token_ids.len());
            v.push(sse_data(&self.meta.usage_chunk(u).to_string()));
        }
        v.push(sse_done());
        v
    }

    /// A failure after the headers went out: OpenAI's clients raise on an `error` event.
    pub fn error(&self, e: &ApiError) -> Vec<Bytes> {
        vec![sse_data(&e.body().to_string())]
    }

    /// The bytes for one event, and whether it was the last.
    pub fn event(&self, ev: Event) -> (Vec<Bytes>, bool) {
        match ev {
            Event::Started => (vec![], false),
            Event::Text(t) => (vec![self.text(&t)], false),
            Event::Done(Ok(out)) => (self.finish(&out), true),
            Event::Done(Err(e)) => (self.error(&e), true),
        }
    }

    fn chunk(&self, text: Option<&str>, delta: Value, finish: Option<&str>) -> Bytes {
        sse_data(&self.meta.chunk(text, delta, finish).to_string())
    }
}

struct State {
    rx: mpsc::Receiver<Event>,
    writer: ChunkWriter,
    pending: VecDeque<Bytes>,
    finished: bool,
}

/// The SSE response for a generation whose first event has been received already.
pub fn response(writer: ChunkWriter, first: Event, rx: mpsc::Receiver<Event>) -> Response {
    let mut pending: VecDeque<Bytes> = writer.start().into();
    let (bytes, finished) = writer.event(first);
    pending.extend(bytes);
    let state = State {
        rx,
        writer,
        pending,
        finished,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(b) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(b), st));
            }
            if st.finished {
                return None;
            }
            match st.rx.recv().await {
                Some(ev) => {
                    let (bytes, finished) = st.writer.event(ev);
                    st.pending.extend(bytes);
                    st.finished = finished;
                }
                None => {
                    let e = ApiError::internal("the generation ended without a result");
                    st.pending.extend(st.writer.error(&e));
                    st.finished = true;
                }
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lamina_sharding::generate::{FinishReason, GenerationOutput, Timings};

    fn out(finish: FinishReason) -> GenerationOutput {
        GenerationOutput {
            prompt_token_ids: vec![1, 2, 3],
            generated_token_ids: vec![4, 5],
            text: "hi".into(),
            finish_reason: finish,
            timings: Timings::default(),
        }
    }

    fn writer(kind: Kind, include_usage: bool) -> ChunkWriter {
        ChunkWriter {
            meta: ResponseMeta {
                kind,
                id: "x-1".into(),
                created: 9,
                model: "m".into(),
            },
            include_usage,
        }
    }

    fn data(b: &Bytes) -> Value {
        let s = std::str::from_utf8(b).unwrap();
        let j = s
            .strip_prefix("data: ")
            .and_then(|s| s.strip_suffix("\n\n"))
            .unwrap();
        serde_json::from_str(j).unwrap()
    }

    #[test]
    fn sse_framing() {
        assert_eq!(&sse_data("{\"a\":1}")[..], b"data: {\"a\":1}\n\n");
        assert_eq!(&sse_done()[..], b"data: [DONE]\n\n");
    }

    #[test]
    fn chat_stream_chunks() {
        let w = writer(Kind::Chat, true);
        let start = w.start();
        assert_eq!(start.len(), 1);
        let first = data(&start[0]);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
        let t = data(&w.text("Hel\"lo\n"));
        assert_eq!(t["choices"][0]["delta"]["content"], "Hel\"lo\n");
        assert_eq!(t["id"], "x-1");
        let end = w.finish(&out(FinishReason::Length));
        assert_eq!(end.len(), 3);
        let last = data(&end[0]);
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["choices"][0]["delta"], json!({}));
        let u = data(&end[1]);
        assert_eq!(u["choices"], json!([]));
        assert_eq!(
            u["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
        );
        assert_eq!(end[2], sse_done());
    }

    #[test]
    fn completion_stream_chunks_without_usage() {
        let w = writer(Kind::Completion, false);
        assert!(w.start().is_empty());
        let t = data(&w.text("abc"));
        assert_eq!(t["object"], "text_completion");
        assert_eq!(t["choices"][0]["text"], "abc");
        let end = w.finish(&out(FinishReason::Stop));
        assert_eq!(end.len(), 2);
        assert_eq!(data(&end[0])["choices"][0]["finish_reason"], "stop");
        assert_eq!(end[1], sse_done());
        let (bytes, done) = w.event(Event::Done(Err(ApiError::internal("boom"))));
        assert!(done);
        assert_eq!(data(&bytes[0])["error"]["message"], "boom");
    }
}
