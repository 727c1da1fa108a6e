//! Valid messages of every kind, for seeds: the fuzzer starts from frames the decoder
//! accepts and mutates them field by field.

use lamina_protocol::{
    Close, Closed, EndsAt, ErrorCode, ErrorMessage, FailureReport, Fault, Forward, ForwardInput,
    Hello, HelloAck, HopAddr, LayerRange, Message, OpenSession, Progress, SamplingSettings,
    SessionId, SessionOpened, StepOutput, StepResult, TraceId, WireDType, WireTensor,
};

use crate::{node_key, MODEL};

/// The session every seed speaks of.
pub const SESSION: u128 = 1;

fn range(start: u32, end: u32) -> LayerRange {
    LayerRange::new(start, end).unwrap_or_else(|_| unreachable!("start < end"))
}

fn tensor(shape: &[u32], dtype: WireDType) -> WireTensor {
    let n: u32 = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 1.0).collect();
    WireTensor::from_f32(shape, &values, dtype).unwrap_or_else(|_| unreachable!("sizes agree"))
}

/// An `OpenSession` for `layers` of a model of `n_layers`, ending at this hop (sampling
/// when it is the last) or forwarding to one more hop.
pub fn open(layers: (u32, u32), n_layers: u32, max_length: u32, forward: bool) -> OpenSession {
    let last = layers.1 == n_layers;
    let next_hops = if forward && !last {
        vec![HopAddr {
            layers: range(layers.1, n_layers),
            addr: "127.0.0.1:4433".into(),
            peer_id: node_key().public().to_peer_id().to_bytes(),
        }]
    } else {
        Vec::new()
    };
    OpenSession {
        session_id: SessionId::from(SESSION),
        model_id: MODEL,
        layers: range(layers.0, layers.1),
        max_length,
        activation_dtype: WireDType::F16,
        sampling: Some(SamplingSettings {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
            seed: 42,
            ..SamplingSettings::greedy()
        }),
        return_logits: false,
        next_hops,
        ends: EndsAt::Hops,
        trace_id: Some(TraceId::from_bytes([9; 16])),
    }
}

pub fn hello() -> Hello {
    Hello::new(MODEL, "fuzz")
}

/// A step of token ids.
pub fn tokens(step: u64, start_pos: u32, ids: &[u32]) -> Forward {
    Forward {
        session_id: SessionId::from(SESSION),
        step,
        start_pos,
        input: ForwardInput::Tokens(ids.to_vec()),
    }
}

/// A step of `rows` hidden-state rows of width `width`.
pub fn hidden(step: u64, start_pos: u32, rows: u32, width: u32, dtype: WireDType) -> Forward {
    Forward {
        session_id: SessionId::from(SESSION),
        step,
        start_pos,
        input: ForwardInput::Hidden(tensor(&[rows, width], dtype)),
    }
}

pub fn close() -> Close {
    Close {
        session_id: SessionId::from(SESSION),
    }
}

/// One valid message of every kind (and of most variants).
pub fn all() -> Vec<(&'static str, Message)> {
    let sid = SessionId::from(SESSION);
    let report = FailureReport {
        reporter: node_key().public().to_peer_id().to_bytes(),
        session_id: sid,
        layers: range(2, 4),
        code: ErrorCode::Busy,
        fault: Fault::Own,
    }
    .sign(&node_key())
    .ok();
    let mut error = ErrorMessage::new(ErrorCode::Busy, "busy: try later");
    error.report = report;
    let mut entry_open = open((0, 4), 4, 64, false);
    entry_open.ends = EndsAt::Entry;
    entry_open.sampling = None;
    vec![
        ("hello", Message::Hello(hello())),
        (
            "hello-ack",
            Message::HelloAck(HelloAck::new("fuzz", Some(range(0, 2)))),
        ),
        ("open", Message::OpenSession(open((0, 2), 4, 64, true))),
        (
            "open-last",
            Message::OpenSession(open((2, 4), 4, 64, false)),
        ),
        ("open-entry", Message::OpenSession(entry_open)),
        (
            "opened",
            Message::SessionOpened(SessionOpened { session_id: sid }),
        ),
        ("forward-tokens", Message::Forward(tokens(0, 0, &[1, 2, 3]))),
        (
            "forward-f16",
            Message::Forward(hidden(1, 3, 2, 4, WireDType::F16)),
        ),
        (
            "forward-f32",
            Message::Forward(hidden(2, 5, 1, 4, WireDType::F32)),
        ),
        (
            "forward-bf16",
            Message::Forward(hidden(3, 6, 1, 4, WireDType::BF16)),
        ),
        (
            "result-token",
            Message::StepResult(StepResult {
                session_id: sid,
                step: 0,
                output: StepOutput::Token {
                    id: 5,
                    logits: None,
                },
                evidence: Vec::new(),
            }),
        ),
        (
            "result-logits",
            Message::StepResult(StepResult {
                session_id: sid,
                step: 1,
                output: StepOutput::Token {
                    id: 5,
                    logits: Some(tensor(&[8], WireDType::F32)),
                },
                evidence: Vec::new(),
            }),
        ),
        (
            "result-hidden",
            Message::StepResult(StepResult {
                session_id: sid,
                step: 2,
                output: StepOutput::Hidden(tensor(&[1, 4], WireDType::F16)),
                evidence: Vec::new(),
            }),
        ),
        ("close", Message::Close(close())),
        ("closed", Message::Closed(Closed { session_id: sid })),
        (
            "progress",
            Message::Progress(Progress {
                session_id: sid,
                step: 3,
            }),
        ),
        ("error", Message::Error(error)),
    ]
}
