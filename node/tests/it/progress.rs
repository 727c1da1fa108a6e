//! A busy chain is not a stalled chain: while a step waits (for compute behind other
//! sessions, or for a slow next hop) every hop sends `Progress` upstream, and the caller's
//! silence deadline restarts on each one; a hop that goes silent is still a timeout.
//!
//! The slow last hop is a fake written here (so the delays are the test's, not a
//! machine's): it answers the handshake, then takes 3 s over a step. The real session
//! server in front of it must keep the client informed, and the client, whose silence
//! deadline is 1.5 s, must get the token.

use std::time::Duration;

use lamina_node::dataplane::{FramedRecv, FramedSend, RecvError};
use lamina_node::failure::Failure;
use lamina_node::pipeline::{ChainHop, PipelineError, PipelineOptions, PipelineSession};
use lamina_node::session::ServerOptions;
use lamina_protocol::{
    digest_input, FrameLimits, HelloAck, LayerRange, Message, ModelId, Progress, SessionOpened,
    StepOutput, StepProduct, StepRecord, StepResult,
};
use lamina_sharding::source::ModelFile;
use libp2p::identity::Keypair;

use crate::common::hops::{client_dialer, spawn_fake_with_key, spawn_hop, tiny_model};

const LIMIT: u32 = 1 << 20;
/// The client's silence deadline: shorter than the slow hop's step, longer than the gap
/// between progress reports (1 s) with room for a loaded machine.
const SILENCE: Duration = Duration::from_millis(1500);
/// How long the slow hop takes over a step.
const SLOW_STEP: Duration = Duration::from_secs(3);

fn limits() -> FrameLimits {
    FrameLimits::with_max_frame_bytes(LIMIT)
}

/// How the fake last hop behaves once a step arrives.
#[derive(Clone, Copy)]
enum Slow {
    /// Reports progress every 250 ms, answers after [`SLOW_STEP`].
    Reporting,
    /// Says nothing until after [`SLOW_STEP`].
    Silent,
}

/// A fake hop for `layers` that answers every step with token 7, slowly (with its signed
/// step record, as every hop since protocol version 5).
fn start_fake(layers: LayerRange, how: Slow) -> ChainHop {
    let key = Keypair::generate_ed25519();
    let signer = key.clone();
    spawn_fake_with_key(layers, limits(), key, move |tx, rx| {
        serve_fake(tx, rx, how, signer.clone(), layers)
    })
    .0
}

async fn serve_fake(
    mut tx: FramedSend,
    mut rx: FramedRecv,
    how: Slow,
    key: Keypair,
    layers: LayerRange,
) {
    loop {
        let msg = match rx.recv().await {
            Ok(Some(m)) => m,
            Ok(None) | Err(RecvError::Stream(_)) => return,
            Err(e) => panic!("fake hop got a bad frame: {e}"),
        };
        let reply = match msg {
            Message::Hello(_) => Message::HelloAck(HelloAck::new("slow", None)),
            Message::OpenSession(o) => Message::SessionOpened(SessionOpened {
                session_id: o.session_id,
            }),
            Message::Forward(f) => {
                let end = tokio::time::Instant::now() + SLOW_STEP;
                while tokio::time::Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if let Slow::Reporting = how {
                        let p = Message::Progress(Progress {
                            session_id: f.session_id,
                            step: f.step,
                        });
                        if tx.send(&p).await.is_err() {
                            return;
                        }
                    }
                }
                let record = StepRecord {
                    signer: key.public().to_peer_id().to_bytes(),
                    session_id: f.session_id,
                    step: f.step,
                    layers,
                    input: digest_input(&f.input),
                    output: StepProduct::Token(7),
                }
                .sign(&key)
                .expect("sign");
                Message::StepResult(StepResult {
                    session_id: f.session_id,
                    step: f.step,
                    output: StepOutput::Token {
                        id: 7,
                        logits: None,
                    },
                    evidence: vec![record],
                })
            }
            Message::Close(c) => Message::Closed(lamina_protocol::Closed {
                session_id: c.session_id,
            }),
            _ => continue,
        };
        if tx.send(&reply).await.is_err() {
            return;
        }
    }
}

/// A real session server for `0..2` of the tiny model (4 layers).
fn start_real(model: &ModelFile, id: ModelId) -> ChainHop {
    let opts = ServerOptions {
        node_name: "real".into(),
        max_sessions: 4,
        idle_timeout: Duration::from_secs(30),
        limits: limits(),
        faults: None,
        gate: Default::default(),
        ..ServerOptions::default()
    };
    spawn_hop(model, id, LayerRange::new(0, 2).unwrap(), opts).hop
}

async fn one_step(chain: &[ChainHop], id: ModelId) -> Result<u32, PipelineError> {
    let dialer = client_dialer(limits());
    let opts = PipelineOptions {
        max_length: 8,
        ..PipelineOptions::default()
    };
    let mut s = PipelineSession::open(&dialer, chain, id, &opts).await?;
    s.set_timeout(SILENCE);
    Ok(s.step(&[1, 2, 3]).await?.token)
}

#[test]
fn a_slow_chain_that_reports_progress_is_waited_for_and_a_silent_one_times_out() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (model, id) = tiny_model();
        let tail = LayerRange::new(2, 4).unwrap();

        // The fake last hop itself reports progress: the client is told directly.
        let alone = start_fake(LayerRange::new(0, 4).unwrap(), Slow::Reporting);
        let t = tokio::time::Instant::now();
        let token = one_step(&[alone], id)
            .await
            .expect("a reporting hop is waited for");
        assert_eq!(token, 7);
        assert!(
            t.elapsed() >= SLOW_STEP,
            "the answer came after the slow step"
        );

        // A real server in front of a silent but slow next hop: the real server reports
        // progress while it waits (its own deadline on the next hop, 8 s, is not hit), so
        // the client, silent-deadline 1.5 s, still gets the token.
        let chain = [start_real(&model, id), start_fake(tail, Slow::Silent)];
        let token = one_step(&chain, id)
            .await
            .expect("the real hop reports while it waits");
        assert_eq!(token, 7);

        // Talking to the silent hop directly: nobody reports, so the client's silence
        // deadline fires, long before the step would have finished.
        let silent = start_fake(LayerRange::new(0, 4).unwrap(), Slow::Silent);
        let t = tokio::time::Instant::now();
        match one_step(&[silent], id).await {
            Err(PipelineError::Hop {
                failure: Failure::Deadline,
                detail,
            }) => assert!(detail.contains("no answer"), "{detail}"),
            other => panic!("a silent hop must time out, got {other:?}"),
        }
        assert!(
            t.elapsed() < SLOW_STEP,
            "timed out on silence, not at the end"
        );
    });
}
