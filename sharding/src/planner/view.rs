//! The mesh as the planners see it: the live servers of one model.
//!
//! Announcements arrive from the network, so every field is untrusted. Filtering happens
//! once, here, so that coverage, placement and routing can rely on what they read: a range
//! inside the model, a positive finite throughput, a record that has not expired.

use std::fmt;
use std::time::Duration;

use crate::layers::LayerRange;

/// A peer as the planners name it: an opaque string (the node uses the libp2p `PeerId`'s
/// text), so this crate needs no libp2p and tests can say `"a"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub String);

impl ServerId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ServerId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for ServerId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// One server's announcement, plus what the planning node measured about it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerRecord {
    pub id: ServerId,
    /// The model this record serves (the model id's text); other models are ignored.
    pub model: String,
    /// The layers it hosts, half-open.
    pub layers: LayerRange,
    /// Decode tokens per second for one sequence through the whole of `layers`.
    pub tokens_per_sec: f64,
    /// Sessions it can still open.
    pub free_slots: u32,
    /// The record is live while `now_ms < expires_at_ms`.
    pub expires_at_ms: u64,
    /// Round-trip time from the planning node, if it has pinged this server.
    pub rtt: Option<Duration>,
}

impl ServerRecord {
    /// Seconds to run one layer for one token, from the range's throughput (see the module
    /// doc of [`crate::planner`] for why layers are taken to cost the same).
    pub fn secs_per_layer(&self) -> f64 {
        1.0 / (self.tokens_per_sec * self.layers.len() as f64)
    }

    /// The RTT to use as this server's hop cost, in seconds.
    pub fn rtt_secs(&self, default_rtt: Duration) -> f64 {
        self.rtt.unwrap_or(default_rtt).as_secs_f64()
    }
}

/// Why a record of the right model was left out of the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Its expiry instant has passed.
    Expired,
    /// Its range is empty or reaches past the model's last layer.
    RangeOutOfBounds,
    /// Its throughput is zero, negative, infinite, NaN or so small that a layer would take
    /// forever: no finite cost can be derived from it.
    BadThroughput,
    /// Another live record of the same peer expires later, so it is the fresher one.
    Superseded,
}

/// The live servers of one model at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshView {
    n_layers: usize,
    servers: Vec<ServerRecord>,
    rejected: Vec<(ServerId, Rejection)>,
}

impl MeshView {
    /// Keeps the records of `model` that are live at `now_ms` and well-formed for a model
    /// of `n_layers` layers; when one peer has several, the one expiring last wins (a
    /// refresh supersedes the record it replaces). Servers are kept sorted by id so that
    /// every plan is independent of the order announcements arrived in.
    pub fn new(
        model: &str,
        n_layers: usize,
        now_ms: u64,
        records: impl IntoIterator<Item = ServerRecord>,
    ) -> Self {
        let mut servers: Vec<ServerRecord> = Vec::new();
        let mut rejected = Vec::new();
        for r in records.into_iter().filter(|r| r.model == model) {
            match check(&r, n_layers, now_ms) {
                Some(why) => rejected.push((r.id, why)),
                None => servers.push(r),
            }
        }
        servers.sort_by(|a, b| a.id.cmp(&b.id).then(b.expires_at_ms.cmp(&a.expires_at_ms)));
        let mut kept: Vec<ServerRecord> = Vec::with_capacity(servers.len());
        for r in servers {
            match kept.last() {
                Some(prev) if prev.id == r.id => rejected.push((r.id, Rejection::Superseded)),
                _ => kept.push(r),
            }
        }
        Self {
            n_layers,
            servers: kept,
            rejected,
        }
    }

    /// The model's layer count, `L` in `0..L`.
    pub fn n_layers(&self) -> usize {
        self.n_layers
    }

    /// The live servers, sorted by id.
    pub fn servers(&self) -> &[ServerRecord] {
        &self.servers
    }

    /// Records that were left out and why, for `/status` and logs.
    pub fn rejected(&self) -> &[(ServerId, Rejection)] {
        &self.rejected
    }

    pub fn get(&self, id: &ServerId) -> Option<&ServerRecord> {
        self.servers.iter().find(|s| &s.id == id)
    }

    /// The same view without one peer: a node planning its own placement must not count
    /// its own announcement as coverage it could add to.
    pub fn without(&self, id: &ServerId) -> Self {
        Self {
            n_layers: self.n_layers,
            servers: self
                .servers
                .iter()
                .filter(|s| &s.id != id)
                .cloned()
                .collect(),
            rejected: self.rejected.clone(),
        }
    }
}

fn check(r: &ServerRecord, n_layers: usize, now_ms: u64) -> Option<Rejection> {
    if now_ms >= r.expires_at_ms {
        Some(Rejection::Expired)
    } else if !r.layers.fits(n_layers) {
        Some(Rejection::RangeOutOfBounds)
    } else if !(r.tokens_per_sec.is_finite()
        && r.tokens_per_sec > 0.0
        && r.secs_per_layer().is_finite())
    {
        Some(Rejection::BadThroughput)
    } else {
        None
    }
}
