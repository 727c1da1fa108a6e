//! NATs in the testnet (`up --netns --nat`, root).
//!
//! - A node behind a symmetric NAT cannot be dialed at all (its addresses are private, its
//!   mappings change per remote endpoint), yet it serves its layers, because sessions run
//!   as streams on the mesh connections it opened itself (`--behind-nat` announces `p2p`
//!   as its data plane; the testnet gives it to every NATed node).
//! - With a relay (`--relay node-0`): NATed nodes reserve circuits on it and announce the
//!   relayed addresses; two nodes behind cone NATs meet through the relay and DCUtR
//!   punches a direct connection (`hole-punched` in `/status`); a node behind a symmetric
//!   NAT stays `relayed` to them; a prompt at its API is answered through every NAT.
//! - An operator who forwarded the mesh port (`forwarded`, `--external-addr`): the
//!   address is announced first and peers behind symmetric NATs dial it directly (with
//!   every uplink shaped, 5 ms, as `up --netns --latency` does).
//!
//! Answers are exactly one process's (f32 activations).

use std::time::{Duration, Instant};

use crate::common::api::*;
use crate::common::pipeline::*;
use crate::testnet_updown::netns_available;
use lamina_sharding::source::ModelFile;
use lamina_testnet::netns::Nat;
use lamina_testnet::{Placement, UpOptions};
use serde_json::json;

/// Stops the testnet (and removes its namespaces) when dropped.
struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lamina_testnet::down(&self.0);
    }
}

/// A namespace testnet of stories260K over `ranges`, with `nat` and `relays`, one thread
/// per node, no spot checks, `extra` flags for every node; stopped when the returned
/// guard drops.
fn up(
    path: &std::path::Path,
    dir: &TempDir,
    ranges: &[&str],
    nat: Vec<(usize, Nat)>,
    relays: Vec<usize>,
    extra: &[&str],
    link: Option<lamina_testnet::relay::LinkSpec>,
) -> (lamina_testnet::TestnetState, Down) {
    let state = dir.path().join("state.json");
    let mut opts = UpOptions::new(
        env!("CARGO_BIN_EXE_lamina").into(),
        ranges.len(),
        path.to_path_buf(),
        state.clone(),
        dir.path().join("net"),
    );
    opts.placement = Placement::Fixed(ranges.iter().map(|r| r.to_string()).collect());
    opts.threads = Some(1);
    opts.ready_timeout = Duration::from_secs(90);
    opts.netns = true;
    opts.nat = nat;
    opts.relays = relays;
    opts.verify_rate = 0.0;
    opts.extra_args = extra.iter().map(|a| a.to_string()).collect();
    opts.link = link;
    let st = lamina_testnet::up(&opts).expect("testnet up");
    (st, Down(state))
}

/// Asserts that a greedy f32 completion at `api` has the tokens of one process.
fn answers_as_one_process(path: &std::path::Path, api: &str, what: &str) {
    let model = ModelFile::open(path).unwrap();
    let prompt = "Once upon a time";
    let tok = model.tokenizer().unwrap();
    let ids = tok.encode(prompt, tok.add_bos_default(), false).unwrap();
    let want = reference_run(&model, ids, 24, vec![]).generated_token_ids;
    let r = post(
        api.trim_start_matches("http://"),
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "activation_dtype": "f32"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let got: Vec<u32> = r.json()["choices"][0]["token_ids"]
        .as_array()
        .expect("token_ids")
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(got, want, "{what}");
}

#[test]
fn a_node_behind_a_symmetric_nat_serves_its_layers_over_the_connections_it_opened() {
    let Some(path) = model_path(STORIES) else {
        return;
    };
    if !netns_available() {
        return;
    }
    let dir = TempDir::new("nat");
    // node-0 public (the bootstrap, first hop), node-1 behind a symmetric NAT (last
    // hop), node-2 the public entry.
    let (st, _down) = up(
        &path,
        &dir,
        &["0..2", "2..5", "none"],
        vec![(1, Nat::Symmetric)],
        vec![],
        &[],
        None,
    );
    let ns = st.netns.clone().expect("namespaces");
    let natted = &ns.nodes[1];
    let gw = natted.nat.as_ref().expect("node-1 is behind a NAT");
    assert_eq!(gw.kind, Nat::Symmetric);

    // What the mesh knows of node-1: a `p2p` data plane, and only private addresses.
    let entry = st.nodes[2].api.clone().expect("entry API");
    let entry = entry.trim_start_matches("http://");
    let status = get(entry, "/status").json();
    let rec = status["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["peer_id"] == st.nodes[1].peer_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("the entry sees node-1: {status}"));
    assert_eq!(rec["dataplane"], "p2p", "{rec}");
    assert!(
        st.nodes[1]
            .p2p
            .iter()
            .all(|a| a.contains(&gw.lan_addr.to_string())),
        "node-1 listens on its LAN address only: {:?}",
        st.nodes[1].p2p
    );
    // Its API is reached through the gateway's forwarded port.
    let natted_api = st.nodes[1].api.clone().expect("node-1 API");
    assert!(
        natted_api.contains(&natted.addr.to_string()),
        "{natted_api} is the gateway's public address"
    );
    assert_eq!(
        get(natted_api.trim_start_matches("http://"), "/status").status,
        200
    );

    answers_as_one_process(
        &path,
        entry,
        "the chain through the NAT answers as one process",
    );
}

/// `path` of `peer` in the `/status` of the node at `api` (`None` when not connected).
fn path_of(api: &str, peer: &str) -> Option<String> {
    let st = get(api.trim_start_matches("http://"), "/status").json();
    st["peers"]
        .as_array()?
        .iter()
        .find(|p| p["peer_id"] == peer)?["path"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn cone_nats_punch_a_hole_and_a_symmetric_nat_stays_relayed() {
    let Some(path) = model_path(STORIES) else {
        return;
    };
    if !netns_available() {
        return;
    }
    let dir = TempDir::new("nat-relay");
    let (st, _down) = up(
        &path,
        &dir,
        &["0..2", "2..3", "3..4", "4..5"],
        vec![(1, Nat::Cone), (2, Nat::Cone), (3, Nat::Symmetric)],
        vec![0],
        &[],
        None,
    );
    let api = |i: usize| st.nodes[i].api.clone().expect("API");
    let peer = |i: usize| st.nodes[i].peer_id.clone();

    // node-1 <-> node-2 (cone, cone): through the relay first, then a punched hole.
    // node-3 (symmetric) <-> node-1, node-2: the relay only.
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = [
        (1, 2, "hole-punched"),
        (2, 1, "hole-punched"),
        (3, 1, "relayed"),
        (3, 2, "relayed"),
        (1, 0, "direct"),
    ];
    loop {
        let got: Vec<Option<String>> = want
            .iter()
            .map(|(a, b, _)| path_of(&api(*a), &peer(*b)))
            .collect();
        if want
            .iter()
            .zip(&got)
            .all(|((_, _, w), g)| g.as_deref() == Some(*w))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "paths (from, to, want) {want:?}, got {got:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A prompt at the symmetric NAT's API: its chain crosses every NAT.
    answers_as_one_process(
        &path,
        &api(3),
        "the answer through the NATs is one process's",
    );
}

#[test]
fn a_forwarded_port_is_announced_first_and_peers_behind_nats_dial_it_directly() {
    let Some(path) = model_path(STORIES) else {
        return;
    };
    if !netns_available() {
        return;
    }
    let dir = TempDir::new("nat-forwarded");
    let (st, _down) = up(
        &path,
        &dir,
        &["0..2", "2..4", "4..5"],
        vec![(1, Nat::Forwarded), (2, Nat::Symmetric)],
        vec![0],
        // No gateway here speaks UPnP: the nodes must say so, and carry on.
        &["--upnp"],
        // Every uplink shaped (the shapers must carry mesh, relay and sessions alike).
        Some(lamina_testnet::relay::LinkSpec::latency(
            Duration::from_millis(5),
        )),
    );
    let ns = st.netns.clone().expect("namespaces");
    let api = |i: usize| st.nodes[i].api.clone().expect("API");
    let peer = |i: usize| st.nodes[i].peer_id.clone();

    // node-1 announces the forwarded port at its gateway first.
    let want_addr = format!(
        "/ip4/{}/udp/{}/quic-v1/p2p/{}",
        ns.nodes[1].addr,
        lamina_testnet::netns::NAT_MESH_PORT,
        peer(1)
    );
    let own = get(api(1).trim_start_matches("http://"), "/status").json();
    assert_eq!(own["listen"][0], want_addr.as_str(), "{own}");

    // Two symmetric NATs would only meet through the relay; the forwarded port lets
    // node-2 dial node-1 directly, and node-1 sees that connection as direct too.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = (path_of(&api(2), &peer(1)), path_of(&api(1), &peer(2)));
        if got == (Some("direct".into()), Some("direct".into())) {
            break;
        }
        assert!(Instant::now() < deadline, "paths 2->1, 1->2: {got:?}");
        std::thread::sleep(Duration::from_millis(500));
    }

    answers_as_one_process(
        &path,
        &api(2),
        "the answer through the forwarded port is one process's",
    );
    // UPnP's search (multicast, inside the namespaces) found no router to ask.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let upnp = get(api(2).trim_start_matches("http://"), "/status").json()["upnp"].clone();
        if upnp == "no gateway" {
            break;
        }
        assert!(Instant::now() < deadline, "upnp: {upnp}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
