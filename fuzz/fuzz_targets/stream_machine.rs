//! libFuzzer target: a hop's session state machine (`lamina_node::session::machine`)
//! driven by a sequence of messages decoded from the input with the protocol's own codec,
//! the way the session server drives it (`session/stream.rs`).
//!
//! Input: a 16-byte header, then a stream of frames.
//! * bytes 0..8 pick the host: layer count, the loaded range, hidden width and rows per
//!   step, vocabulary and context length;
//! * bytes 8..16 are 32 two-bit decisions, one per message (cycled): 0 means all goes well;
//!   bit 0 means the server says no (no free session slot; the step's compute or the next
//!   hop failed, so the step is not recorded); bit 1 alone means the next hop refused the
//!   open (not recorded); both bits mean the session also expires (idle) after this
//!   message.
//!
//! Properties, checked after every message: nothing panics; a refused message changes
//! nothing; an accepted `OpenSession` fits the host (layers, context, a free slot) and its
//! role fits the chain; an accepted `Forward` continues the cache exactly (step above the
//! last, `start_pos` = positions held, within `max_length` and the rows per step, tokens
//! inside the vocabulary
//! and only on an embedding hop, hidden states of the host's width otherwise); positions
//! and step numbers only grow; once closed a stream stays closed and accepts nothing.
#![no_main]

use lamina_fuzz::{messages, write_seeds_if_asked, MODEL};
use lamina_node::session::machine::{HostInfo, Role, StreamMachine};
use lamina_protocol::{
    encode_frame, EndsAt, ForwardInput, FrameDecoder, FrameLimits, LayerRange, Message, ModelId,
    WireDType,
};
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 16;

fn host(h: &[u8; HEADER]) -> HostInfo {
    let n_layers = 1 + u32::from(h[0] % 16);
    let start = u32::from(h[1]) % n_layers;
    let end = start + 1 + u32::from(h[2]) % (n_layers - start);
    HostInfo {
        node_name: "fuzz".into(),
        model_id: MODEL,
        layers: LayerRange::new(start, end).expect("start < end"),
        n_layers,
        hidden_dim: 1 + u32::from(h[3] % 16),
        // The high half of byte 3: rows per step from 1 to 961 (the default is 512).
        max_step_rows: 1 + u32::from(h[3] >> 4) * 64,
        vocab_size: 1 + u32::from(u16::from_le_bytes([h[4], h[5]])),
        context_length: 1 + u32::from(u16::from_le_bytes([h[6], h[7]])),
    }
}

/// What the harness remembers between messages.
#[derive(Default)]
struct Shadow {
    said_hello: bool,
    was_open: bool,
    was_closed: bool,
    /// (next_step, position) of the open session, to check they only grow.
    progress: Option<(u64, u32)>,
    /// The last step the session recorded: steps must increase strictly.
    last_step: Option<u64>,
}

fn snapshot(m: &StreamMachine) -> String {
    format!("{m:?}")
}

fn check_invariants(m: &StreamMachine, sh: &mut Shadow, context_length: u32) {
    if sh.was_closed {
        assert!(m.is_closed(), "a closed stream reopened");
    }
    if m.is_closed() {
        assert!(m.session().is_none());
        sh.was_closed = true;
    }
    if let Some(s) = m.session() {
        assert!(s.position <= s.max_length, "positions past max_length");
        assert!(
            s.max_length <= context_length,
            "max_length past the context"
        );
        if let Some((step, pos)) = sh.progress {
            assert!(s.next_step >= step, "step numbers went back");
            assert!(s.position >= pos, "positions went back");
        }
        sh.progress = Some((s.next_step, s.position));
        sh.was_open = true;
    }
}

fn drive(m: &mut StreamMachine, msg: Message, decision: u8, sh: &mut Shadow) {
    let say_no = decision & 1 != 0;
    let before = snapshot(m);
    let host = m.host().clone();
    match msg {
        Message::Hello(h) => match m.on_hello(&h) {
            Ok(ack) => {
                assert!(!sh.said_hello, "a second Hello accepted");
                assert_eq!(h.model_id, host.model_id);
                assert_eq!(ack.layers, Some(host.layers));
                sh.said_hello = true;
            }
            Err(_) => assert_eq!(snapshot(m), before, "a refused Hello changed the state"),
        },
        Message::OpenSession(o) => match m.check_open(&o, !say_no) {
            Ok(role) => {
                assert!(!say_no, "opened without a free slot");
                assert!(sh.said_hello && !sh.was_open && !sh.was_closed);
                assert_eq!(o.model_id, host.model_id);
                assert!(host.layers.covers(&o.layers));
                assert!(o.max_length <= host.context_length);
                let last = o.layers.end == host.n_layers;
                match role {
                    Role::Sample { .. } => assert!(last && o.sampling.is_some()),
                    Role::ReturnLast => assert!(last && o.ends == EndsAt::Entry),
                    Role::Forward => assert!(!last && !o.next_hops.is_empty()),
                    Role::ReturnHidden => assert!(!last && o.next_hops.is_empty()),
                }
                assert_eq!(snapshot(m), before);
                // The server records the session only once the next hop accepted it too.
                if decision == 0 {
                    m.opened(&o, role);
                    let s = m.session().expect("open after opened()");
                    assert_eq!((s.next_step, s.position), (0, 0));
                    assert_eq!(s.session_id, o.session_id);
                    sh.progress = None;
                    sh.last_step = None;
                }
            }
            Err(_) => assert_eq!(snapshot(m), before, "a refused open changed the state"),
        },
        Message::Forward(f) => match m.check_forward(&f) {
            Ok(rows) => {
                assert!(!sh.was_closed, "a step accepted after close");
                let s = m
                    .session()
                    .expect("a step accepted without a session")
                    .clone();
                assert_eq!(s.session_id, f.session_id);
                assert!(rows >= 1 && rows == f.rows());
                assert!(f.step >= s.next_step, "a step replayed");
                assert_eq!(f.start_pos, s.position, "a step off the cache");
                assert!(u64::from(s.position) + u64::from(rows) <= u64::from(s.max_length));
                assert!(rows <= m.host().max_step_rows, "a step over the row limit");
                match &f.input {
                    ForwardInput::Tokens(t) => {
                        assert!(s.embeds, "token ids accepted by a hop that does not embed");
                        assert!(t.iter().all(|&id| id < host.vocab_size));
                    }
                    ForwardInput::Hidden(h) => {
                        assert!(!s.embeds, "hidden states accepted by an embedding hop");
                        assert_eq!(h.shape(), [rows, m.host().hidden_dim]);
                    }
                }
                assert_eq!(snapshot(m), before);
                if let Some(last) = sh.last_step {
                    assert!(f.step > last, "step {} accepted after step {last}", f.step);
                }
                if !say_no {
                    sh.last_step = Some(f.step);
                    m.forwarded(f.step, rows);
                    let after = m.session().expect("still open");
                    assert_eq!(after.position, s.position + rows);
                    assert_eq!(after.next_step, f.step.saturating_add(1));
                }
            }
            Err(_) => assert_eq!(snapshot(m), before, "a refused step changed the state"),
        },
        Message::Close(c) => match m.check_close(c.session_id) {
            Ok(()) => {
                assert_eq!(m.session().map(|s| s.session_id), Some(c.session_id));
                m.closed();
                assert!(m.is_closed());
            }
            Err(_) => assert_eq!(snapshot(m), before, "a refused close changed the state"),
        },
        // Not requests: the server answers UnexpectedMessage (or ignores an Error); the
        // machine is not asked.
        _ => {}
    }
    if decision == 3 && m.session().is_some() {
        m.closed();
    }
}

fn header(n_layers: u8, start: u8, end_extra: u8, decisions: u64) -> Vec<u8> {
    let mut h = vec![n_layers - 1, start, end_extra, 3];
    h.extend_from_slice(&31_999u16.to_le_bytes());
    h.extend_from_slice(&63u16.to_le_bytes());
    h.extend_from_slice(&decisions.to_le_bytes());
    h
}

fn seed(header: Vec<u8>, msgs: Vec<Message>) -> Vec<u8> {
    let mut out = header;
    for m in msgs {
        out.extend_from_slice(&encode_frame(&m).expect("seed messages encode"));
    }
    out
}

/// Whole sessions on a 4-layer model (hidden width 4, vocabulary 32000, context 64): the
/// whole model, the first half forwarding, the second half sampling, the last layer for an
/// entry running the ends; then refusals, a slot limit and an expiry.
fn seeds() -> Vec<(String, Vec<u8>)> {
    use messages::{close, hello, hidden, open, tokens};
    let hello = Message::Hello(hello());
    let close = Message::Close(close());
    let mut entry = open((3, 4), 4, 64, false);
    entry.ends = EndsAt::Entry;
    entry.sampling = None;
    let mut other_model = messages::hello();
    other_model.model_id = ModelId::from_bytes([8; 32]);
    vec![
        (
            "whole".into(),
            seed(
                header(4, 0, 3, 0),
                vec![
                    hello.clone(),
                    Message::OpenSession(open((0, 4), 4, 64, false)),
                    Message::Forward(tokens(0, 0, &[1, 2, 3])),
                    Message::Forward(tokens(1, 3, &[4])),
                    Message::Forward(tokens(2, 4, &[5])),
                    close.clone(),
                    Message::Forward(tokens(3, 5, &[6])),
                ],
            ),
        ),
        (
            "first-half".into(),
            seed(
                header(4, 0, 1, 0),
                vec![
                    hello.clone(),
                    Message::OpenSession(open((0, 2), 4, 64, true)),
                    Message::Forward(tokens(0, 0, &[1, 2])),
                    Message::Forward(tokens(1, 2, &[31_999])),
                    Message::Forward(tokens(1, 2, &[3])),
                    close.clone(),
                ],
            ),
        ),
        (
            "second-half".into(),
            seed(
                header(4, 2, 1, 0),
                vec![
                    hello.clone(),
                    Message::OpenSession(open((2, 4), 4, 64, false)),
                    Message::Forward(hidden(0, 0, 3, 4, WireDType::F16)),
                    Message::Forward(hidden(1, 3, 1, 4, WireDType::BF16)),
                    Message::Forward(hidden(2, 4, 1, 5, WireDType::F16)),
                    close.clone(),
                ],
            ),
        ),
        (
            "entry-ends".into(),
            seed(
                header(4, 3, 0, 0),
                vec![
                    hello.clone(),
                    Message::OpenSession(entry),
                    Message::Forward(hidden(0, 0, 2, 4, WireDType::F32)),
                    Message::Forward(hidden(1, 2, 1, 4, WireDType::F32)),
                    close.clone(),
                ],
            ),
        ),
        (
            "refusals".into(),
            seed(
                header(4, 0, 3, 0b01_11_00_01_00),
                vec![
                    Message::Forward(tokens(0, 0, &[1])),
                    Message::Hello(other_model),
                    hello.clone(),
                    hello,
                    Message::OpenSession(open((0, 4), 4, 64, false)),
                    Message::OpenSession(open((0, 4), 4, 64, false)),
                    Message::Forward(tokens(0, 0, &[1, 2])),
                    Message::Forward(tokens(1, 2, &[3])),
                    close,
                ],
            ),
        ),
    ]
}

fuzz_target!(
    init: write_seeds_if_asked("stream_machine", seeds),
    |data: &[u8]| {
        let Some((h, frames)) = data.split_first_chunk::<HEADER>() else {
            return;
        };
        let host = host(h);
        let context_length = host.context_length;
        let decisions = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        let mut m = StreamMachine::new(host);
        let mut sh = Shadow::default();
        let mut dec = FrameDecoder::new(FrameLimits::default());
        dec.push(frames);
        let mut i = 0u32;
        loop {
            match dec.next_frame() {
                Ok(Some(msg)) => {
                    let decision = (decisions >> (2 * (i % 32))) as u8 & 3;
                    drive(&mut m, msg, decision, &mut sh);
                    check_invariants(&m, &mut sh, context_length);
                    i += 1;
                }
                Ok(None) => break,
                // The server answers a frame that does not decode and goes on, unless the
                // frame boundary was lost.
                Err(e) if e.is_fatal() => break,
                Err(_) => {}
            }
        }
    }
);
