//! What one peer can make the mesh side of a node spend, and what it can make the node
//! believe: gossip budgets, connection limits, departed peers forgotten, and routes on
//! measured speed rather than announced. All in one process, on loopback: mesh handles,
//! bare libp2p swarms as attackers, and session servers of the tiny synthetic model.

use std::time::Duration;

use futures::StreamExt;
use lamina_node::api::Metrics;
use lamina_node::ids::now_ms;
use lamina_node::mesh::behaviour::{build_swarm, BehaviourEvent, SwarmOptions, Sync};
use lamina_node::mesh::probe::{self, ProbeOptions};
use lamina_node::mesh::{MeshHandle, MeshLimits};
use lamina_node::session::ServerOptions;
use lamina_protocol::{
    Announcement, HelloAck, LayerRange, Message, ModelId, NodeState, SessionOpened, StepOutput,
    StepResult, WireDType, WireTensor,
};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{request_response, Multiaddr, PeerId};
use tokio_util::sync::CancellationToken;

use crate::common::hops::{client_dialer, spawn_fake, spawn_hop, tiny_model};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn quic() -> SwarmOptions {
    SwarmOptions {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr")],
        bootstrap: vec![],
        mdns: false,
        ..Default::default()
    }
}

fn record(key: &Keypair, model: ModelId, layers: Option<(u32, u32)>, now: u64) -> Announcement {
    Announcement {
        version: lamina_protocol::ANNOUNCEMENT_VERSION,
        peer_id: key.public().to_peer_id().to_bytes(),
        model_id: model,
        n_layers: 4,
        layers: layers.map(|(a, b)| LayerRange::new(a, b).expect("range")),
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
    }
}

/// A mesh node announcing `template`, listening on loopback, bootstrapped from `boot`.
async fn node(
    key: Keypair,
    template: Announcement,
    boot: Option<Multiaddr>,
    limits: MeshLimits,
    stop: CancellationToken,
) -> MeshHandle {
    let mut opts = quic();
    opts.bootstrap = boot.into_iter().collect();
    let m = MeshHandle::start_with(key, &opts, template, Default::default(), stop, limits)
        .expect("mesh");
    assert!(m.wait_listening(Duration::from_secs(5)).await);
    m.update(|_| {}).await.expect("announce");
    m
}

/// Dials `target` from a bare swarm; its peer id once connected.
async fn attacker(
    target: Multiaddr,
) -> (
    libp2p::Swarm<lamina_node::mesh::behaviour::Behaviour>,
    Keypair,
    PeerId,
) {
    let key = Keypair::generate_ed25519();
    let mut sw = build_swarm(&key, &quic()).expect("swarm");
    sw.dial(target).expect("dial");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, sw.select_next_some())
            .await
            .expect("connects");
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = ev {
            return (sw, key, peer_id);
        }
    }
}

/// A peer that floods fresh records and sync requests: past its budgets they are refused
/// (counted by reason), a record seen before is never verified again, and the node still
/// takes records relayed within budget.
#[test]
fn gossip_floods_are_refused_past_the_senders_budget() {
    rt().block_on(async {
        let model = ModelId::from_bytes([5; 32]);
        let stop = CancellationToken::new();
        let key = Keypair::generate_ed25519();
        let limits = MeshLimits {
            verify_per_sec: 1.0,
            verify_burst: 10.0,
            sync_per_sec: 1.0,
            sync_burst: 3.0,
            ..MeshLimits::default()
        };
        let tpl = record(&key, model, None, 0);
        let victim = node(key, tpl, None, limits, stop.clone()).await;
        let target = victim.listen_addrs()[0].clone();
        let (mut sw, _k, peer) = attacker(target).await;
        let now = now_ms();
        let fresh: Vec<_> = (0..40)
            .map(|_| {
                let k = Keypair::generate_ed25519();
                record(&k, model, Some((0, 4)), now).sign(&k).expect("sign")
            })
            .collect();
        // One message of 40 fresh records, the same message again, then more requests
        // than the sync budget allows.
        for _ in 0..6 {
            sw.behaviour_mut().announce.send_request(
                &peer,
                Sync {
                    records: fresh.clone(),
                },
            );
        }
        let mut answers = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while answers < 6 {
            let ev = tokio::time::timeout_at(deadline, sw.select_next_some())
                .await
                .expect("every request is answered");
            if let SwarmEvent::Behaviour(BehaviourEvent::Announce(
                request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                },
            )) = ev
            {
                answers += 1;
            }
        }
        let ok = victim
            .wait_for(Duration::from_secs(5), |s| {
                s.gossip_refused.get("sync_rate").copied().unwrap_or(0) >= 3
            })
            .await;
        let snap = victim.snapshot();
        assert!(ok, "{:?}", snap.gossip_refused);
        // Ten verifications (the burst) in the first message, none for the copies, a
        // few more as the budget refills (one a second).
        let verified = snap.gossip_verified;
        assert!((10..=15).contains(&verified), "verified {verified}");
        assert!(snap.gossip_refused.get("rate").copied().unwrap_or(0) >= 25);
        let taken = victim
            .live()
            .iter()
            .filter(|(_, a)| a.layers.is_some())
            .count();
        assert_eq!(
            u64::try_from(taken).unwrap(),
            verified,
            "each verified record taken"
        );
        // The counts reach /metrics.
        let m = Metrics::new();
        m.set_mesh(&snap);
        let text = m.encode();
        assert!(
            text.lines()
                .any(|l| l.starts_with("lamina_gossip_refused_total{reason=\"rate\"}")),
            "{text}"
        );
        stop.cancel();
    });
}

/// Inbound connections past the limit are refused and counted; the node keeps the
/// connection it had.
#[test]
fn inbound_connections_past_the_limit_are_refused() {
    rt().block_on(async {
        let model = ModelId::from_bytes([6; 32]);
        let stop = CancellationToken::new();
        let limits = MeshLimits {
            max_inbound: 1,
            ..MeshLimits::default()
        };
        let key = Keypair::generate_ed25519();
        let tpl = record(&key, model, None, 0);
        let victim = node(key, tpl, None, limits, stop.clone()).await;
        let target = victim.listen_addrs()[0].clone();
        let (mut first, _, _) = attacker(target.clone()).await;
        let keep_first = tokio::spawn(async move {
            loop {
                first.select_next_some().await;
            }
        });
        let key2 = Keypair::generate_ed25519();
        let mut second = build_swarm(&key2, &quic()).expect("swarm");
        second.dial(target).expect("dial");
        let drive_second = tokio::spawn(async move {
            loop {
                second.select_next_some().await;
            }
        });
        assert!(
            victim
                .wait_for(Duration::from_secs(10), |s| {
                    s.connections_refused.get("inbound").copied().unwrap_or(0) >= 1
                })
                .await,
            "{:?}",
            victim.snapshot().connections_refused
        );
        // The connection it had is untouched.
        assert_eq!(victim.snapshot().connected, 1);
        keep_first.abort();
        drive_second.abort();
        stop.cancel();
    });
}

/// A peer joins (connects, announces, is pinged) and leaves without a word: once its
/// record expired and the grace passed, nothing of it is left: no RTT, no metric label.
#[test]
fn a_departed_peers_state_and_labels_are_pruned() {
    rt().block_on(async {
        let model = ModelId::from_bytes([7; 32]);
        let limits = MeshLimits {
            departed_grace: Duration::from_millis(500),
            ..MeshLimits::default()
        };
        let stop_a = CancellationToken::new();
        let ka = Keypair::generate_ed25519();
        let a = node(
            ka.clone(),
            record(&ka, model, None, 0),
            None,
            limits,
            stop_a.clone(),
        )
        .await;
        let stop_b = CancellationToken::new();
        let kb = Keypair::generate_ed25519();
        let pb = kb.public().to_peer_id();
        let boot = a.listen_addrs()[0].clone();
        let _b = node(
            kb.clone(),
            record(&kb, model, Some((0, 4)), 0),
            Some(boot),
            limits,
            stop_b.clone(),
        )
        .await;
        assert!(
            a.wait_for(Duration::from_secs(15), |s| s.obs.rtt.contains_key(&pb)
                && s.records.iter().any(|(p, _)| *p == pb))
                .await,
            "b joined and was pinged"
        );
        let metrics = Metrics::new();
        metrics.set_mesh(&a.snapshot());
        let label = format!("lamina_hop_rtt_seconds{{peer=\"{pb}\"}}");
        assert!(metrics.encode().contains(&label));
        // b leaves without a withdrawal (its loop stops, its connections drop).
        stop_b.cancel();
        drop(_b);
        assert!(
            a.wait_for(Duration::from_secs(30), |s| !s.obs.rtt.contains_key(&pb)
                && !s.obs.unreachable.contains(&pb)
                && s.records.iter().all(|(p, _)| *p != pb))
                .await,
            "b's state outlived its record and the grace"
        );
        let snap = a.snapshot();
        eprintln!(
            "gossip at a: {} records received, {} verified",
            snap.gossip_received, snap.gossip_verified
        );
        metrics.set_mesh(&snap);
        assert!(
            !metrics.encode().contains(&pb.to_string()),
            "b's labels are gone"
        );
        stop_a.cancel();
    });
}

/// A hop announcing 10 000x what it serves: routes go through it while its claim is all
/// there is, and to the honest hop once the entry measured both: the liar is demoted, its
/// claim ignored, and /status says so.
#[test]
fn routes_follow_measured_speed_and_an_inflated_claim_is_demoted() {
    rt().block_on(async {
        let (model, id) = tiny_model();
        let stop = CancellationToken::new();
        let honest = spawn_hop(
            &model,
            id,
            LayerRange::new(0, 4).expect("range"),
            ServerOptions::default(),
        );
        // The liar: a data plane that answers everything right, slowly.
        let (liar_hop, liar_key) = spawn_fake(
            LayerRange::new(0, 4).expect("range"),
            Default::default(),
            |mut tx, mut rx| async move {
                while let Ok(Some(m)) = rx.recv().await {
                    let reply = match m {
                        Message::Hello(_) => Message::HelloAck(HelloAck::new("liar", None)),
                        Message::OpenSession(o) => Message::SessionOpened(SessionOpened {
                            session_id: o.session_id,
                        }),
                        Message::Forward(f) => {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            let row = WireTensor::from_f32(&[1, 64], &[0.0; 64], WireDType::F32)
                                .expect("tensor");
                            Message::StepResult(StepResult {
                                session_id: f.session_id,
                                step: f.step,
                                output: StepOutput::Hidden(row),
                                evidence: Vec::new(),
                            })
                        }
                        _ => return,
                    };
                    if tx.send(&reply).await.is_err() {
                        return;
                    }
                }
            },
        );
        let limits = MeshLimits::default();
        let ek = Keypair::generate_ed25519();
        let entry = node(
            ek.clone(),
            record(&ek, id, None, 0),
            None,
            limits,
            stop.clone(),
        )
        .await;
        let boot = entry.listen_addrs()[0].clone();
        let mut tpl = record(&honest.key, id, Some((0, 4)), 0);
        tpl.dataplane_addr = honest.hop.addr.clone();
        tpl.tokens_per_sec = 5.0;
        let _h = node(
            honest.key.clone(),
            tpl,
            Some(boot.clone()),
            limits,
            stop.clone(),
        )
        .await;
        let mut tpl = record(&liar_key, id, Some((0, 4)), 0);
        tpl.dataplane_addr = liar_hop.addr.clone();
        tpl.tokens_per_sec = 500_000.0;
        let _l = node(liar_key.clone(), tpl, Some(boot), limits, stop.clone()).await;
        let (ph, pl) = (honest.hop.peer, liar_hop.peer);
        assert!(
            entry
                .wait_for(Duration::from_secs(15), |s| {
                    let live = s.live(&id, now_ms());
                    [ph, pl]
                        .iter()
                        .all(|h| live.iter().any(|(p, _)| p == h) && s.obs.rtt.contains_key(h))
                })
                .await
        );
        assert_eq!(
            entry.route().expect("route").peers,
            vec![pl],
            "the claim is the prior"
        );

        let mut opts = ProbeOptions::new(64);
        opts.tick = Duration::from_millis(200);
        tokio::spawn(probe::run(
            entry.clone(),
            client_dialer(Default::default()),
            opts,
            stop.child_token(),
        ));
        assert!(
            entry
                .wait_for(Duration::from_secs(60), |s| s.speeds.get(&ph).is_some()
                    && s.speeds.get(&pl).is_some())
                .await,
            "both hops measured"
        );
        let snap = entry.snapshot();
        let liar = snap.speeds.get(&pl).expect("measured");
        eprintln!("measured: honest {:?}, liar {liar:?}", snap.speeds.get(&ph));
        eprintln!(
            "gossip at the entry: {} records received, {} verified",
            snap.gossip_received, snap.gossip_verified
        );
        assert!(liar.demoted, "{liar:?}");
        assert!(liar.tokens_per_sec < 500_000.0 / 4.0, "{liar:?}");
        assert_eq!(entry.route().expect("route").peers, vec![ph], "{snap:?}");
        let st = entry.status();
        let l = st
            .peers
            .iter()
            .find(|p| p.peer_id == pl)
            .expect("liar in status");
        assert!(
            l.demoted && l.routed_tokens_per_sec < 500_000.0 / 4.0,
            "{l:?}"
        );
        stop.cancel();
    });
}
