//! The mesh: nodes that find each other from one bootstrap address, place themselves,
//! route around a dead peer, and ignore forged announcements.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::api::*;
use crate::common::pipeline::*;
use lamina_sharding::source::ModelFile;
use lamina_testnet::{Placement, TestnetState, UpOptions};
use serde_json::{json, Value};

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Stops a testnet when dropped (a failing assertion must not leave nodes behind).
struct Net {
    state: std::path::PathBuf,
    st: TestnetState,
    _dir: TempDir,
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = lamina_testnet::down(&self.state);
        for n in &self.st.nodes {
            if lamina_testnet::is_alive(n.pid) {
                let _ = Command::new("kill")
                    .args(["-9", &n.pid.to_string()])
                    .status();
            }
        }
    }
}

fn up(model: &std::path::Path, placement: Placement, extra: &[&str]) -> (Net, Duration) {
    let dir = TempDir::new("mesh");
    let state = dir.path().join("state.json");
    let n = match &placement {
        Placement::Fixed(v) => v.len(),
        _ => 3,
    };
    let mut opts = UpOptions::new(
        env!("CARGO_BIN_EXE_lamina").into(),
        n,
        model.to_path_buf(),
        state.clone(),
        dir.path().join("net"),
    );
    opts.placement = placement;
    opts.threads = Some(1);
    opts.ready_timeout = Duration::from_secs(60);
    opts.extra_args = extra.iter().map(|s| s.to_string()).collect();
    // Open: these tests join more nodes to the testnet.
    opts.open = true;
    let t = Instant::now();
    let st = lamina_testnet::up(&opts).expect("testnet up");
    (
        Net {
            state,
            st,
            _dir: dir,
        },
        t.elapsed(),
    )
}

fn addr(api: &str) -> String {
    api.trim_start_matches("http://").to_string()
}

fn greedy(api: &str, prompt: &str, n: usize) -> Vec<u32> {
    let r = post(
        &addr(api),
        "/v1/completions",
        // f32 activations: bit-exact with the single-process run (f16, the default, can
        // flip a near-tie after a dozen tokens).
        &json!({"prompt": prompt, "max_tokens": n, "temperature": 0, "activation_dtype": "f32"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["choices"][0]["token_ids"]
        .as_array()
        .expect("token_ids")
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn reference(model: &ModelFile, prompt: &str, n: usize) -> Vec<u32> {
    let tok = model.tokenizer().unwrap();
    let ids = tok.encode(prompt, tok.add_bos_default(), false).unwrap();
    reference_run(model, ids, n, vec![]).generated_token_ids
}

#[test]
fn four_self_placing_nodes_cover_smollm2_and_a_layerless_node_answers() {
    let Some(path) = model_path(SMOLLM2) else {
        return;
    };
    let model = ModelFile::open(&path).unwrap();
    let budget = lamina_sharding::manifest::Manifest::compute(&model)
        .unwrap()
        .budget_for_layers(10)
        .to_string();
    // Four nodes with only the model and a budget of 10 of 30 layers, plus one that hosts
    // nothing; every node but the first knows only the first's address.
    let (net, took) = up(
        &path,
        Placement::Fixed(vec![
            "auto".into(),
            "auto".into(),
            "auto".into(),
            "auto".into(),
            "none".into(),
        ]),
        &["--max-memory", &budget],
    );
    eprintln!("covered {took:?} after the first node started");
    let entry = net.st.nodes[4].api.clone().unwrap();
    let st = get(&addr(&entry), "/status").json();
    assert_eq!(st["complete"], true, "{st}");
    let placed: Vec<String> = net.st.nodes[..4].iter().map(|n| n.layers.clone()).collect();
    for l in &placed {
        let (a, b) = l.split_once("..").expect("a range");
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(
            b - a,
            10,
            "each node took the 10 layers it fits: {placed:?}"
        );
    }
    assert_eq!(net.st.nodes[4].layers, "none");

    // `lamina status` draws the coverage.
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["status", "--peer", &entry])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("covered"), "{text}");
    assert!(text.contains("servers per layer"), "{text}");

    // The layerless node plans a chain and gets the single-process tokens.
    let prompt = "The capital of France is";
    assert_eq!(greedy(&entry, prompt, 24), reference(&model, prompt, 24));
    let st = get(&addr(&entry), "/status").json();
    let hops = st["last_route"]["hops"].as_array().expect("a route");
    assert!(!hops.is_empty() && hops.len() <= 4, "{st}");
}

fn start_node(model: &std::path::Path, layers: &str, bootstrap: &str, dir: &TempDir) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lamina"))
        .arg("node")
        .arg("--model")
        .arg(model)
        .args([
            "--layers",
            layers,
            "--open",
            "--threads",
            "1",
            "--bootstrap",
            bootstrap,
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a node")
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peers(st: &Value) -> Vec<(String, String, bool)> {
    st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["peer_id"].as_str().unwrap().to_string(),
                p["layers"].as_str().unwrap_or("none").to_string(),
                p["reachable"].as_bool().unwrap_or(true),
            )
        })
        .collect()
}

#[test]
fn a_killed_node_leaves_the_view_and_a_new_one_takes_its_place() {
    let Some(path) = model_path(SMOLLM2) else {
        return;
    };
    let model = ModelFile::open(&path).unwrap();
    let (net, _) = up(
        &path,
        Placement::Fixed(vec!["0..15".into(), "15..30".into(), "none".into()]),
        &[],
    );
    let entry = addr(net.st.nodes[2].api.as_ref().unwrap());
    let prompt = "Rust is a programming language that";
    let want = reference(&model, prompt, 16);
    assert_eq!(greedy(&format!("http://{entry}"), prompt, 16), want);

    // kill -9 the only server of 15..30, start another one for it.
    let dead = net.st.nodes[1].peer_id.clone();
    Command::new("kill")
        .args(["-9", &net.st.nodes[1].pid.to_string()])
        .status()
        .unwrap();
    let dir = TempDir::new("newnode");
    let boot = lamina_testnet::bootstrap_addr(&net.st.nodes[0].p2p).unwrap();
    let _new = Kill(start_node(&path, "15..30", &boot, &dir));
    let t = Instant::now();
    let deadline = t + Duration::from_secs(30);
    let healed = loop {
        let st = get(&entry, "/status").json();
        let ps = peers(&st);
        let dead_gone = ps.iter().all(|(p, _, reach)| p != &dead || !reach);
        let new_there = ps
            .iter()
            .any(|(p, l, reach)| p != &dead && l == "15..30" && *reach);
        if dead_gone && new_there && st["complete"] == true {
            break t.elapsed();
        }
        assert!(Instant::now() < deadline, "the view never healed: {st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("view healed {healed:?} after the kill");
    assert_eq!(greedy(&format!("http://{entry}"), prompt, 16), want);
    let st = get(&entry, "/status").json();
    let route: Vec<&str> = st["last_route"]["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["peer"].as_str().unwrap())
        .collect();
    assert!(
        !route.contains(&dead.as_str()),
        "the route avoids the dead node: {st}"
    );
    // Its record expires within the TTL: then it is gone from the view entirely.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = get(&entry, "/status").json();
        if peers(&st).iter().all(|(p, _, _)| p != &dead) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead node's record never expired"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A peer that sends forged, expired and mis-signed records: the node keeps none of
/// them, counts them, and still takes an honest record from the same connection.
#[test]
fn forged_and_expired_announcements_are_ignored() {
    use futures::StreamExt;
    use lamina_node::ids::now_ms;
    use lamina_node::mesh::behaviour::{build_swarm, BehaviourEvent, SwarmOptions, Sync};
    use lamina_node::mesh::MeshHandle;
    use lamina_protocol::{Announcement, LayerRange, ModelId, NodeState};
    use libp2p::identity::Keypair;
    use libp2p::request_response;
    use libp2p::swarm::SwarmEvent;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let model = ModelId::from_bytes([3; 32]);
        let record = |key: &Keypair, layers: Option<(u32, u32)>, now: u64| Announcement {
            version: lamina_protocol::ANNOUNCEMENT_VERSION,
            peer_id: key.public().to_peer_id().to_bytes(),
            model_id: model,
            n_layers: 30,
            layers: layers.map(|(a, b)| LayerRange::new(a, b).unwrap()),
            state: NodeState::Serving,
            dataplane_addr: "127.0.0.1:9".into(),
            listen_addrs: vec![],
            api: None,
            tokens_per_sec: 100.0,
            free_slots: 4,
            max_memory: 0,
            lamina_version: "test".into(),
            seq: now,
            issued_at_ms: now,
            expires_at_ms: now + 9_000,
            withdrawn: false,
            started_at_ms: 0,
            member: None,
        };
        let opts = SwarmOptions {
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
            bootstrap: vec![],
            mdns: false,
            ..Default::default()
        };
        let honest_key = Keypair::generate_ed25519();
        let stop = tokio_util::sync::CancellationToken::new();
        let node = MeshHandle::start(
            honest_key.clone(),
            &opts,
            record(&honest_key, None, 0),
            Default::default(),
            stop,
        )
        .unwrap();
        node.wait_listening(Duration::from_secs(5)).await;
        node.update(|_| {}).await.unwrap();
        let target = node.listen_addrs()[0].clone();

        // The attacker: a bare swarm that speaks the announcement protocol.
        let attacker_key = Keypair::generate_ed25519();
        let mut attacker = build_swarm(&attacker_key, &opts).unwrap();
        attacker.dial(target).unwrap();
        let victim = loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                attacker.select_next_some().await
            {
                break peer_id;
            }
        };
        let now = now_ms();
        let a = Keypair::generate_ed25519();
        let b = Keypair::generate_ed25519();
        let c = Keypair::generate_ed25519();
        let mut tampered = record(&a, Some((0, 30)), now).sign(&a).unwrap();
        tampered.body[20] ^= 1;
        let expired = record(&b, Some((0, 30)), now - 60_000).sign(&b).unwrap();
        let mut stolen = record(&c, Some((0, 30)), now);
        stolen.peer_id = honest_key.public().to_peer_id().to_bytes();
        let stolen = stolen.sign(&c).unwrap();
        let honest = record(&attacker_key, Some((0, 10)), now)
            .sign(&attacker_key)
            .unwrap();
        attacker.behaviour_mut().announce.send_request(
            &victim,
            Sync {
                records: vec![tampered, expired, stolen, honest],
            },
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ev = tokio::time::timeout_at(deadline, attacker.select_next_some())
                .await
                .expect("the node answers the sync");
            if let SwarmEvent::Behaviour(BehaviourEvent::Announce(
                request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                },
            )) = ev
            {
                break;
            }
        }
        // The reply was sent after the records were merged; the snapshot follows.
        assert!(
            node.wait_for(Duration::from_secs(5), |s| s.rejected >= 3)
                .await,
            "{} rejected",
            node.snapshot().rejected
        );
        let live: Vec<String> = node.live().iter().map(|(p, _)| p.to_string()).collect();
        let attacker_id = attacker_key.public().to_peer_id().to_string();
        for k in [&a, &b, &c] {
            assert!(
                !live.contains(&k.public().to_peer_id().to_string()),
                "{live:?}"
            );
        }
        assert!(
            live.contains(&attacker_id),
            "an honest record is kept: {live:?}"
        );
        // The node's own record was not replaced by the one that claimed its id.
        let me = node
            .live()
            .into_iter()
            .find(|(p, _)| *p == node.peer_id())
            .unwrap();
        assert_eq!(me.1.layers, None);
    });
}

/// Sessions as streams on the mesh's own libp2p connections: every node announces `p2p`
/// as its data plane, so no hop is dialed at a data-plane address, and the chain answers
/// exactly as one process does (f32 activations).
#[test]
fn sessions_run_over_the_mesh_connections_when_nodes_announce_p2p() {
    let Some(path) = model_path(STORIES) else {
        return;
    };
    let model = ModelFile::open(&path).unwrap();
    let (net, _) = up(
        &path,
        Placement::Fixed(vec!["0..2".into(), "2..5".into(), "none".into()]),
        &["--advertise-dataplane", "p2p"],
    );
    let entry = net.st.nodes[2].api.clone().unwrap();
    let st = get(&addr(&entry), "/status").json();
    let planes: Vec<&str> = st["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .filter_map(|p| p["dataplane"].as_str())
        .collect();
    assert!(
        !planes.is_empty() && planes.iter().all(|d| *d == "p2p"),
        "{st}"
    );
    let prompt = "Once upon a time";
    assert_eq!(greedy(&entry, prompt, 24), reference(&model, prompt, 24));
    // The layerless entry served nothing; both hops served steps, over p2p streams.
    for n in &net.st.nodes[..2] {
        let m = get(&addr(n.api.as_deref().unwrap()), "/metrics").body;
        assert!(m.contains("lamina_session_steps"), "{m}");
    }
}
