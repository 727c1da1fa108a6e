//! Catching hops that lie, by their peer id: in-process chains of real session servers
//! over stories260K with f32 (and f16) activations, some of them adversaries (`--adversary`'s
//! behaviours, armed in their fault plans).
//!
//! - A last hop that draws an out-of-range token signs it in its step record: it is
//!   banned on its first bad step and the generation goes on without it.
//! - A hop that corrupts its activations on half its steps signs records consistent with
//!   what it sent, so only re-execution catches it: with every step spot-checked, it is
//!   banned within ten checked steps, and the text is the reference text.
//! - With verification on and every hop honest, nobody is banned and the text is the
//!   reference text.
//! - The same two with f16 activations (the default): chains cut at the same layers
//!   agree bit for bit (the measured tolerance is zero), so a corrupting hop is caught
//!   as with f32 and honest hops never are.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use candle_core::Device;
use lamina_node::dataplane::{client_endpoint, server_endpoint, Dialer};
use lamina_node::pipeline::verify::COUNTS;
use lamina_node::pipeline::{
    ChainClient, ChainHop, FailoverPolicy, GenerateOptions, Observer, VerifyPolicy,
};
use lamina_node::routes::{RouteError, RouteSource};
use lamina_node::session::faults::{Adversary, FaultPlan};
use lamina_node::session::{Reporter, ServerOptions, SessionServer};
use lamina_protocol::{FrameLimits, LayerRange, ModelId, WireDType};
use lamina_sharding::executor::Shard;
use lamina_sharding::generate::GenerateRequest;
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;
use libp2p::identity::Keypair;
use libp2p::PeerId;

use crate::common::pipeline::{model_path, reference_prompts, STORIES};

/// stories260K has 5 layers.
const RANGES: [(u32, u32); 3] = [(0, 2), (2, 4), (4, 5)];

/// One in-process server, honest or not.
struct Server {
    hop: ChainHop,
    endpoint: quinn::Endpoint,
}

fn serve(model: &ModelFile, id: ModelId, layers: (u32, u32), adv: Option<Adversary>) -> Server {
    let layers = LayerRange::new(layers.0, layers.1).expect("range");
    let shard = Arc::new(Shard::load(model, layers, &Device::Cpu).expect("shard"));
    let key = Keypair::generate_ed25519();
    let endpoint = server_endpoint("127.0.0.1:0".parse().expect("addr"), &key).expect("endpoint");
    let addr = endpoint.local_addr().expect("addr");
    let opts = ServerOptions {
        node_name: format!("{layers}{}", if adv.is_some() { "-adversary" } else { "" }),
        max_sessions: 16,
        idle_timeout: Duration::from_secs(30),
        limits: FrameLimits::default(),
        faults: adv.map(|a| Arc::new(FaultPlan::adversary(a, 7))),
        gate: Default::default(),
        ..ServerOptions::default()
    };
    let dialer = Dialer::new(endpoint.clone(), opts.limits, key.clone());
    let server =
        SessionServer::new(shard, id, dialer, Reporter::new(key.clone()), opts).expect("server");
    tokio::spawn(server.serve(endpoint.clone()));
    Server {
        hop: ChainHop {
            layers,
            addr: addr.to_string(),
            peer: key.public().to_peer_id(),
        },
        endpoint,
    }
}

/// Routes over the servers: per range the first one (in start order) that is neither
/// excluded nor banned. Bans last for the source's life.
struct Routes {
    hops: Vec<ChainHop>,
    banned: Mutex<Vec<PeerId>>,
}

impl Routes {
    fn new(servers: &[Server]) -> Self {
        Self {
            hops: servers.iter().map(|s| s.hop.clone()).collect(),
            banned: Mutex::default(),
        }
    }

    fn banned(&self) -> Vec<PeerId> {
        self.banned.lock().expect("lock").clone()
    }
}

impl RouteSource for Routes {
    fn route(&self, exclude: &HashSet<PeerId>) -> Result<Vec<ChainHop>, RouteError> {
        let banned = self.banned();
        RANGES
            .iter()
            .map(|&(a, b)| {
                self.hops
                    .iter()
                    .find(|h| {
                        (h.layers.start, h.layers.end) == (a, b)
                            && !exclude.contains(&h.peer)
                            && !banned.contains(&h.peer)
                    })
                    .cloned()
                    .ok_or_else(|| RouteError::Uncovered {
                        layers: format!("{a}..{b}"),
                    })
            })
            .collect()
    }

    fn report_failure(&self, peer: PeerId) {
        self.banned.lock().expect("lock").push(peer);
    }
}

/// Notes, after each step, whether `watch` was banned by then.
struct Watch<'a> {
    routes: &'a Routes,
    watch: Option<PeerId>,
    banned_at: Option<usize>,
}

impl Observer for Watch<'_> {
    async fn step(&mut self, index: usize, _took: Duration) {
        if self.banned_at.is_none()
            && self
                .watch
                .is_some_and(|p| self.routes.banned().contains(&p))
        {
            self.banned_at = Some(index);
        }
    }

    async fn text(&mut self, _piece: &str) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

struct Case {
    model: ModelFile,
    id: ModelId,
    prompt: Vec<u32>,
    want: Vec<u32>,
}

fn case() -> Option<Case> {
    let path = model_path(STORIES)?;
    let model = ModelFile::open(&path).expect("open the model");
    let id = lamina_node::model_id_of(&model).expect("model id");
    let (_, prompt, want) = reference_prompts(STORIES)?
        .into_iter()
        .next()
        .expect("a reference prompt");
    Some(Case {
        model,
        id,
        prompt,
        want,
    })
}

/// Generates the reference prompt's continuation greedily through `routes`; returns the
/// token ids and the step after which `watch` was banned.
async fn generate(
    c: &Case,
    routes: &Routes,
    rate: f64,
    watch: Option<PeerId>,
) -> (Vec<u32>, Option<usize>) {
    generate_as(c, routes, rate, watch, WireDType::F32).await
}

/// As [`generate`], with `dtype` activations.
async fn generate_as(
    c: &Case,
    routes: &Routes,
    rate: f64,
    watch: Option<PeerId>,
    dtype: WireDType,
) -> (Vec<u32>, Option<usize>) {
    let client = ChainClient {
        dialer: Dialer::new(
            client_endpoint(None).expect("client endpoint"),
            FrameLimits::default(),
            Keypair::generate_ed25519(),
        ),
        model_id: c.id,
        tokenizer: Arc::new(c.model.tokenizer().expect("tokenizer")),
        context_length: c.model.config().expect("config").context_length,
        ends: None,
        verify: VerifyPolicy { rate, seed: 11 },
    };
    let req = GenerateRequest {
        prompt_ids: c.prompt.clone(),
        max_tokens: c.want.len(),
        sampling: SamplingParams::greedy(),
        stop: vec![],
    };
    let opts = GenerateOptions {
        activation_dtype: dtype,
        trace_id: None,
        policy: FailoverPolicy {
            max_attempts: 4,
            backoff: Duration::from_millis(10),
            notice_wait: Duration::ZERO,
        },
    };
    let mut w = Watch {
        routes,
        watch,
        banned_at: None,
    };
    let g = tokio::time::timeout(
        Duration::from_secs(120),
        client.generate(routes, &req, &opts, &mut w),
    )
    .await
    .expect("the generation ends within 2 minutes")
    .expect("the generation succeeds");
    (g.output.generated_token_ids, w.banned_at)
}

fn close(servers: &[Server]) {
    for s in servers {
        s.endpoint.close(0u32.into(), b"test over");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_hop_drawing_an_out_of_range_token_is_banned_on_its_first_bad_step() {
    let Some(c) = case() else { return };
    let huge = Adversary::HugeToken { fraction: 1.0 };
    let servers = vec![
        serve(&c.model, c.id, RANGES[0], None),
        serve(&c.model, c.id, RANGES[1], None),
        serve(&c.model, c.id, RANGES[2], Some(huge)),
        serve(&c.model, c.id, RANGES[2], None),
    ];
    let liar = servers[2].hop.peer;
    let routes = Routes::new(&servers);
    let (ids, banned_at) = generate(&c, &routes, 0.0, Some(liar)).await;
    assert_eq!(ids, c.want, "the text is the reference text");
    assert_eq!(routes.banned(), vec![liar], "exactly the liar is banned");
    assert_eq!(banned_at, Some(0), "banned at its first (bad) step");
    close(&servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_corrupting_its_activations_is_caught_by_spot_checks_and_banned() {
    let Some(c) = case() else { return };
    let corrupt = Adversary::Corrupt { fraction: 0.5 };
    // Three servers of the middle range: the liar, the shadow's, and a third opinion.
    let servers = vec![
        serve(&c.model, c.id, RANGES[0], None),
        serve(&c.model, c.id, RANGES[1], Some(corrupt)),
        serve(&c.model, c.id, RANGES[1], None),
        serve(&c.model, c.id, RANGES[1], None),
        serve(&c.model, c.id, RANGES[2], None),
    ];
    let liar = servers[1].hop.peer;
    let routes = Routes::new(&servers);
    let (ids, banned_at) = generate(&c, &routes, 1.0, Some(liar)).await;
    assert_eq!(ids, c.want, "the client's text is the honest one");
    assert_eq!(routes.banned(), vec![liar], "exactly the liar is banned");
    let at = banned_at.expect("the liar is banned");
    assert!(at < 10, "banned within 10 checked steps (after step {at})");
    close(&servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_verification_on_an_honest_mesh_bans_nobody() {
    let Some(c) = case() else { return };
    let servers = vec![
        serve(&c.model, c.id, RANGES[0], None),
        serve(&c.model, c.id, RANGES[1], None),
        serve(&c.model, c.id, RANGES[1], None),
        serve(&c.model, c.id, RANGES[2], None),
    ];
    let routes = Routes::new(&servers);
    let (ids, _) = generate(&c, &routes, 1.0, None).await;
    assert_eq!(ids, c.want);
    assert!(routes.banned().is_empty(), "{:?}", routes.banned());
    close(&servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_hop_that_stalls_every_step_is_routed_around() {
    let Some(c) = case() else { return };
    let servers = vec![
        serve(&c.model, c.id, RANGES[0], Some(Adversary::Stall)),
        serve(&c.model, c.id, RANGES[0], None),
        serve(&c.model, c.id, RANGES[1], None),
        serve(&c.model, c.id, RANGES[2], None),
    ];
    let staller = servers[0].hop.peer;
    let routes = Routes::new(&servers);
    let (ids, banned_at) = generate(&c, &routes, 0.0, Some(staller)).await;
    assert_eq!(ids, c.want);
    assert_eq!(routes.banned(), vec![staller]);
    assert_eq!(banned_at, Some(0));
    close(&servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_f16_activations_a_corrupting_hop_is_caught_and_honest_ones_are_not() {
    let Some(c) = case() else { return };
    let corrupt = Adversary::Corrupt { fraction: 0.5 };
    let servers = vec![
        serve(&c.model, c.id, RANGES[0], None),
        serve(&c.model, c.id, RANGES[1], Some(corrupt)),
        serve(&c.model, c.id, RANGES[1], None),
        serve(&c.model, c.id, RANGES[1], None),
        serve(&c.model, c.id, RANGES[2], None),
        serve(&c.model, c.id, RANGES[2], None),
    ];
    let liar = servers[1].hop.peer;
    let routes = Routes::new(&servers);
    let (ids, banned_at) = generate_as(&c, &routes, 1.0, Some(liar), WireDType::F16).await;
    assert_eq!(ids, c.want, "the client's text is the honest one");
    assert_eq!(routes.banned(), vec![liar], "exactly the liar is banned");
    let at = banned_at.expect("the liar is banned");
    assert!(at < 10, "banned within 10 checked steps (after step {at})");
    // Every step checked again on honest hops only (the last range has two servers, so
    // the second chains differ in every hop but the first): nobody else is banned.
    let agreed = || COUNTS.agreed.load(Ordering::Relaxed);
    let before = agreed();
    let (ids, _) = generate_as(&c, &routes, 1.0, None, WireDType::F16).await;
    assert_eq!(ids, c.want);
    assert_eq!(routes.banned(), vec![liar], "no honest hop is banned");
    // The checks compared (other tests only add to the process-wide count).
    let checked = agreed() - before;
    assert!(
        checked as usize >= c.want.len() - 1,
        "{checked} f16 checks agreed for {} steps",
        c.want.len()
    );
    close(&servers);
}
