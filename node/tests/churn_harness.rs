//! A deterministic churn harness: in-process session servers on loopback quinn endpoints,
//! every layer range of stories260K served by two of them, a route source that knows them
//! and honours bans, and faults (a dropped connection, a stall, garbage, an error reply)
//! armed on one hop at one step, both chosen by a seeded generator. Every scenario must
//! give exactly the tokens of an undisturbed run, with no error; a range that loses both
//! its servers must end the generation with a typed error naming the layers, not hang.
//!
//! Why in-process: the same server, client and failover code as the daemon, without
//! process start-up or a libp2p mesh, so dozens of scenarios run in seconds, and a failing
//! seed can be rerun alone (`CHURN_SEED=<seed>`).

mod pipeline_common;

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Device;
use lamina_node::api::{RouteError, RouteSource};
use lamina_node::dataplane::{client_endpoint, server_endpoint, Dialer, Identity};
use lamina_node::failover::FailoverPolicy;
use lamina_node::pipeline::{ChainClient, ChainHop, PipelineError};
use lamina_node::session::faults::{Fault, FaultPlan};
use lamina_node::session::{ServerOptions, SessionServer};
use lamina_protocol::{CertFingerprint, FrameLimits, LayerRange, WireDType};
use lamina_sharding::executor::Shard;
use lamina_sharding::generate::{GenerateRequest, GenerationOutput};
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;
use pipeline_common::{model_path, STORIES};

/// stories260K has 5 layers: three ranges, two servers each.
const RANGES: [(u32, u32); 3] = [(0, 2), (2, 4), (4, 5)];
const SCENARIOS: u64 = 32;
const PROMPTS: [&str; 4] = [
    "Once upon a time",
    "The little dog",
    "Lily wanted to",
    "One day, a boy named Tom",
];

/// The meshes of these tests would compete for two cores and make deadlines noisy.
static ONE_MESH_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_MESH_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// splitmix64: seedable, tiny, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Node {
    hop: ChainHop,
    faults: Arc<FaultPlan>,
    endpoint: quinn::Endpoint,
    server: Arc<SessionServer>,
}

struct Mesh {
    nodes: Vec<Node>,
    client: ChainClient,
    rt: tokio::runtime::Runtime,
}

impl Mesh {
    /// Two servers per range of [`RANGES`], each on its own endpoint.
    fn start(path: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let model = ModelFile::open(path).expect("open the model");
        let model_id = lamina_node::cmd::node::model_id_of(&model).expect("model id");
        let cfg = model.config().expect("config");
        let tokenizer = Arc::new(model.tokenizer().expect("tokenizer"));
        let nodes = rt.block_on(async {
            let mut nodes = Vec::new();
            for (i, &(start, end)) in RANGES.iter().flat_map(|r| [r, r]).enumerate() {
                let range = lamina_sharding::layers::LayerRange::new(start as usize, end as usize)
                    .expect("range");
                let shard = Arc::new(Shard::load(&model, range, &Device::Cpu).expect("shard"));
                let identity = Identity::generate().expect("identity");
                let endpoint = server_endpoint("127.0.0.1:0".parse().expect("addr"), &identity)
                    .expect("endpoint");
                let addr = endpoint.local_addr().expect("local addr");
                let faults = Arc::new(FaultPlan::new());
                let opts = ServerOptions {
                    node_name: format!("node{i}"),
                    max_sessions: 16,
                    idle_timeout: Duration::from_secs(30),
                    limits: FrameLimits::default(),
                    faults: Some(faults.clone()),
                };
                let dialer = Dialer::new(endpoint.clone(), opts.limits);
                let server = SessionServer::new(shard, model_id, dialer, opts).expect("server");
                tokio::spawn(server.clone().serve(endpoint.clone()));
                nodes.push(Node {
                    hop: ChainHop {
                        layers: LayerRange::new(start, end).expect("range"),
                        addr: addr.to_string(),
                        fingerprint: identity.fingerprint(),
                    },
                    faults,
                    endpoint,
                    server,
                });
            }
            nodes
        });
        let dialer = rt.block_on(async {
            Dialer::new(
                client_endpoint(None).expect("client endpoint"),
                FrameLimits::default(),
            )
        });
        Self {
            nodes,
            client: ChainClient {
                dialer,
                model_id,
                tokenizer,
                vocab_size: cfg.vocab_size,
                context_length: cfg.context_length,
            },
            rt,
        }
    }

    fn node(&self, fp: CertFingerprint) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.hop.fingerprint == fp)
            .expect("a node of the mesh")
    }

    /// Waits (bounded) until no server holds a session: failover leaks none.
    fn wait_idle(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let busy: Vec<(String, usize)> = self
                .nodes
                .iter()
                .filter(|n| n.server.active_sessions() > 0)
                .map(|n| (n.hop.addr.clone(), n.server.active_sessions()))
                .collect();
            if busy.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: sessions still held after 15 s: {busy:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.endpoint.close(0u32.into(), b"test over");
        }
    }
}

/// Routes over the harness's nodes: per range the preferred server unless it is excluded
/// or banned, else the other one. Bans last for the route source's life (one scenario).
struct Routes {
    nodes: Vec<ChainHop>,
    /// Per range, whether its second server is preferred.
    prefer_second: Vec<bool>,
    banned: Mutex<HashSet<CertFingerprint>>,
    reported: Mutex<Vec<CertFingerprint>>,
}

impl Routes {
    fn new(mesh: &Mesh, prefer_second: Vec<bool>) -> Self {
        Self {
            nodes: mesh.nodes.iter().map(|n| n.hop.clone()).collect(),
            prefer_second,
            banned: Mutex::default(),
            reported: Mutex::default(),
        }
    }

    fn reported(&self) -> Vec<CertFingerprint> {
        self.reported.lock().expect("lock").clone()
    }
}

impl RouteSource for Routes {
    fn route(&self) -> Result<Vec<ChainHop>, RouteError> {
        self.route_excluding(&HashSet::new())
    }

    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    fn route_excluding(
        &self,
        exclude: &HashSet<CertFingerprint>,
    ) -> Result<Vec<ChainHop>, RouteError> {
        let banned = self.banned.lock().expect("lock").clone();
        let mut chain = Vec::new();
        let mut uncovered = Vec::new();
        for (i, &(start, end)) in RANGES.iter().enumerate() {
            let mut servers: Vec<&ChainHop> = self
                .nodes
                .iter()
                .filter(|h| h.layers.start == start && h.layers.end == end)
                .collect();
            if self.prefer_second.get(i).copied().unwrap_or(false) {
                servers.reverse();
            }
            match servers
                .into_iter()
                .find(|h| !exclude.contains(&h.fingerprint) && !banned.contains(&h.fingerprint))
            {
                Some(h) => chain.push(h.clone()),
                None => uncovered.push(format!("{start}..{end}")),
            }
        }
        if uncovered.is_empty() {
            Ok(chain)
        } else {
            Err(RouteError::Uncovered {
                layers: uncovered.join(", "),
            })
        }
    }

    fn report_failure(&self, cert: CertFingerprint) {
        self.banned.lock().expect("lock").insert(cert);
        self.reported.lock().expect("lock").push(cert);
    }
}

/// Fails over at once: the harness's route source has no pings to wait for.
fn policy() -> FailoverPolicy {
    FailoverPolicy {
        max_attempts: 4,
        backoff: Duration::from_millis(10),
        notice_wait: Duration::ZERO,
    }
}

/// One generation through the mesh, failing over like the HTTP API does; `on_step(i)`
/// runs after each step.
fn generate(
    mesh: &Mesh,
    routes: &Routes,
    req: &GenerateRequest,
    mut on_step: impl FnMut(usize),
) -> Result<(GenerationOutput, Vec<Duration>), PipelineError> {
    let chain = routes.route()?;
    let replan =
        |ex: &HashSet<CertFingerprint>| routes.route_excluding(ex).map_err(PipelineError::from);
    let report = |cert| routes.report_failure(cert);
    mesh.client.generate_resilient(
        mesh.rt.handle(),
        &chain,
        &replan,
        &report,
        policy(),
        req,
        WireDType::F16,
        |i, _| on_step(i),
        |_| ControlFlow::Continue(()),
    )
}

/// What one seed decides.
#[derive(Debug)]
struct Scenario {
    req: GenerateRequest,
    prefer_second: Vec<bool>,
    hop: usize,
    /// 0 drop, 1 stall, 2 garbage, 3 error.
    kind: u64,
    step_draw: u64,
}

impl Scenario {
    fn of(seed: u64, mesh: &Mesh) -> Self {
        let mut rng = Rng(seed);
        let prompt = PROMPTS[rng.below(PROMPTS.len() as u64) as usize];
        let prompt_ids = mesh
            .client
            .tokenizer
            .encode(prompt, true, false)
            .expect("encode");
        let sampling = match rng.below(3) {
            0 => SamplingParams::greedy(),
            // The last hop samples, with the seed.
            1 => SamplingParams {
                temperature: 0.8,
                seed: rng.next(),
                ..SamplingParams::default()
            },
            // A repetition penalty: the logits come back and the client samples.
            _ => SamplingParams {
                temperature: 0.9,
                repetition_penalty: 1.1,
                seed: rng.next(),
                ..SamplingParams::default()
            },
        };
        Self {
            req: GenerateRequest {
                prompt_ids,
                max_tokens: 12 + rng.below(12) as usize,
                sampling,
                stop: vec![],
            },
            prefer_second: (0..RANGES.len()).map(|_| rng.below(2) == 1).collect(),
            hop: rng.below(RANGES.len() as u64) as usize,
            kind: rng.below(4),
            step_draw: rng.next(),
        }
    }

    /// The fault, for a generation of `steps` steps. A stall waits out a deadline, and
    /// before a one-row step was measured those are allowances of seconds, so stalls
    /// come at step 2 or later; the other faults at any step, the prefill included.
    fn fault(&self, steps: u64) -> Fault {
        let any = self.step_draw % steps.max(1);
        match self.kind {
            0 => Fault::DropConnectionAtStep(any),
            1 if steps > 2 => Fault::StallAtStep(2 + self.step_draw % (steps - 2)),
            1 | 2 => Fault::GarbageAtStep(any),
            _ => Fault::ErrorAtStep(any),
        }
    }
}

fn first_seed() -> u64 {
    std::env::var("CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xC0FFEE)
}

fn scenarios() -> u64 {
    if std::env::var("CHURN_SEED").is_ok() {
        1
    } else {
        SCENARIOS
    }
}

#[test]
fn seeded_faults_on_any_hop_at_any_step_change_no_token() {
    let _serial = serial();
    let Some(path) = model_path(STORIES) else {
        return;
    };
    let mesh = Mesh::start(&path);
    let t0 = Instant::now();
    let mut kinds = [0usize; 4];
    for seed in first_seed()..first_seed() + scenarios() {
        let sc = Scenario::of(seed, &mesh);
        let quiet = Routes::new(&mesh, sc.prefer_second.clone());
        let (want, recoveries) = generate(&mesh, &quiet, &sc.req, |_| {})
            .unwrap_or_else(|e| panic!("seed {seed}: the undisturbed run failed: {e}"));
        assert!(recoveries.is_empty(), "seed {seed}: nothing failed yet");
        let steps = want.generated_token_ids.len() as u64;

        let routes = Routes::new(&mesh, sc.prefer_second.clone());
        let chain = routes.route().expect("a route");
        let victim = mesh.node(chain[sc.hop].fingerprint);
        let fault = sc.fault(steps);
        kinds[match fault {
            Fault::DropConnectionAtStep(_) => 0,
            Fault::StallAtStep(_) => 1,
            Fault::GarbageAtStep(_) => 2,
            Fault::ErrorAtStep(_) => 3,
        }] += 1;
        victim.faults.arm(fault);
        let t = Instant::now();
        let got = generate(&mesh, &routes, &sc.req, |_| {});
        let (got, recoveries) = got.unwrap_or_else(|e| {
            panic!(
                "seed {seed}: {fault:?} on hop {} ({}) failed the generation: {e}",
                sc.hop, victim.hop.layers
            )
        });
        eprintln!(
            "seed {seed}: {fault:?} on hop {} of {steps} steps: recovered in {:?} ({:?} in all)",
            sc.hop,
            recoveries,
            t.elapsed()
        );
        assert!(
            victim.faults.pending().is_empty(),
            "seed {seed}: {fault:?} never fired"
        );
        assert_eq!(
            got.generated_token_ids, want.generated_token_ids,
            "seed {seed}: {fault:?} on hop {} changed the tokens",
            sc.hop
        );
        assert_eq!(got.text, want.text, "seed {seed}");
        assert_eq!(got.finish_reason, want.finish_reason, "seed {seed}");
        assert_eq!(recoveries.len(), 1, "seed {seed}: one step failed over");
        // The faulty hop, and only it, is blamed (a stall by the hop above it, whose
        // deadline expires first; at the first hop by the entry's own deadline).
        assert_eq!(
            routes.reported(),
            vec![victim.hop.fingerprint],
            "seed {seed}: {fault:?} on hop {} was blamed on the wrong peer",
            sc.hop
        );
        mesh.wait_idle(&format!("seed {seed}"));
    }
    eprintln!(
        "{} scenarios (drop, stall, garbage, error: {kinds:?}) in {:?}",
        scenarios(),
        t0.elapsed()
    );
    if scenarios() == SCENARIOS {
        assert!(
            kinds.iter().all(|&k| k > 0),
            "the seeds cover every kind of fault: {kinds:?}"
        );
    }
}

#[test]
fn a_range_that_loses_both_servers_fails_with_the_uncovered_layers() {
    let _serial = serial();
    let Some(path) = model_path(STORIES) else {
        return;
    };
    let mesh = Arc::new(Mesh::start(&path));
    let req = GenerateRequest {
        prompt_ids: mesh
            .client
            .tokenizer
            .encode(PROMPTS[0], true, false)
            .expect("encode"),
        max_tokens: 20,
        sampling: SamplingParams::greedy(),
        stop: vec![],
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let m = mesh.clone();
    // On a thread, so that a hang fails the test instead of stalling it.
    std::thread::spawn(move || {
        let routes = Routes::new(&m, vec![false; RANGES.len()]);
        let r = generate(&m, &routes, &req, |i| {
            if i == 3 {
                // Both servers of 2..4 die; the route source still lists them (their
                // announcements have not expired yet).
                for n in m.nodes.iter().filter(|n| n.hop.layers.start == 2) {
                    n.endpoint.close(0u32.into(), b"crashed");
                }
            }
        });
        let _ = tx.send((r.map(|(out, _)| out), routes.reported()));
    });
    let (r, reported) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the generation ended (with an error) instead of hanging");
    match r {
        Err(PipelineError::Uncovered { layers }) => assert_eq!(layers, "2..4"),
        other => panic!("expected the uncovered layers 2..4, got {other:?}"),
    }
    let dead: Vec<CertFingerprint> = mesh
        .nodes
        .iter()
        .filter(|n| n.hop.layers.start == 2)
        .map(|n| n.hop.fingerprint)
        .collect();
    assert_eq!(reported, dead, "both dead servers were blamed, in turn");
}

#[test]
fn a_draining_node_refuses_new_sessions_and_finishes_its_own() {
    let _serial = serial();
    let Some(path) = model_path(STORIES) else {
        return;
    };
    let mesh = Mesh::start(&path);
    let prompt_ids = |p: &str| {
        mesh.client
            .tokenizer
            .encode(p, true, false)
            .expect("encode")
    };
    let long = GenerateRequest {
        prompt_ids: prompt_ids(PROMPTS[0]),
        max_tokens: 30,
        sampling: SamplingParams {
            temperature: 0.8,
            seed: 11,
            ..SamplingParams::default()
        },
        stop: vec![],
    };
    let short = GenerateRequest {
        prompt_ids: prompt_ids(PROMPTS[1]),
        max_tokens: 12,
        sampling: SamplingParams::greedy(),
        stop: vec![],
    };
    let prefer = vec![false; RANGES.len()];
    let quiet = Routes::new(&mesh, prefer.clone());
    let (want_long, _) = generate(&mesh, &quiet, &long, |_| {}).expect("undisturbed long run");
    let (want_short, _) = generate(&mesh, &quiet, &short, |_| {}).expect("undisturbed short run");

    let routes = Routes::new(&mesh, prefer.clone());
    let chain = routes.route().expect("a route");
    let leaving = mesh.node(chain[1].fingerprint);
    let mut during: Option<(
        Result<GenerationOutput, PipelineError>,
        Vec<CertFingerprint>,
    )> = None;
    let mut refused = None;
    let (got_long, recoveries) = generate(&mesh, &routes, &long, |i| {
        if i != 3 {
            return;
        }
        // Mid-generation, the middle hop starts draining (SIGTERM in the daemon).
        assert_eq!(
            leaving.server.active_sessions(),
            1,
            "it serves the long run"
        );
        leaving.server.drain();
        // A session opened on it now is refused, with the typed code.
        refused = Some(mesh.rt.block_on(async {
            lamina_node::pipeline::PipelineSession::open(
                &mesh.client.dialer,
                &chain,
                mesh.client.model_id,
                &lamina_node::pipeline::PipelineOptions::default(),
            )
            .await
            .map(|_| ())
        }));
        // A new generation planned with it goes elsewhere and succeeds.
        let fresh = Routes::new(&mesh, prefer.clone());
        let r = generate(&mesh, &fresh, &short, |_| {}).map(|(out, _)| out);
        during = Some((r, fresh.reported()));
    })
    .expect("the long run finishes on the draining node");
    match refused {
        Some(Err(PipelineError::Remote(e))) => {
            assert_eq!(e.code, lamina_protocol::ErrorCode::ShuttingDown, "{e:?}");
            assert!(e.message.starts_with(&leaving.hop.addr), "{}", e.message);
        }
        other => panic!("expected a ShuttingDown refusal, got {other:?}"),
    }
    let (short_during, reported) = during.expect("the second generation ran");
    let short_during = short_during.expect("the second generation went elsewhere and succeeded");
    assert_eq!(
        short_during.generated_token_ids,
        want_short.generated_token_ids
    );
    assert!(
        reported.is_empty(),
        "a draining node is avoided, not blamed: {reported:?}"
    );
    assert_eq!(got_long.generated_token_ids, want_long.generated_token_ids);
    assert!(recoveries.is_empty(), "the long run never failed over");
    mesh.wait_idle("after the drain");
}
