//! The node's Prometheus metrics (`GET /metrics`).
//!
//! One [`Metrics`] per node, shared by the HTTP API and (through the recording methods)
//! the mesh, so every number an operator scrapes comes from one registry.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InputLabels {
    input: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BoundLabels {
    bound: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KvLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Counters, gauges and histograms of one node.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    generated_tokens: Counter,
    prompt_tokens: Counter,
    active_requests: Gauge,
    cancelled_requests: Counter,
    time_to_first_token: Histogram,
    step_seconds: Histogram,
    recovery_seconds: Histogram,
    hop_rtt: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    /// The peers with an RTT gauge, so departed ones can be dropped.
    rtt_peers: std::sync::Mutex<std::collections::HashSet<String>>,
    sessions_active: Gauge,
    session_inputs: Family<InputLabels, Gauge>,
    /// Forwards the compute queue ran, and the session steps they carried (their ratio
    /// is the mean batch size: continuous batching at work).
    compute_batches: Gauge,
    compute_steps: Gauge,
    /// The node's refusal counters (shared with the session server and the HTTP
    /// layer), copied into `refused` at every scrape.
    refusals: crate::limits::Refusals,
    refused: Family<BoundLabels, Gauge>,
    kv_bytes: Family<KvLabels, Gauge>,
    mesh: MeshMetrics,
    /// Spot-checked steps by result, mirrored from `pipeline::verify::COUNTS`.
    verify_steps: Family<ResultLabels, Counter>,
}

/// The mesh's figures, from its snapshots ([`Metrics::set_mesh`]).
struct MeshMetrics {
    gossip_refused: Family<ReasonLabels, Counter>,
    gossip_verified: Counter,
    gossip_received: Counter,
    p2p_refused: Family<ReasonLabels, Counter>,
    measured_tps: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    demoted: Family<PeerLabels, Gauge>,
    /// The peers with a measured-speed gauge, so departed ones can be dropped.
    measured_peers: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl MeshMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            gossip_refused: Family::default(),
            gossip_verified: Counter::default(),
            gossip_received: Counter::default(),
            p2p_refused: Family::default(),
            measured_tps: Family::default(),
            demoted: Family::default(),
            measured_peers: std::sync::Mutex::default(),
        };
        registry.register(
            "lamina_gossip_refused",
            "Gossiped records and sync requests refused, by reason",
            m.gossip_refused.clone(),
        );
        registry.register(
            "lamina_gossip_verified",
            "Gossiped records verified (each distinct record once)",
            m.gossip_verified.clone(),
        );
        registry.register(
            "lamina_gossip_received",
            "Gossiped records received (every copy from every peer; most cost a hash only)",
            m.gossip_received.clone(),
        );
        registry.register(
            "lamina_p2p_connections_refused",
            "libp2p connections refused for exceeding a limit, by limit",
            m.p2p_refused.clone(),
        );
        registry.register(
            "lamina_peer_measured_tokens_per_sec",
            "A hop's speed as this node measured it (probes)",
            m.measured_tps.clone(),
        );
        registry.register(
            "lamina_peer_demoted",
            "1 when a hop measured far below its announced speed (its claim is ignored)",
            m.demoted.clone(),
        );
        m
    }
}

/// Raises `c` to `total` (a counter mirrored from a running total elsewhere).
fn raise_to(c: &Counter, total: u64) {
    c.inc_by(total.saturating_sub(c.get()));
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "lamina_http_requests",
            "HTTP requests answered, by endpoint and status",
            http_requests.clone(),
        );
        let generated_tokens = Counter::default();
        registry.register(
            "lamina_generated_tokens",
            "Tokens generated for HTTP clients",
            generated_tokens.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "lamina_prompt_tokens",
            "Prompt tokens of generations started for HTTP clients",
            prompt_tokens.clone(),
        );
        let active_requests = Gauge::default();
        registry.register(
            "lamina_active_requests",
            "Generations in progress",
            active_requests.clone(),
        );
        let cancelled_requests = Counter::default();
        registry.register(
            "lamina_cancelled_requests",
            "Generations stopped because the client went away",
            cancelled_requests.clone(),
        );
        // 5 ms .. ~80 s: a tiny model on loopback up to a big one across continents.
        let time_to_first_token = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register(
            "lamina_time_to_first_token_seconds",
            "From the request's arrival to its first token (prefill through the chain)",
            time_to_first_token.clone(),
        );
        // 0.5 ms .. ~8 s per decode step.
        let step_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        registry.register(
            "lamina_step_seconds",
            "One decode step through the whole chain, as the entry node sees it",
            step_seconds.clone(),
        );
        // 10 ms .. ~160 s per failover.
        let recovery_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        registry.register(
            "lamina_failover_recovery_seconds",
            "From a hop's failure to the retried step's answer on the new chain",
            recovery_seconds.clone(),
        );
        let hop_rtt = Family::<PeerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "lamina_hop_rtt_seconds",
            "Last measured round-trip time to a peer",
            hop_rtt.clone(),
        );
        let sessions_active = Gauge::default();
        registry.register(
            "lamina_sessions_active",
            "Sessions this node's session server holds",
            sessions_active.clone(),
        );
        // What this node's hops were fed: token ids tell a hop the text, hidden states do
        // not (an entry with `--private-ends` feeds only those).
        let session_inputs = Family::<InputLabels, Gauge>::default();
        registry.register(
            "lamina_session_steps_by_input",
            "Steps this node's session server ran since start, by the kind of input it was fed",
            session_inputs.clone(),
        );
        let compute_batches = Gauge::default();
        registry.register(
            "lamina_compute_batches",
            "Forwards this node's compute queue ran since start (a lone step counts as one)",
            compute_batches.clone(),
        );
        let compute_steps = Gauge::default();
        registry.register(
            "lamina_compute_batched_steps",
            "Session steps those forwards carried (steps / batches = the mean batch size)",
            compute_steps.clone(),
        );
        let refused = Family::<BoundLabels, Gauge>::default();
        registry.register(
            "lamina_refused",
            "Requests, streams and connections refused since start, by the bound that refused",
            refused.clone(),
        );
        let kv_bytes = Family::<KvLabels, Gauge>::default();
        registry.register(
            "lamina_kv_budget_bytes",
            "The session server's KV budget: bytes reserved by open sessions, and the total",
            kv_bytes.clone(),
        );
        let mesh = MeshMetrics::register(&mut registry);
        let verify_steps = Family::<ResultLabels, Counter>::default();
        registry.register(
            "lamina_verify_steps",
            "Steps this entry spot-checked on other servers, by result",
            verify_steps.clone(),
        );
        Self {
            registry,
            http_requests,
            generated_tokens,
            prompt_tokens,
            active_requests,
            cancelled_requests,
            time_to_first_token,
            step_seconds,
            recovery_seconds,
            hop_rtt,
            rtt_peers: std::sync::Mutex::default(),
            sessions_active,
            session_inputs,
            compute_batches,
            compute_steps,
            refusals: crate::limits::Refusals::default(),
            refused,
            kv_bytes,
            mesh,
            verify_steps,
        }
    }

    /// Counts one answered HTTP request.
    pub fn record_request(&self, endpoint: &str, status: u16) {
        self.http_requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                status,
            })
            .inc();
    }

    pub fn add_prompt_tokens(&self, n: u64) {
        self.prompt_tokens.inc_by(n);
    }

    pub fn add_generated_tokens(&self, n: u64) {
        self.generated_tokens.inc_by(n);
    }

    /// Marks one generation as running until the guard drops, so a panic or a cancelled
    /// stream cannot leave the gauge high.
    pub fn active_request(self: &std::sync::Arc<Self>) -> ActiveGuard {
        self.active_requests.inc();
        ActiveGuard(self.clone())
    }

    pub fn active_requests(&self) -> i64 {
        self.active_requests.get()
    }

    /// One failover of a generation in flight, and how long it took.
    pub fn observe_recovery(&self, secs: f64) {
        self.recovery_seconds.observe(secs);
    }

    pub fn record_cancelled(&self) {
        self.cancelled_requests.inc();
    }

    pub fn cancelled_requests(&self) -> u64 {
        self.cancelled_requests.get()
    }

    pub fn generated_tokens(&self) -> u64 {
        self.generated_tokens.get()
    }

    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_tokens.get()
    }

    pub fn observe_time_to_first_token(&self, secs: f64) {
        self.time_to_first_token.observe(secs);
    }

    pub fn observe_step(&self, secs: f64) {
        self.step_seconds.observe(secs);
    }

    /// The mesh calls this after each ping of a peer.
    pub fn set_hop_rtt(&self, peer: &str, secs: f64) {
        self.rtt_peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(peer.to_owned());
        self.hop_rtt
            .get_or_create(&PeerLabels {
                peer: peer.to_owned(),
            })
            .set(secs);
    }

    /// Drops the RTT gauges of peers for which `keep` says no (they left the mesh).
    pub fn retain_hop_rtts(&self, keep: impl Fn(&str) -> bool) {
        let mut peers = self
            .rtt_peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        peers.retain(|p| {
            let k = keep(p);
            if !k {
                self.hop_rtt.remove(&PeerLabels { peer: p.clone() });
            }
            k
        });
    }

    /// Follows the mesh: refusals, verifications, RTTs and measured speeds of the peers it
    /// knows. A peer the mesh forgot (departed) loses its labels here.
    pub fn set_mesh(&self, snap: &crate::mesh::MeshSnapshot) {
        let mm = &self.mesh;
        for (reason, n) in &snap.gossip_refused {
            raise_to(
                &mm.gossip_refused.get_or_create(&ReasonLabels { reason }),
                *n,
            );
        }
        for (reason, n) in &snap.connections_refused {
            raise_to(&mm.p2p_refused.get_or_create(&ReasonLabels { reason }), *n);
        }
        raise_to(&mm.gossip_verified, snap.gossip_verified);
        raise_to(&mm.gossip_received, snap.gossip_received);
        let rtts: std::collections::HashSet<String> =
            snap.obs.rtt.keys().map(ToString::to_string).collect();
        self.retain_hop_rtts(|peer| rtts.contains(peer));
        for (peer, rtt) in &snap.obs.rtt {
            self.set_hop_rtt(&peer.to_string(), rtt.as_secs_f64());
        }
        let measured: Vec<(String, f64, bool)> = snap
            .speeds
            .peers()
            .filter_map(|p| {
                let m = snap.speeds.get(&p)?;
                Some((p.to_string(), m.tokens_per_sec, m.demoted))
            })
            .collect();
        let mut peers = mm
            .measured_peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        peers.retain(|p| {
            let keep = measured.iter().any(|(q, _, _)| q == p);
            if !keep {
                let l = PeerLabels { peer: p.clone() };
                mm.measured_tps.remove(&l);
                mm.demoted.remove(&l);
            }
            keep
        });
        for (peer, tps, demoted) in measured {
            let l = PeerLabels { peer: peer.clone() };
            mm.measured_tps.get_or_create(&l).set(tps);
            mm.demoted.get_or_create(&l).set(i64::from(demoted));
            peers.insert(peer);
        }
    }

    /// The session server's count, set by whoever owns it.
    pub fn set_sessions_active(&self, n: i64) {
        self.sessions_active.set(n);
    }

    /// The session server's steps by input (token ids, hidden states), set by its owner.
    pub fn set_session_inputs(&self, tokens: u64, hidden: u64) {
        for (input, n) in [("tokens", tokens), ("hidden", hidden)] {
            self.session_inputs
                .get_or_create(&InputLabels { input })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// How the compute queue batched: forwards run and the steps they carried.
    pub fn set_compute_batches(&self, batches: u64, steps: u64) {
        self.compute_batches
            .set(i64::try_from(batches).unwrap_or(i64::MAX));
        self.compute_steps
            .set(i64::try_from(steps).unwrap_or(i64::MAX));
    }

    /// The node's refusal counters: whoever refuses something counts it here.
    pub fn refusals(&self) -> &crate::limits::Refusals {
        &self.refusals
    }

    /// The session server's KV budget: bytes held by open sessions, and the total.
    pub fn set_kv_budget(&self, used: u64, total: u64) {
        for (state, n) in [("used", used), ("total", total)] {
            self.kv_bytes
                .get_or_create(&KvLabels { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Everything in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        for (bound, n) in self.refusals.snapshot() {
            self.refused
                .get_or_create(&BoundLabels {
                    bound: bound.label(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        for (result, n) in crate::pipeline::verify::COUNTS.snapshot() {
            let c = self.verify_steps.get_or_create(&ResultLabels { result });
            c.inc_by(n.saturating_sub(c.get()));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Holds `lamina_active_requests` up while alive.
pub struct ActiveGuard(std::sync::Arc<Metrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_requests.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn text_format_has_every_metric_with_labels() {
        let m = Arc::new(Metrics::new());
        m.record_request("/v1/completions", 200);
        m.record_request("/v1/completions", 200);
        m.add_generated_tokens(5);
        m.add_prompt_tokens(3);
        m.observe_time_to_first_token(0.02);
        m.observe_step(0.001);
        m.set_hop_rtt("peer-a", 0.25);
        m.set_sessions_active(2);
        m.set_session_inputs(3, 9);
        m.set_compute_batches(4, 10);
        let g = m.active_request();
        let text = m.encode();
        drop(g);
        for line in [
            "lamina_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2",
            "lamina_generated_tokens_total 5",
            "lamina_prompt_tokens_total 3",
            "lamina_active_requests 1",
            "lamina_time_to_first_token_seconds_count 1",
            "lamina_step_seconds_count 1",
            "lamina_hop_rtt_seconds{peer=\"peer-a\"} 0.25",
            "lamina_sessions_active 2",
            "lamina_session_steps_by_input{input=\"tokens\"} 3",
            "lamina_session_steps_by_input{input=\"hidden\"} 9",
            "lamina_compute_batches 4",
            "lamina_compute_batched_steps 10",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        assert_eq!(m.active_requests(), 0);
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn mesh_figures_follow_the_snapshot_and_departed_peers_lose_their_labels() {
        let m = Metrics::new();
        let peer = libp2p::PeerId::random();
        let mut snap = crate::mesh::MeshSnapshot::default();
        snap.speeds.record(peer, 10.0, 1000.0, 0);
        snap.obs
            .rtt
            .insert(peer, std::time::Duration::from_millis(2));
        snap.gossip_refused.insert("rate", 3);
        snap.connections_refused.insert("inbound", 1);
        snap.gossip_verified = 7;
        m.set_mesh(&snap);
        let text = m.encode();
        for line in [
            format!("lamina_peer_measured_tokens_per_sec{{peer=\"{peer}\"}} 10.0"),
            format!("lamina_peer_demoted{{peer=\"{peer}\"}} 1"),
            format!("lamina_hop_rtt_seconds{{peer=\"{peer}\"}} 0.002"),
            "lamina_gossip_refused_total{reason=\"rate\"} 3".to_string(),
            "lamina_p2p_connections_refused_total{reason=\"inbound\"} 1".to_string(),
            "lamina_gossip_verified_total 7".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        // Counters only grow: a later snapshot's totals raise them, never lower them.
        snap.gossip_refused.insert("rate", 5);
        snap.speeds.forget(&peer);
        snap.obs.rtt.clear();
        m.set_mesh(&snap);
        let text = m.encode();
        assert!(text.contains("lamina_gossip_refused_total{reason=\"rate\"} 5"));
        assert!(!text.contains(&peer.to_string()), "{text}");
    }
}
