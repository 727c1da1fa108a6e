//! Churn the mesh must absorb: the only server of a range dies (the mesh re-covers it by
//! moving a redundant node, and requests meanwhile get a clear error), and a node is
//! stopped with SIGTERM while it serves a generation (the generation still completes).

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::api::*;
use crate::common::pipeline::*;
use lamina_sharding::source::ModelFile;
use lamina_testnet::{Placement, TestnetState, UpOptions};
use serde_json::{json, Value};

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

struct Net(
    std::path::PathBuf,
    TestnetState,
    #[allow(dead_code)] TempDir,
);

impl Drop for Net {
    fn drop(&mut self) {
        let _ = lamina_testnet::down(&self.0);
        for n in &self.1.nodes {
            if lamina_testnet::is_alive(n.pid) {
                let _ = Command::new("kill")
                    .args(["-9", &n.pid.to_string()])
                    .status();
            }
        }
    }
}

fn up(model: &std::path::Path, layers: &[&str], extra: &[&str]) -> Net {
    let dir = TempDir::new("churn");
    let state = dir.path().join("state.json");
    let mut opts = UpOptions::new(
        env!("CARGO_BIN_EXE_lamina").into(),
        layers.len(),
        model.to_path_buf(),
        state.clone(),
        dir.path().join("net"),
    );
    opts.placement = Placement::Fixed(layers.iter().map(|s| s.to_string()).collect());
    opts.threads = Some(1);
    opts.ready_timeout = Duration::from_secs(60);
    opts.extra_args = extra.iter().map(|s| s.to_string()).collect();
    // Open: the stalling and garbage peers of these tests must be able to join.
    opts.open = true;
    let st = lamina_testnet::up(&opts).expect("testnet up");
    Net(state, st, dir)
}

fn servers_of(st: &Value) -> Vec<(String, String)> {
    st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            Some((
                p["peer_id"].as_str()?.to_string(),
                p["layers"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn the_only_server_of_a_range_dies_and_the_mesh_recovers_it() {
    let Some(path) = model_path(SMOLLM2) else {
        return;
    };
    let model = ModelFile::open(&path).unwrap();
    let budget = lamina_sharding::manifest::Manifest::compute(&model)
        .unwrap()
        .budget_for_layers(10)
        .to_string();
    // Four self-placing nodes of 10 layers each over 30: one range is served twice.
    let net = up(
        &path,
        &["auto", "auto", "auto", "auto", "none"],
        &["--max-memory", &budget],
    );
    let entry = net.1.nodes[4]
        .api
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let st = get(&entry, "/status").json();
    let servers = servers_of(&st);
    // A node whose layers no other node has.
    let lonely = servers
        .iter()
        .find(|(p, l)| {
            let (a, b) = l.split_once("..").unwrap();
            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
            (a..b).any(|layer| st["coverage"][layer]["servers"] == 1)
                && servers.iter().filter(|(q, _)| q != p).all(|(_, m)| m != l)
        })
        .cloned()
        .expect("a range with one server");
    let pid = net
        .1
        .nodes
        .iter()
        .find(|n| n.peer_id == lonely.0)
        .unwrap()
        .pid;
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    // While the gap lasts, a request is answered at once: 503 naming layers, or 200 once
    // the mesh has re-covered them. Never a hang (the client's read timeout bounds it).
    let mut saw_503 = false;
    let healed = loop {
        let asked = Instant::now();
        let r = post(
            &entry,
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 2, "temperature": 0}),
        );
        assert!(asked.elapsed() < Duration::from_secs(60), "a request hung");
        match r.status {
            503 => {
                saw_503 = true;
                assert!(r.body.contains("not served"), "{}", r.body);
            }
            200 => {
                let st = get(&entry, "/status").json();
                if st["complete"] == true && servers_of(&st).iter().all(|(p, _)| p != &lonely.0) {
                    break t.elapsed();
                }
            }
            // The dead node may still be routed to before the mesh notices: a 502.
            502 => {}
            s => panic!("unexpected {s}: {}", r.body),
        }
        assert!(t.elapsed() < Duration::from_secs(60), "never re-covered");
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "re-covered {} after {healed:?} (503 seen meanwhile: {saw_503})",
        lonely.1
    );
    let st = get(&entry, "/status").json();
    assert_eq!(st["complete"], true, "{st}");
}

#[test]
fn sigterm_on_a_serving_node_loses_no_generation() {
    let Some(path) = model_path(SMOLLM2) else {
        return;
    };
    let net = up(&path, &["0..15", "15..30", "none"], &[]);
    let entry = net.1.nodes[2]
        .api
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let body = json!({"prompt": "The old lighthouse keeper", "max_tokens": 40, "temperature": 0,
                      "stream": true, "stream_options": {"include_usage": true}});
    let full = |text: &str| join_stream(text);
    let want = full(
        &request(
            &entry,
            "POST",
            "/v1/completions",
            Some("application/json"),
            &body.to_string(),
        )
        .body,
    );

    let mut s = connect(&entry);
    write_request(
        &mut s,
        &entry,
        "POST",
        "/v1/completions",
        Some("application/json"),
        &body.to_string(),
    );
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut stopped = false;
    let b = &net.1.nodes[1];
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if !stopped && String::from_utf8_lossy(&raw).matches("data: ").count() >= 6 {
            Command::new("kill")
                .args(["-TERM", &b.pid.to_string()])
                .status()
                .unwrap();
            stopped = true;
        }
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let got = full(&String::from_utf8(dechunk(&raw[split + 4..])).unwrap());
    assert!(stopped);
    assert_eq!(
        got.text, want.text,
        "the generation finished on the stopping node"
    );
    assert_eq!(got.usage, want.usage);
    // Then it leaves: withdrawn from the view, and the process exits.
    let deadline = Instant::now() + Duration::from_secs(40);
    while lamina_testnet::is_alive(b.pid) {
        assert!(
            Instant::now() < deadline,
            "the node did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = get(&entry, "/status").json();
    assert!(servers_of(&st).iter().all(|(p, _)| p != &b.peer_id), "{st}");
}

/// An in-process peer that announces a range with a signed, fast-looking record, and
/// whose data plane accepts connections but then stalls (or answers garbage).
struct Evil {
    _mesh: lamina_node::mesh::MeshHandle,
    _rt: tokio::runtime::Runtime,
}

fn start_evil(bootstrap: &str, model_id: &str, garbage: bool) -> Evil {
    use lamina_node::dataplane::server_endpoint;
    use lamina_node::mesh::behaviour::SwarmOptions;
    use lamina_node::mesh::MeshHandle;
    use lamina_protocol::{Announcement, LayerRange, NodeState};
    use libp2p::identity::Keypair;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let model_id: lamina_protocol::ModelId = model_id.parse().unwrap();
    let bootstrap: libp2p::Multiaddr = bootstrap.parse().unwrap();
    let mesh = rt.block_on(async move {
        let key = Keypair::generate_ed25519();
        let ep = server_endpoint("127.0.0.1:0".parse().unwrap(), &key).unwrap();
        let dp = ep.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(inc) = ep.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = inc.await else { return };
                    while let Ok((mut send, _recv)) = conn.accept_bi().await {
                        if garbage {
                            let _ = send
                                .write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8])
                                .await;
                            let _ = send.write_all(&[0u8; 64]).await;
                        }
                        // Then nothing, forever (the streams are kept open).
                        std::mem::forget(send);
                        std::mem::forget(_recv);
                    }
                });
            }
        });
        let template = Announcement {
            version: lamina_protocol::ANNOUNCEMENT_VERSION,
            peer_id: key.public().to_peer_id().to_bytes(),
            model_id,
            n_layers: 30,
            layers: Some(LayerRange::new(15, 30).unwrap()),
            state: NodeState::Serving,
            dataplane_addr: dp.to_string(),
            listen_addrs: vec![],
            api: None,
            // Far faster than any honest node: the router prefers it.
            tokens_per_sec: 100_000.0,
            free_slots: 64,
            max_memory: 0,
            lamina_version: "evil".into(),
            seq: 0,
            issued_at_ms: 0,
            expires_at_ms: 0,
            withdrawn: false,
            started_at_ms: lamina_node::ids::now_ms(),
            member: None,
        };
        let opts = SwarmOptions {
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
            bootstrap: vec![bootstrap],
            mdns: false,
            ..Default::default()
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let mesh = MeshHandle::start(key, &opts, template, Default::default(), stop).unwrap();
        mesh.wait_listening(Duration::from_secs(5)).await;
        mesh.update(|_| {}).await.unwrap();
        mesh
    });
    Evil {
        _mesh: mesh,
        _rt: rt,
    }
}

#[test]
fn a_peer_that_stalls_or_sends_garbage_is_detected_and_avoided() {
    let Some(path) = model_path(SMOLLM2) else {
        return;
    };
    let model = ModelFile::open(&path).unwrap();
    let net = up(&path, &["0..15", "15..30", "none"], &[]);
    let entry = net.1.nodes[2]
        .api
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let boot = lamina_testnet::bootstrap_addr(&net.1.nodes[2].p2p).unwrap();
    let model_id = get(&entry, "/status").json()["model_id"]
        .as_str()
        .unwrap()
        .to_string();
    let tok = model.tokenizer().unwrap();
    let prompt = "Three things every sailor knows:";
    let ids = tok.encode(prompt, tok.add_bos_default(), false).unwrap();
    let want = reference_run(&model, ids, 12, vec![]).generated_token_ids;
    for garbage in [false, true] {
        let _evil = start_evil(&boot, &model_id, garbage);
        // Wait until the entry would route through the evil peer.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = get(&entry, "/status").json();
            if st["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["version"] == "evil")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the evil record never arrived: {st}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let t = Instant::now();
        let r = post(
            &entry,
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "activation_dtype": "f32"}),
        );
        let took = t.elapsed();
        assert_eq!(r.status, 200, "{}", r.body);
        let got: Vec<u32> = r.json()["choices"][0]["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got, want, "garbage={garbage}");
        eprintln!("garbage={garbage}: answered in {took:?} around the bad peer");
        // Banned now: the next request does not even try it.
        let t = Instant::now();
        let r = post(
            &entry,
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 4, "temperature": 0}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        eprintln!("garbage={garbage}: next request {:?}", t.elapsed());
        let st = get(&entry, "/status").json();
        let hops = st["last_route"]["hops"].as_array().unwrap();
        assert!(hops.iter().all(|h| h["peer"] != json!(null)));
    }
}
