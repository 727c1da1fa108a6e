//! Private meshes (issue 15, parts 1-3): strangers are refused at every door (the mesh's
//! connections, its records, the data plane), a revoked member is cut off within 10 s, a
//! peer announcing another's data-plane address cannot take its traffic, the authority
//! key is kept private, and the README's commands run as written.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lamina_node::dataplane::{client_endpoint, Dialer};
use lamina_node::mesh::behaviour::{build_swarm, BehaviourEvent, MemberHello, SwarmOptions, Sync};
use lamina_node::pipeline::{PipelineOptions, PipelineSession};
use lamina_node::session::ServerOptions;
use lamina_node::trust::{Authority, Gate, SharedGate};
use lamina_protocol::{
    ErrorCode, FrameLimits, Hello, LayerRange, Message, ModelId, Role, SignedMemberCert,
};
use lamina_testnet::{Placement, TestnetState, UpOptions};
use libp2p::identity::Keypair;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use serde_json::Value;

use crate::common::api::get;
use crate::common::hops::{spawn_hop, tiny_model};
use crate::common::pipeline::{model_path, TempDir};

const STORIES: &str = "stories260K.gguf";

fn lamina() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lamina"))
}

fn now_unix() -> u64 {
    lamina_node::ids::now_ms() / 1000
}

/// Stops a testnet when dropped.
struct Net {
    state: PathBuf,
    st: TestnetState,
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

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn api(n: &lamina_testnet::NodeState) -> String {
    n.api
        .as_deref()
        .expect("api")
        .trim_start_matches("http://")
        .to_string()
}

fn status_peers(api: &str) -> Vec<String> {
    let st = get(api, "/status").json();
    st["peers"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|p| p["peer_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What a stranger got from one attempt to join through `target`.
struct Attempt {
    /// The node closed the connection (the gate refused it).
    disconnected: bool,
    /// Records it received.
    records: usize,
}

/// A bare swarm speaking lamina's protocols presents `cert` to `target`, asks for records
/// and answers whatever it is asked, until the node disconnects it (or 10 s pass). A
/// `silent` one never says anything about membership.
async fn join_as_stranger(
    key: &Keypair,
    cert: Option<SignedMemberCert>,
    target: Multiaddr,
    silent: bool,
) -> Attempt {
    let opts = SwarmOptions {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        bootstrap: vec![],
        mdns: false,
        ..Default::default()
    };
    let mut sw = build_swarm(key, &opts).unwrap();
    sw.dial(target).unwrap();
    let hello = MemberHello {
        cert,
        revocations: vec![],
    };
    let mut a = Attempt {
        disconnected: false,
        records: 0,
    };
    let mut connected = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(ev) = tokio::time::timeout_at(deadline, sw.select_next_some()).await {
        match ev {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                connected = true;
                if !silent {
                    sw.behaviour_mut()
                        .member
                        .send_request(&peer_id, hello.clone());
                }
                sw.behaviour_mut()
                    .announce
                    .send_request(&peer_id, Sync { records: vec![] });
            }
            SwarmEvent::ConnectionClosed {
                num_established: 0, ..
            } if connected => {
                a.disconnected = true;
                break;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Member(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            })) if !silent => {
                let _ = sw
                    .behaviour_mut()
                    .member
                    .send_response(channel, hello.clone());
            }
            SwarmEvent::Behaviour(BehaviourEvent::Announce(request_response::Event::Message {
                message,
                ..
            })) => match message {
                request_response::Message::Request { request, .. } => {
                    a.records += request.records.len()
                }
                request_response::Message::Response { response, .. } => {
                    a.records += response.records.len()
                }
            },
            _ => {}
        }
    }
    a
}

/// A data-plane `Hello` from `key` presenting `cert` to the node (`addr`, `peer`): the
/// first reply.
async fn dataplane_hello(
    key: &Keypair,
    cert: Option<SignedMemberCert>,
    addr: &str,
    peer: PeerId,
    model: ModelId,
) -> Option<Message> {
    let d = Dialer::new(
        client_endpoint(None).unwrap(),
        FrameLimits::default(),
        key.clone(),
    );
    let (mut tx, mut rx) = d.open_stream(addr, peer).await.ok()?;
    tx.send(&Message::Hello(
        Hello::new(model, "stranger").with_member(cert),
    ))
    .await
    .ok()?;
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .ok()?
        .ok()?
}

fn up_private(model: &Path, dir: &TempDir) -> Net {
    let state = dir.path().join("state.json");
    let mut opts = UpOptions::new(
        env!("CARGO_BIN_EXE_lamina").into(),
        3,
        model.to_path_buf(),
        state.clone(),
        dir.path().join("net"),
    );
    opts.placement = Placement::Even;
    opts.threads = Some(1);
    opts.ready_timeout = Duration::from_secs(60);
    let st = lamina_testnet::up(&opts).expect("testnet up");
    Net { state, st }
}

/// Acceptance of parts 1-3: in a 3-node private testnet, a fourth peer with no
/// certificate, one of another mesh, an expired one and one for another peer id is
/// disconnected, receives no record, appears in no status and opens no data-plane
/// session, each refusal logged at the gate with its reason; a real `lamina node` of
/// another mesh is refused the same way; a revoked member is gone from every status
/// within 10 s.
#[test]
fn a_private_testnet_refuses_strangers_and_cuts_off_a_revoked_member() {
    let Some(model) = model_path(STORIES) else {
        return;
    };
    let dir = TempDir::new("trust");
    let net = up_private(&model, &dir);
    let mesh_dir = net
        .st
        .mesh
        .clone()
        .expect("a private testnet names its mesh");
    let authority = Authority::open(&mesh_dir).expect("the testnet's authority");
    let other = Authority::create(&dir.path().join("other-mesh")).unwrap();
    let apis: Vec<String> = net.st.nodes.iter().map(api).collect();
    let model_id: ModelId = get(&apis[0], "/status").json()["model_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let node0 = &net.st.nodes[0];
    let node0_peer: PeerId = node0.peer_id.parse().unwrap();
    let boot: Multiaddr = lamina_testnet::bootstrap_addr(&node0.p2p)
        .unwrap()
        .parse()
        .unwrap();
    // The members see each other.
    for a in &apis {
        assert_eq!(status_peers(a).len(), 3, "{}", get(a, "/status").body);
    }

    let rt = crate::common::pipeline::runtime();
    let now = now_unix();
    let cases: Vec<(&str, &str, Keypair)> = vec![
        (
            "no certificate",
            "no membership certificate",
            Keypair::generate_ed25519(),
        ),
        ("another mesh", "another mesh", Keypair::generate_ed25519()),
        ("expired", "expired", Keypair::generate_ed25519()),
        (
            "another peer id",
            "another peer",
            Keypair::generate_ed25519(),
        ),
        ("silent", "no membership proof", Keypair::generate_ed25519()),
    ];
    let mut strangers = Vec::new();
    for (case, reason, key) in &cases {
        let peer = key.public().to_peer_id();
        let cert = match *case {
            "no certificate" | "silent" => None,
            "another mesh" => Some(other.admit(&peer, Role::Serve, now + 3600).unwrap()),
            "expired" => Some(authority.admit(&peer, Role::Serve, now - 10).unwrap()),
            _ => Some(
                authority
                    .admit(&PeerId::random(), Role::Serve, now + 3600)
                    .unwrap(),
            ),
        };
        let t = Instant::now();
        let silent = *case == "silent";
        let a = rt.block_on(join_as_stranger(key, cert.clone(), boot.clone(), silent));
        eprintln!(
            "{case}: disconnected={} after {:?}, records={}",
            a.disconnected,
            t.elapsed(),
            a.records
        );
        assert!(a.disconnected, "{case}: the gate must disconnect it");
        assert_eq!(a.records, 0, "{case}: it must not receive a record");
        let reply = rt.block_on(dataplane_hello(
            key,
            cert,
            &node0.dataplane,
            node0_peer,
            model_id,
        ));
        match reply {
            Some(Message::Error(e)) => assert_eq!(e.code, ErrorCode::NotAMember, "{case}: {e:?}"),
            other => panic!("{case}: the data plane must refuse it, got {other:?}"),
        }
        strangers.push((case.to_string(), reason.to_string(), peer.to_string()));
    }

    // A real node of another mesh, bootstrapping from a member.
    let stranger_dir = dir.path().join("stranger");
    let out = lamina()
        .args(["node", "--print-peer-id", "--data-dir"])
        .arg(&stranger_dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stranger_peer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let member = dir.path().join("stranger.member.json");
    other
        .member_file(&stranger_peer.parse().unwrap(), Role::Serve, now + 3600)
        .unwrap()
        .save(&member)
        .unwrap();
    let log = std::fs::File::create(dir.path().join("stranger.log")).unwrap();
    let child = lamina()
        .arg("node")
        .arg("--model")
        .arg(&model)
        .args([
            "--layers",
            "0..5",
            "--threads",
            "1",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--member")
        .arg(&member)
        .arg("--data-dir")
        .arg(&stranger_dir)
        .args(["--bootstrap", &boot.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut child = Proc(child);
    let mut line = String::new();
    let stdout = child.0.stdout.take().unwrap();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("\"ready\""),
        "the stranger node starts: {line}"
    );
    strangers.push((
        "a node of another mesh".into(),
        "another mesh".into(),
        stranger_peer,
    ));
    // Give it the time to try (and be refused) and every node to gossip.
    std::thread::sleep(Duration::from_secs(7));
    for a in &apis {
        let peers = status_peers(a);
        assert_eq!(peers.len(), 3, "{a}: {peers:?}");
        for (case, _, p) in &strangers {
            assert!(!peers.contains(p), "{case}: {p} in the status of {a}");
        }
    }
    let st0 = get(&apis[0], "/status").json();
    assert!(
        st0["refused_connections"].as_u64().unwrap_or(0) >= 5,
        "{st0}"
    );
    // Each refusal is logged at the gate, with its reason.
    let logs: String = net
        .st
        .nodes
        .iter()
        .map(|n| std::fs::read_to_string(&n.log).unwrap_or_default())
        .collect();
    let gate_line = |logs: &str, p: &str, reason: &str| {
        logs.lines()
            .any(|l| l.contains("gate: refused a peer") && l.contains(p) && l.contains(reason))
    };
    for (case, reason, p) in &strangers[..5] {
        assert!(
            gate_line(&logs, p, reason),
            "{case}: no gate line with {p} and {reason:?}"
        );
    }
    // The real node judges the member at the same moment the member judges it: whichever
    // gate decides first disconnects, so the refusal is logged on one side or both.
    let (case, reason, p) = &strangers[5];
    let own = std::fs::read_to_string(dir.path().join("stranger.log")).unwrap_or_default();
    assert!(
        gate_line(&logs, p, reason) || gate_line(&own, &node0.peer_id, reason),
        "{case}: no gate line on either side"
    );
    drop(child);

    // The members still serve: a generation through the private chain over the API, and
    // through a Rust client admitted as a client.
    let r = crate::common::api::post(
        &apis[0],
        "/v1/completions",
        &serde_json::json!({"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let client_dir = dir.path().join("client");
    let client_key = lamina_node::mesh::load_or_create_identity(&client_dir).unwrap();
    let client_member = dir.path().join("client.member.json");
    authority
        .member_file(&client_key.public().to_peer_id(), Role::Client, now + 3600)
        .unwrap()
        .save(&client_member)
        .unwrap();
    let client = lamina_node::client::MeshClient::join_as(
        &model,
        std::slice::from_ref(&boot),
        lamina_node::MeshChoice::Member(client_member),
        Some(&client_dir),
    )
    .expect("an admitted client joins");
    let out = client
        .complete("Once upon a time", 4)
        .expect("it generates");
    assert!(!out.generated_token_ids.is_empty(), "{out:?}");
    drop(client);

    // Revocation: node-2 is cut off everywhere within 10 s.
    let victim = net.st.nodes[2].peer_id.clone();
    let t = Instant::now();
    let out = lamina()
        .args(["mesh", "revoke", "--mesh"])
        .arg(&mesh_dir)
        .args(["--peer", &victim, "--bootstrap", &boot.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = loop {
        let still: Vec<&String> = apis[..2]
            .iter()
            .filter(|a| status_peers(a).contains(&victim))
            .collect();
        if still.is_empty() {
            break t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the revoked member is still in {still:?} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("revoked member gone from every status in {gone:?}");
    // And it stays gone (its redials are refused, relayed records of it too).
    std::thread::sleep(Duration::from_secs(3));
    for a in &apis[..2] {
        assert!(!status_peers(a).contains(&victim), "{a}");
    }
}

/// A session server of a private mesh serves a member and refuses, with `NotAMember`, a
/// peer without a certificate (in-process, no mesh).
#[test]
fn a_private_hop_serves_members_only() {
    let rt = crate::common::pipeline::runtime();
    rt.block_on(async {
        let (model, id) = tiny_model();
        let dir = TempDir::new("trust-hop");
        let a = Authority::create(&dir.path().join("mesh")).unwrap();
        let now = now_unix();
        let own = a.admit(&PeerId::random(), Role::Serve, now + 3600).unwrap();
        let opts = ServerOptions {
            gate: SharedGate::new(Gate::member(a.mesh(), own)),
            ..ServerOptions::default()
        };
        let hop = spawn_hop(&model, id, LayerRange::new(0, 4).unwrap(), opts);
        let popts = PipelineOptions::default();
        let key = Keypair::generate_ed25519();
        let stranger = Dialer::new(
            client_endpoint(None).unwrap(),
            FrameLimits::default(),
            key.clone(),
        );
        let e = PipelineSession::open(&stranger, std::slice::from_ref(&hop.hop), id, &popts)
            .await
            .err()
            .expect("a peer without a certificate is refused");
        let text = e.to_string();
        assert!(
            text.contains("NotAMember") || text.contains("not a member"),
            "{text}"
        );
        let cert = a
            .admit(&key.public().to_peer_id(), Role::Client, now + 3600)
            .unwrap();
        let member = Dialer::new(client_endpoint(None).unwrap(), FrameLimits::default(), key)
            .with_member(Some(cert));
        let s = PipelineSession::open(&member, std::slice::from_ref(&hop.hop), id, &popts).await;
        assert!(s.is_ok(), "a member opens a session: {:?}", s.err());
    });
}

/// A peer that announces another peer's data-plane address (with its own peer id, the
/// only one it can sign a record for) cannot take that address's traffic: the dialer
/// expects the announcer's peer id and the handshake with the real owner fails; dialing
/// the owner by its own peer id still works.
#[test]
fn a_peer_announcing_another_peers_address_cannot_take_its_traffic() {
    let rt = crate::common::pipeline::runtime();
    rt.block_on(async {
        let (model, id) = tiny_model();
        let victim = spawn_hop(
            &model,
            id,
            LayerRange::new(0, 4).unwrap(),
            ServerOptions::default(),
        );
        let thief = Keypair::generate_ed25519().public().to_peer_id();
        let mut stolen = victim.hop.clone();
        stolen.peer = thief;
        let d = crate::common::hops::client_dialer(FrameLimits::default());
        let popts = PipelineOptions::default();
        let e = PipelineSession::open(&d, &[stolen], id, &popts).await;
        assert!(e.is_err(), "the handshake must fail");
        assert_eq!(victim.server.active_sessions(), 0);
        let ok = PipelineSession::open(&d, std::slice::from_ref(&victim.hop), id, &popts).await;
        assert!(ok.is_ok(), "{:?}", ok.err());
    });
}

/// `mesh.key` is made 0600, and a key others may read is refused, by the library and by
/// `lamina mesh admit`.
#[cfg(unix)]
#[test]
fn the_mesh_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("trust-key");
    let mesh = dir.path().join("mesh");
    let out = lamina()
        .args(["mesh", "create", "--out"])
        .arg(&mesh)
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = mesh.join("mesh.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(Authority::open(&mesh).is_ok());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(Authority::open(&mesh).is_err());
    let out = lamina()
        .args(["mesh", "admit", "--mesh"])
        .arg(&mesh)
        .args(["--peer", &PeerId::random().to_string(), "--out"])
        .arg(dir.path().join("m.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by other users"), "{err}");
}

/// The README's private-mesh commands, run as written (with the model path filled in).
#[test]
fn the_readme_private_mesh_commands_work() {
    let Some(model) = model_path(STORIES) else {
        return;
    };
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("### Private meshes"))
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .filter(|l| l.starts_with("lamina "))
        .collect();
    assert_eq!(
        block.len(),
        4,
        "create, print-peer-id, admit, node: {block:?}"
    );
    let dir = TempDir::new("trust-readme");
    let mut peer = String::new();
    for line in &block[..3] {
        let line = line.replace("<PEER_ID>", &peer);
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let out = lamina()
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if line.contains("--print-peer-id") {
            peer = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(peer.parse::<PeerId>().is_ok(), "{peer}");
        }
    }
    let node = block[3].replace("MODEL.gguf", &model.display().to_string());
    let args: Vec<&str> = node.split_whitespace().skip(1).collect();
    let child = lamina()
        .args(&args)
        .args(["--listen", "127.0.0.1:0", "--threads", "1"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = Proc(child);
    let mut line = String::new();
    let stdout = child.0.stdout.take().unwrap();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(ready["peer_id"], peer.as_str(), "{ready}");
}
