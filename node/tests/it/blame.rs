//! Blame rests on typed facts, never on text a peer wrote: a hop that answers with an error
//! naming another peer (by its address and peer id, in the very words lamina used to parse)
//! gets itself blamed, not the peer it names; a report forged in another peer's name does
//! not verify and blames the hop that passed it on; a refusal (session limit, shutting
//! down) bans no one. Each time the generation finishes on honest hops with the tokens of
//! an undisturbed run.
//!
//! The liars are fake hops written here; the honest hops are real session servers, so the
//! relaying and verifying under test are the daemon's own.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Mutex;
use std::time::Duration;

use lamina_node::dataplane::{FramedRecv, FramedSend, RecvError};
use lamina_node::pipeline::{
    ChainClient, ChainHop, FailoverPolicy, GenerateOptions, Observer, PipelineError,
};
use lamina_node::routes::{RouteError, RouteSource};
use lamina_node::session::ServerOptions;
use lamina_protocol::{
    ErrorCode, ErrorMessage, FailureReport, Fault, FrameLimits, HelloAck, LayerRange, LinkFailure,
    Message, SessionOpened, WireDType,
};
use lamina_sharding::generate::{GenerateRequest, GenerationOutput};
use lamina_sharding::sampling::SamplingParams;
use libp2p::identity::Keypair;
use libp2p::PeerId;

use crate::common::hops::{client_dialer, spawn_fake, spawn_hop, tiny_model, TestHop};

/// The tiny model's 4 layers in three hops.
const RANGES: [(u32, u32); 3] = [(0, 2), (2, 3), (3, 4)];

/// Routes through the first candidate of each range that is neither excluded nor banned,
/// and remembers whom the entry blamed.
struct Routes {
    candidates: Vec<Vec<ChainHop>>,
    banned: Mutex<HashSet<PeerId>>,
    reported: Mutex<Vec<PeerId>>,
}

impl Routes {
    fn new(candidates: Vec<Vec<ChainHop>>) -> Self {
        Self {
            candidates,
            banned: Mutex::default(),
            reported: Mutex::default(),
        }
    }

    fn reported(&self) -> Vec<PeerId> {
        self.reported.lock().expect("lock").clone()
    }
}

impl RouteSource for Routes {
    fn route(&self, exclude: &HashSet<PeerId>) -> Result<Vec<ChainHop>, RouteError> {
        let banned = self.banned.lock().expect("lock").clone();
        self.candidates
            .iter()
            .map(|c| {
                c.iter()
                    .find(|h| !exclude.contains(&h.peer) && !banned.contains(&h.peer))
                    .cloned()
                    .ok_or_else(|| RouteError::Uncovered {
                        layers: c.first().map_or_else(String::new, |h| h.layers.to_string()),
                    })
            })
            .collect()
    }

    fn report_failure(&self, peer: PeerId) {
        self.banned.lock().expect("lock").insert(peer);
        self.reported.lock().expect("lock").push(peer);
    }
}

struct Quiet;

impl Observer for Quiet {
    async fn text(&mut self, _: &str) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// What a lying hop answers to the first step.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// An error with no report, whose text names `victim` as the failed next hop.
    TextOnly,
    /// An error with a report signed by the liar but naming `victim` as its reporter.
    ForgedReporter,
    /// An error with a report signed by the liar, about its own fault, whose text blames
    /// `victim`.
    SignedOwnFaultBlamingInText,
}

/// Answers the handshake and the open like a hop, then fails the first step as `lie` says,
/// naming `victim` (address and peer id) in the text.
async fn serve_liar(
    mut tx: FramedSend,
    mut rx: FramedRecv,
    lie: Lie,
    layers: LayerRange,
    key: Keypair,
    victim: ChainHop,
) {
    loop {
        let msg = match rx.recv().await {
            Ok(Some(m)) => m,
            Ok(None) | Err(RecvError::Stream(_)) => return,
            Err(e) => panic!("the liar got a bad frame: {e}"),
        };
        let reply = match msg {
            Message::Hello(_) => Message::HelloAck(HelloAck::new("liar", Some(layers))),
            Message::OpenSession(o) => Message::SessionOpened(SessionOpened {
                session_id: o.session_id,
            }),
            Message::Forward(f) => {
                // The exact words the entry used to parse blame out of.
                let text = format!(
                    "{0}: next hop {0} ({1}): peer {2} dropped the stream",
                    victim.addr, victim.layers, victim.peer
                );
                let e = ErrorMessage::new(ErrorCode::NextHopFailed, text);
                let signed = |reporter: Vec<u8>, fault: Fault| {
                    FailureReport {
                        reporter,
                        session_id: f.session_id,
                        layers: victim.layers,
                        code: ErrorCode::Internal,
                        fault,
                    }
                    .sign(&key)
                    .expect("sign")
                };
                let e = match lie {
                    Lie::TextOnly => e,
                    Lie::ForgedReporter => e.with_report(signed(
                        victim.peer.to_bytes(),
                        Fault::NextHop(LinkFailure::Stream),
                    )),
                    Lie::SignedOwnFaultBlamingInText => {
                        let mine = FailureReport {
                            reporter: key.public().to_peer_id().to_bytes(),
                            session_id: f.session_id,
                            layers,
                            code: ErrorCode::Internal,
                            fault: Fault::Own,
                        };
                        e.with_report(mine.sign(&key).expect("sign"))
                    }
                };
                Message::Error(e)
            }
            _ => continue,
        };
        if tx.send(&reply).await.is_err() {
            return;
        }
    }
}

fn request(ids: Vec<u32>) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: ids,
        max_tokens: 8,
        sampling: SamplingParams::greedy(),
        stop: vec![],
    }
}

async fn run(
    client: &ChainClient,
    routes: &Routes,
    req: &GenerateRequest,
) -> Result<GenerationOutput, PipelineError> {
    let opts = GenerateOptions {
        activation_dtype: WireDType::F32,
        trace_id: None,
        policy: FailoverPolicy {
            max_attempts: 4,
            backoff: Duration::from_millis(10),
            notice_wait: Duration::ZERO,
        },
    };
    Ok(client
        .generate(routes, req, &opts, &mut Quiet)
        .await?
        .output)
}

fn opts(max_sessions: usize) -> ServerOptions {
    ServerOptions {
        node_name: "honest".into(),
        max_sessions,
        idle_timeout: Duration::from_secs(30),
        limits: FrameLimits::default(),
        faults: None,
        gate: Default::default(),
        ..ServerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_that_names_another_peer_in_its_error_gets_itself_blamed() {
    let (model, id) = tiny_model();
    let tokenizer = std::sync::Arc::new(model.tokenizer().expect("tokenizer"));
    let client = ChainClient {
        dialer: client_dialer(FrameLimits::default()),
        model_id: id,
        tokenizer: tokenizer.clone(),
        context_length: model.config().expect("config").context_length,
        ends: None,
        verify: Default::default(),
    };
    let honest: Vec<Vec<TestHop>> = RANGES
        .iter()
        .map(|&(a, b)| {
            (0..2)
                .map(|_| spawn_hop(&model, id, LayerRange::new(a, b).unwrap(), opts(8)))
                .collect()
        })
        .collect();
    let hops = |r: usize| -> Vec<ChainHop> { honest[r].iter().map(|t| t.hop.clone()).collect() };
    let req = request(vec![1, 5, 9, 13]);
    let want = run(&client, &Routes::new(vec![hops(0), hops(1), hops(2)]), &req)
        .await
        .expect("the honest run");

    // The victim every liar names: the preferred honest server of the last range.
    let victim = honest[2][0].hop.clone();
    for (position, lie) in [
        (1, Lie::TextOnly),
        (1, Lie::ForgedReporter),
        (1, Lie::SignedOwnFaultBlamingInText),
        (0, Lie::TextOnly),
        (0, Lie::ForgedReporter),
    ] {
        let layers = {
            let (a, b) = RANGES[position];
            LayerRange::new(a, b).unwrap()
        };
        let v = victim.clone();
        let liar_key = Keypair::generate_ed25519();
        let k = liar_key.clone();
        let (mut liar, _) = spawn_fake(layers, FrameLimits::default(), move |tx, rx| {
            serve_liar(tx, rx, lie, layers, k.clone(), v.clone())
        });
        liar.peer = liar_key.public().to_peer_id();
        let mut candidates = vec![hops(0), hops(1), hops(2)];
        candidates[position].insert(0, liar.clone());
        let routes = Routes::new(candidates);
        let got = run(&client, &routes, &req)
            .await
            .unwrap_or_else(|e| panic!("{lie:?} at hop {position}: {e}"));
        assert_eq!(
            got.generated_token_ids, want.generated_token_ids,
            "{lie:?} at hop {position}: the honest chain's tokens"
        );
        assert_eq!(
            routes.reported(),
            vec![liar.peer],
            "{lie:?} at hop {position}: the liar, and only it, is blamed (not {})",
            victim.peer
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_ban_no_one() {
    let (model, id) = tiny_model();
    let client = ChainClient {
        dialer: client_dialer(FrameLimits::default()),
        model_id: id,
        tokenizer: std::sync::Arc::new(model.tokenizer().expect("tokenizer")),
        context_length: model.config().expect("config").context_length,
        ends: None,
        verify: Default::default(),
    };
    let spawn = |r: usize, max: usize| {
        let (a, b) = RANGES[r];
        spawn_hop(&model, id, LayerRange::new(a, b).unwrap(), opts(max))
    };
    // The preferred middle hop serves one session at a time and is kept busy; the
    // preferred last hop is shutting down. Both refuse; spares take the session.
    let first = spawn(0, 8);
    let full = spawn(1, 1);
    let spare_mid = spawn(1, 8);
    let draining = spawn(2, 8);
    let spare_last = spawn(2, 8);
    let routes = Routes::new(vec![
        vec![first.hop.clone()],
        vec![full.hop.clone(), spare_mid.hop.clone()],
        vec![draining.hop.clone(), spare_last.hop.clone()],
    ]);
    let req = request(vec![2, 4, 6]);
    let quiet = Routes::new(vec![
        vec![first.hop.clone()],
        vec![spare_mid.hop.clone()],
        vec![spare_last.hop.clone()],
    ]);
    let want = run(&client, &quiet, &req)
        .await
        .expect("the undisturbed run");
    // Hold the full hop's only slot with a session of its own.
    let holder = lamina_node::pipeline::PipelineSession::open(
        &client.dialer,
        &[full.hop.clone(), spare_last.hop.clone()][..1],
        id,
        &lamina_node::pipeline::PipelineOptions {
            sampling: Default::default(),
            ..Default::default()
        },
    )
    .await;
    // (A session ending at layer 3 of 4 returns hidden states; it only holds the slot.)
    let _holder = holder.expect("the holder session opens");
    assert_eq!(full.server.active_sessions(), 1);
    draining.server.drain();
    let got = run(&client, &routes, &req)
        .await
        .expect("the spares answer");
    assert_eq!(got.generated_token_ids, want.generated_token_ids);
    assert!(
        routes.reported().is_empty(),
        "refusals ban no one: {:?}",
        routes.reported()
    );
}
