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

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lamina_node::failure::Failure;
use lamina_node::pipeline::{
    ChainClient, ChainHop, FailoverPolicy, GenerateOptions, Observer, PipelineError,
};
use lamina_node::routes::{RouteError, RouteSource};
use lamina_node::session::faults::Fault;
use lamina_node::session::ServerOptions;
use lamina_protocol::{ErrorCode, FrameLimits, LayerRange, WireDType};
use lamina_sharding::generate::{GenerateRequest, GenerationOutput};
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;
use libp2p::PeerId;
use tokio::sync::oneshot;

use crate::common::hops::{client_dialer, spawn_hop, TestHop};
use crate::common::pipeline::{model_path, STORIES};

/// stories260K has 5 layers: three ranges, two servers each.
const RANGES: [(u32, u32); 3] = [(0, 2), (2, 4), (4, 5)];
const SCENARIOS: u64 = 32;
const PROMPTS: [&str; 4] = [
    "Once upon a time",
    "The little dog",
    "Lily wanted to",
    "One day, a boy named Tom",
];

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

struct Mesh {
    nodes: Vec<TestHop>,
    client: ChainClient,
}

impl Mesh {
    /// Two servers per range of [`RANGES`], each on its own endpoint.
    fn start(path: &Path) -> Self {
        let model = ModelFile::open(path).expect("open the model");
        let model_id = lamina_node::model_id_of(&model).expect("model id");
        let cfg = model.config().expect("config");
        let tokenizer = Arc::new(model.tokenizer().expect("tokenizer"));
        let nodes = RANGES
            .iter()
            .flat_map(|r| [r, r])
            .enumerate()
            .map(|(i, &(start, end))| {
                let opts = ServerOptions {
                    node_name: format!("node{i}"),
                    max_sessions: 16,
                    idle_timeout: Duration::from_secs(30),
                    limits: FrameLimits::default(),
                    faults: None,
                    gate: Default::default(),
                    ..ServerOptions::default()
                };
                let layers = LayerRange::new(start, end).expect("range");
                spawn_hop(&model, model_id, layers, opts)
            })
            .collect();
        Self {
            nodes,
            client: ChainClient {
                dialer: client_dialer(FrameLimits::default()),
                model_id,
                tokenizer,
                context_length: cfg.context_length,
                ends: None,
                verify: Default::default(),
            },
        }
    }

    fn node(&self, peer: PeerId) -> &TestHop {
        self.nodes
            .iter()
            .find(|n| n.hop.peer == peer)
            .expect("a node of the mesh")
    }

    /// Waits (bounded) until no server holds a session: failover leaks none.
    async fn wait_idle(&self, what: &str) {
        for n in &self.nodes {
            assert!(
                n.server.wait_idle(Duration::from_secs(15)).await,
                "{what}: {} still holds {} sessions after 15 s",
                n.hop.addr,
                n.server.active_sessions()
            );
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
    banned: Mutex<HashSet<PeerId>>,
    reported: Mutex<Vec<PeerId>>,
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

    fn reported(&self) -> Vec<PeerId> {
        self.reported.lock().expect("lock").clone()
    }
}

impl RouteSource for Routes {
    fn route(&self, exclude: &HashSet<PeerId>) -> Result<Vec<ChainHop>, RouteError> {
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
                .find(|h| !exclude.contains(&h.peer) && !banned.contains(&h.peer))
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

    fn report_failure(&self, peer: PeerId) {
        self.banned.lock().expect("lock").insert(peer);
        self.reported.lock().expect("lock").push(peer);
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

/// Runs a hook after each step (it may await: the generation waits for it).
struct Hook<F>(F);

impl<F, Fut> Observer for Hook<F>
where
    F: FnMut(usize) -> Fut + Send,
    Fut: std::future::Future<Output = ()> + Send,
{
    async fn step(&mut self, index: usize, _took: Duration) {
        (self.0)(index).await
    }

    async fn text(&mut self, _piece: &str) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// One generation through the mesh, failing over like the HTTP API does; `on_step(i)`
/// runs after each step.
async fn generate<F, Fut>(
    mesh: &Mesh,
    routes: &Routes,
    req: &GenerateRequest,
    on_step: F,
) -> Result<(GenerationOutput, Vec<Duration>), PipelineError>
where
    F: FnMut(usize) -> Fut + Send,
    Fut: std::future::Future<Output = ()> + Send,
{
    let opts = GenerateOptions {
        activation_dtype: WireDType::F16,
        trace_id: None,
        policy: policy(),
    };
    let g = mesh
        .client
        .generate(routes, req, &opts, &mut Hook(on_step))
        .await?;
    Ok((g.output, g.recoveries))
}

async fn nothing(_: usize) {}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_faults_on_any_hop_at_any_step_change_no_token() {
    let Some(path) = model_path(STORIES) else {
        return;
    };
    let mesh = Mesh::start(&path);
    let t0 = Instant::now();
    let mut kinds = [0usize; 4];
    for seed in first_seed()..first_seed() + scenarios() {
        let sc = Scenario::of(seed, &mesh);
        let quiet = Routes::new(&mesh, sc.prefer_second.clone());
        let (want, recoveries) = generate(&mesh, &quiet, &sc.req, nothing)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: the undisturbed run failed: {e}"));
        assert!(recoveries.is_empty(), "seed {seed}: nothing failed yet");
        let steps = want.generated_token_ids.len() as u64;

        let routes = Routes::new(&mesh, sc.prefer_second.clone());
        let chain = routes.route(&HashSet::new()).expect("a route");
        let victim = mesh.node(chain[sc.hop].peer);
        let fault = sc.fault(steps);
        kinds[match fault {
            Fault::DropConnectionAtStep(_) => 0,
            Fault::StallAtStep(_) => 1,
            Fault::GarbageAtStep(_) => 2,
            Fault::ErrorAtStep(_) => 3,
        }] += 1;
        victim.faults.arm(fault);
        let t = Instant::now();
        let got = generate(&mesh, &routes, &sc.req, nothing).await;
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
            vec![victim.hop.peer],
            "seed {seed}: {fault:?} on hop {} was blamed on the wrong peer",
            sc.hop
        );
        mesh.wait_idle(&format!("seed {seed}")).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_that_loses_both_servers_fails_with_the_uncovered_layers() {
    let Some(path) = model_path(STORIES) else {
        return;
    };
    let mesh = Mesh::start(&path);
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
    let routes = Routes::new(&mesh, vec![false; RANGES.len()]);
    let dying: Vec<quinn::Endpoint> = mesh
        .nodes
        .iter()
        .filter(|n| n.hop.layers.start == 2)
        .map(|n| n.endpoint.clone())
        .collect();
    let kill = |i: usize| {
        if i == 3 {
            // Both servers of 2..4 die; the route source still lists them (their
            // announcements have not expired yet).
            for e in &dying {
                e.close(0u32.into(), b"crashed");
            }
        }
        async {}
    };
    // Bounded, so that a hang fails the test instead of stalling it.
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        generate(&mesh, &routes, &req, kill),
    )
    .await
    .expect("the generation ended (with an error) instead of hanging");
    match r {
        Err(PipelineError::Uncovered { layers }) => assert_eq!(layers, "2..4"),
        other => panic!("expected the uncovered layers 2..4, got {other:?}"),
    }
    let dead: Vec<PeerId> = mesh
        .nodes
        .iter()
        .filter(|n| n.hop.layers.start == 2)
        .map(|n| n.hop.peer)
        .collect();
    assert_eq!(
        routes.reported(),
        dead,
        "both dead servers were blamed, in turn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_refuses_new_sessions_and_finishes_its_own() {
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
    let (want_long, _) = generate(&mesh, &quiet, &long, nothing)
        .await
        .expect("undisturbed long run");
    let (want_short, _) = generate(&mesh, &quiet, &short, nothing)
        .await
        .expect("undisturbed short run");

    let routes = Routes::new(&mesh, prefer.clone());
    let chain = routes.route(&HashSet::new()).expect("a route");
    let leaving = mesh.node(chain[1].peer);
    // At step 3 the long run pauses until the checks below are done.
    let (at_step_3, paused) = oneshot::channel::<()>();
    let (resume, resumed) = oneshot::channel::<()>();
    let mut at_step_3 = Some(at_step_3);
    let mut resumed = Some(resumed);
    let pause = |i: usize| {
        let (signal, wait) = if i == 3 {
            (at_step_3.take(), resumed.take())
        } else {
            (None, None)
        };
        async move {
            if let (Some(s), Some(w)) = (signal, wait) {
                let _ = s.send(());
                let _ = w.await;
            }
        }
    };
    let checks = async {
        paused.await.expect("the long run reached step 3");
        assert_eq!(
            leaving.server.active_sessions(),
            1,
            "it serves the long run"
        );
        // Mid-generation, the middle hop starts draining (SIGTERM in the daemon).
        leaving.server.drain();
        // A session opened on it now is refused, with the typed code and its report.
        let refused = lamina_node::pipeline::PipelineSession::open(
            &mesh.client.dialer,
            &chain,
            mesh.client.model_id,
            &lamina_node::pipeline::PipelineOptions::default(),
        )
        .await
        .map(|_| ());
        // A new generation planned with it goes elsewhere and succeeds.
        let fresh = Routes::new(&mesh, prefer.clone());
        let during = generate(&mesh, &fresh, &short, nothing)
            .await
            .map(|(o, _)| o);
        let _ = resume.send(());
        (refused, during, fresh.reported())
    };
    let (long_run, (refused, during, reported)) =
        tokio::join!(generate(&mesh, &routes, &long, pause), checks);
    let (got_long, recoveries) = long_run.expect("the long run finishes on the draining node");
    match refused {
        Err(PipelineError::Hop {
            failure:
                Failure::Reply {
                    code: ErrorCode::ShuttingDown,
                    report: Some(r),
                },
            ..
        }) => assert_eq!(r.reporter, leaving.hop.peer),
        other => panic!("expected a signed ShuttingDown refusal, got {other:?}"),
    }
    let short_during = during.expect("the second generation went elsewhere and succeeded");
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
    mesh.wait_idle("after the drain").await;
}
