//! Acceptance 3 and 4 of the data-plane issue, against in-process session servers on a
//! synthetic model: every kind of bad input gets a typed error reply or a closed stream, the
//! server keeps serving its other sessions, and a server that cannot prove the peer id the
//! dialer expects is refused at the handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::hops::{client_dialer, spawn_hop, tiny_model};
use lamina_node::dataplane::{Dialer, FramedRecv, FramedSend, RecvError};
use lamina_node::pipeline::{ChainHop, PipelineOptions, PipelineSession};
use lamina_node::session::{ServerOptions, SessionServer};
use lamina_protocol::{
    encode_frame, ErrorCode, Forward, ForwardInput, FrameLimits, Hello, LayerRange, Message,
    ModelId, OpenSession, SamplingSettings, SessionId, WireDType, WireTensor,
};
use lamina_sharding::source::ModelFile;

pub(crate) const LIMIT: u32 = 1 << 20;
pub(crate) const DIM: u32 = 64;

pub(crate) struct Hop {
    pub(crate) addr: SocketAddr,
    pub(crate) peer: libp2p::PeerId,
    pub(crate) server: Arc<SessionServer>,
    chain: ChainHop,
}

impl Hop {
    pub(crate) fn chain_hop(&self) -> ChainHop {
        self.chain.clone()
    }
}

/// Starts a session server for `start..end` of the tiny model (4 layers, dim 64).
pub(crate) fn start_hop(
    model: &ModelFile,
    id: ModelId,
    start: u32,
    end: u32,
    opts: ServerOptions,
) -> Hop {
    let t = spawn_hop(model, id, LayerRange::new(start, end).unwrap(), opts);
    Hop {
        addr: t.hop.addr.parse().expect("addr"),
        peer: t.hop.peer,
        server: t.server,
        chain: t.hop,
    }
}

pub(crate) fn opts() -> ServerOptions {
    ServerOptions {
        node_name: "test".into(),
        max_sessions: 8,
        idle_timeout: Duration::from_secs(30),
        limits: FrameLimits::with_max_frame_bytes(LIMIT),
        faults: None,
        gate: Default::default(),
        ..ServerOptions::default()
    }
}

pub(crate) fn client() -> Dialer {
    client_dialer(FrameLimits::with_max_frame_bytes(LIMIT))
}

pub(crate) async fn stream(d: &Dialer, hop: &Hop) -> (FramedSend, FramedRecv) {
    d.open_stream(&hop.addr.to_string(), hop.peer)
        .await
        .expect("open stream")
}

pub(crate) async fn recv(rx: &mut FramedRecv) -> Option<Message> {
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Ok(m)) => m,
        Ok(Err(RecvError::Stream(_))) => None,
        Ok(Err(e)) => panic!("client could not decode the server's frame: {e}"),
        Err(_) => panic!("no answer within 10 s"),
    }
}

pub(crate) async fn expect_error(rx: &mut FramedRecv, code: ErrorCode) {
    match recv(rx).await {
        Some(Message::Error(e)) => assert_eq!(e.code, code, "error {e:?}"),
        other => panic!("expected an {code} error, got {other:?}"),
    }
}

pub(crate) fn open_msg(id: ModelId, session: u128, layers: LayerRange) -> Message {
    Message::OpenSession(OpenSession {
        session_id: SessionId::from(session),
        model_id: id,
        layers,
        max_length: 16,
        activation_dtype: WireDType::F16,
        sampling: Some(SamplingSettings::greedy()),
        return_logits: false,
        next_hops: vec![],
        ends: lamina_protocol::EndsAt::Hops,
        trace_id: None,
    })
}

pub(crate) fn hidden_forward(session: u128, step: u64, pos: u32, width: u32) -> Message {
    let v = vec![0.25f32; width as usize];
    Message::Forward(Forward {
        session_id: SessionId::from(session),
        step,
        start_pos: pos,
        input: ForwardInput::Hidden(WireTensor::from_f32(&[1, width], &v, WireDType::F16).unwrap()),
    })
}

/// A full session through both hops still works.
pub(crate) async fn still_serving(d: &Dialer, chain: &[ChainHop], id: ModelId) {
    let o = PipelineOptions {
        max_length: 8,
        ..PipelineOptions::default()
    };
    let mut s = PipelineSession::open(d, chain, id, &o).await.expect("open");
    let r = s.step(&[1, 2, 3]).await.expect("prefill");
    s.step(&[r.token]).await.expect("decode");
    s.close().await.expect("close");
}

#[test]
fn bad_input_gets_typed_errors_and_the_node_keeps_serving() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let (model, id) = tiny_model();
            let a = start_hop(&model, id, 0, 2, opts());
            let b = start_hop(&model, id, 2, 4, opts());
            let chain = vec![a.chain_hop(), b.chain_hop()];
            let d = client();
            still_serving(&d, &chain, id).await;

            // A session that stays open through all of it.
            let o = PipelineOptions {
                max_length: 64,
                ..PipelineOptions::default()
            };
            let mut long = PipelineSession::open(&d, &chain, id, &o)
                .await
                .expect("open");
            let mut tok = long.step(&[5, 6]).await.expect("prefill").token;

            // 1. A frame over the limit: error reply, then the stream is closed.
            let (mut tx, mut rx) = stream(&d, &a).await;
            tx.send_raw(&(LIMIT + 1).to_le_bytes()).await.unwrap();
            expect_error(&mut rx, ErrorCode::FrameTooLarge).await;
            assert!(
                recv(&mut rx).await.is_none(),
                "stream closed after a fatal frame"
            );

            // 2. A truncated frame (the stream ends inside it).
            let (mut tx, mut rx) = stream(&d, &a).await;
            tx.send_raw(&[100, 0, 0, 0, 3, 1, 2]).await.unwrap();
            tx.finish();
            expect_error(&mut rx, ErrorCode::BadFrame).await;
            assert!(recv(&mut rx).await.is_none());

            // 3. Garbage in a well-delimited frame: error, and the same stream goes on.
            let (mut tx, mut rx) = stream(&d, &a).await;
            tx.send_raw(&[10, 0, 0, 0, 3, 5, 0, 0, 0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])
                .await
                .unwrap();
            expect_error(&mut rx, ErrorCode::BadFrame).await;
            // 4. An unknown message tag, on the same stream.
            tx.send_raw(&[5, 0, 0, 0, 42, 0, 0, 0, 0]).await.unwrap();
            expect_error(&mut rx, ErrorCode::BadFrame).await;
            // 5. Wrong protocol version.
            let mut hello = Hello::new(id, "old");
            hello.protocol_version = 99;
            tx.send_raw(&encode_frame(&Message::Hello(hello)).unwrap())
                .await
                .unwrap();
            expect_error(&mut rx, ErrorCode::UnsupportedVersion).await;
            // 6. Wrong model id.
            let other = ModelId::from_bytes([9; 32]);
            tx.send(&Message::Hello(Hello::new(other, "x")))
                .await
                .unwrap();
            expect_error(&mut rx, ErrorCode::WrongModel).await;
            // 7. A forward for an unknown session.
            tx.send(&hidden_forward(77, 0, 0, DIM)).await.unwrap();
            expect_error(&mut rx, ErrorCode::UnknownSession).await;
            // The stream is still usable: a good Hello is answered.
            tx.send(&Message::Hello(Hello::new(id, "ok")))
                .await
                .unwrap();
            assert!(matches!(recv(&mut rx).await, Some(Message::HelloAck(_))));
            // Wrong model in OpenSession, and wrong layers.
            tx.send(&open_msg(other, 1, a.server.host().layers))
                .await
                .unwrap();
            expect_error(&mut rx, ErrorCode::WrongModel).await;
            tx.send(&open_msg(id, 1, LayerRange::new(1, 3).unwrap()))
                .await
                .unwrap();
            expect_error(&mut rx, ErrorCode::LayerMismatch).await;
            // A message that is not a request.
            tx.send(&Message::SessionOpened(lamina_protocol::SessionOpened {
                session_id: SessionId::from(1u128),
            }))
            .await
            .unwrap();
            expect_error(&mut rx, ErrorCode::UnexpectedMessage).await;
            drop((tx, rx));

            tok = long
                .step(&[tok])
                .await
                .expect("long session after bad frames")
                .token;

            // 8. A tensor whose shape does not match the layer, then a good one.
            let (mut tx, mut rx) = stream(&d, &b).await;
            tx.send(&Message::Hello(Hello::new(id, "t"))).await.unwrap();
            assert!(matches!(recv(&mut rx).await, Some(Message::HelloAck(_))));
            tx.send(&open_msg(id, 5, b.server.host().layers))
                .await
                .unwrap();
            assert!(matches!(
                recv(&mut rx).await,
                Some(Message::SessionOpened(_))
            ));
            tx.send(&hidden_forward(5, 0, 0, DIM + 1)).await.unwrap();
            expect_error(&mut rx, ErrorCode::BadTensor).await;
            // Token ids to a hop that takes hidden states.
            tx.send(&Message::Forward(Forward {
                session_id: SessionId::from(5u128),
                step: 0,
                start_pos: 0,
                input: ForwardInput::Tokens(vec![1]),
            }))
            .await
            .unwrap();
            expect_error(&mut rx, ErrorCode::BadTensor).await;
            // Positions that skip ahead.
            tx.send(&hidden_forward(5, 0, 3, DIM)).await.unwrap();
            expect_error(&mut rx, ErrorCode::StepOutOfOrder).await;
            tx.send(&hidden_forward(5, 0, 0, DIM)).await.unwrap();
            assert!(
                matches!(recv(&mut rx).await, Some(Message::StepResult(_))),
                "a good step after the bad ones"
            );
            tx.finish();
            drop((tx, rx));

            long.step(&[tok])
                .await
                .expect("long session after bad tensors");
            long.close().await.expect("close");
            still_serving(&d, &chain, id).await;
        })
        .await
        .expect("test finished in time");
    });
}

#[test]
fn session_limit_and_idle_timeout() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let (model, id) = tiny_model();
            let mut o = opts();
            o.max_sessions = 1;
            o.idle_timeout = Duration::from_millis(500);
            let hop = start_hop(&model, id, 0, 4, o);
            let d = client();
            let (mut tx1, mut rx1) = stream(&d, &hop).await;
            tx1.send(&Message::Hello(Hello::new(id, "1")))
                .await
                .unwrap();
            tx1.send(&open_msg(id, 1, hop.server.host().layers))
                .await
                .unwrap();
            assert!(matches!(recv(&mut rx1).await, Some(Message::HelloAck(_))));
            assert!(matches!(
                recv(&mut rx1).await,
                Some(Message::SessionOpened(_))
            ));
            assert_eq!(hop.server.active_sessions(), 1);

            let (mut tx2, mut rx2) = stream(&d, &hop).await;
            tx2.send(&Message::Hello(Hello::new(id, "2")))
                .await
                .unwrap();
            tx2.send(&open_msg(id, 2, hop.server.host().layers))
                .await
                .unwrap();
            assert!(matches!(recv(&mut rx2).await, Some(Message::HelloAck(_))));
            expect_error(&mut rx2, ErrorCode::SessionLimit).await;

            // The idle session expires with an unasked Closed and frees its slot.
            match recv(&mut rx1).await {
                Some(Message::Closed(c)) => assert_eq!(c.session_id, SessionId::from(1u128)),
                other => panic!("expected Closed, got {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(hop.server.active_sessions(), 0);
            // (The refused stream, idle too, was ended as well.)
            let (mut tx3, mut rx3) = stream(&d, &hop).await;
            tx3.send(&Message::Hello(Hello::new(id, "3")))
                .await
                .unwrap();
            tx3.send(&open_msg(id, 3, hop.server.host().layers))
                .await
                .unwrap();
            assert!(matches!(recv(&mut rx3).await, Some(Message::HelloAck(_))));
            assert!(matches!(
                recv(&mut rx3).await,
                Some(Message::SessionOpened(_))
            ));
            drop((tx2, rx2));
        })
        .await
        .expect("test finished in time");
    });
}

#[test]
fn a_server_that_is_not_the_expected_peer_is_refused() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let (model, id) = tiny_model();
            let hop = start_hop(&model, id, 0, 4, opts());
            let d = client();
            let wrong = libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id();
            assert_ne!(wrong, hop.peer);
            let r = d.open_stream(&hop.addr.to_string(), wrong).await;
            assert!(r.is_err(), "another peer id must fail the handshake");
            // Through the pipeline client too, and the right peer still works afterwards.
            let mut bad = hop.chain_hop();
            bad.peer = wrong;
            let o = PipelineOptions::default();
            assert!(PipelineSession::open(&d, &[bad], id, &o).await.is_err());
            still_serving(&d, &[hop.chain_hop()], id).await;
        })
        .await
        .expect("test finished in time");
    });
}

#[test]
fn identity_is_kept_in_the_data_dir() {
    let dir = std::env::temp_dir().join(format!("lamina-identity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let load = lamina_node::mesh::load_or_create_identity;
    let a = load(&dir).unwrap();
    let b = load(&dir).unwrap();
    assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
    // A corrupt key is a clear error, not a panic.
    std::fs::write(dir.join("p2p.key"), b"garbage").unwrap();
    let e = load(&dir).unwrap_err();
    assert!(e.to_string().contains("p2p.key"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
