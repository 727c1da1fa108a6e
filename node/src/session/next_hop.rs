//! A hop's client to its next hop: opening the session there, forwarding each step's
//! hidden states, and closing. Every way the next hop can fail becomes this hop's own
//! signed report blaming it (`Fault::NextHop`), except an error the next hop answered
//! with a report that verifies, which is relayed as it is.
//!
//! Deadlines scale with the depth below (see `pipeline::deadline`): when a hop further
//! down dies, the hop just above it gives up first and is the one that names it.

use std::time::Duration;

use lamina_protocol::{
    check_chain, Close, Digest, ErrorMessage, ExpectedHop, Forward, Hello, HopAddr, LayerRange,
    LinkFailure, Message, OpenSession, SessionId, StepProduct,
};
use libp2p::PeerId;

use super::reporter::Reporter;
use crate::dataplane::{Dialer, FramedRecv, FramedSend};
use crate::pipeline::deadline::downstream_deadline;
use crate::pipeline::recv::{recv_answer, verified_report};
use crate::pipeline::OPEN_HOP_FLOOR;

/// This hop as its reports name it: who signs, which session, which layers.
#[derive(Clone)]
pub struct Upstream {
    pub reporter: Reporter,
    pub session_id: SessionId,
    pub layers: LayerRange,
}

impl Upstream {
    fn blame(&self, hop: &HopAddr, link: LinkFailure, what: &str) -> NextHopFailure {
        NextHopFailure {
            reply: self.reporter.next_hop(
                self.session_id,
                self.layers,
                link,
                format!("next hop {} ({}): {what}", hop.addr, hop.layers),
            ),
            broken: true,
        }
    }
}

/// Why the next hop did not do what was asked, and the reply that says so upstream.
pub struct NextHopFailure {
    pub reply: ErrorMessage,
    /// The stream or connection failed (or the hop answered nonsense), so the pooled
    /// connection is suspect. `false` when the hop answered with a typed error: the
    /// connection works, and closing it would cut off every other session on it (a
    /// draining hop refuses new sessions while it finishes those).
    pub broken: bool,
}

/// The session's link to its next hop.
pub struct NextHop {
    /// The slowest one-row step the next hop has answered so far: its deadline's base.
    slowest: Option<Duration>,
    /// Hops from the next hop to the end of the chain (1: the next hop is the last).
    depth: u32,
    hop: HopAddr,
    /// The peers below this hop, whose reports it relays.
    below: Vec<PeerId>,
    /// The chain below, whose step records it checks before it relays a result.
    below_hops: Vec<ExpectedHop>,
    me: Upstream,
    tx: FramedSend,
    rx: FramedRecv,
}

impl NextHop {
    /// Opens `open` (the session for the next hop) on `hop`, bounded by
    /// [`OPEN_HOP_FLOOR`] per hop from it to the end.
    pub async fn open(
        dialer: &Dialer,
        me: Upstream,
        node_name: &str,
        hop: &HopAddr,
        open: OpenSession,
    ) -> Result<Self, NextHopFailure> {
        let below_hops: Vec<ExpectedHop> = std::iter::once(hop)
            .chain(open.next_hops.iter())
            .filter_map(|h| {
                Some(ExpectedHop {
                    peer: h.peer()?,
                    layers: h.layers,
                })
            })
            .collect();
        let below: Vec<PeerId> = below_hops.iter().map(|h| h.peer).collect();
        let depth = u32::try_from(open.next_hops.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let bound = OPEN_HOP_FLOOR * depth;
        let t0 = tokio::time::Instant::now();
        let left = || {
            bound
                .saturating_sub(t0.elapsed())
                .max(Duration::from_millis(1))
        };
        let Some(peer) = hop.peer() else {
            return Err(me.blame(hop, LinkFailure::Connect, "the hop has no valid peer id"));
        };
        let (mut tx, rx) = tokio::time::timeout(left(), dialer.open_stream(&hop.addr, peer))
            .await
            .map_err(|_| {
                me.blame(
                    hop,
                    LinkFailure::Connect,
                    &format!("no connection within {bound:?}"),
                )
            })?
            .map_err(|e| me.blame(hop, LinkFailure::Connect, &e.to_string()))?;
        let hello = Message::Hello(
            Hello::new(open.model_id, node_name.to_owned()).with_member(dialer.member().cloned()),
        );
        for m in [hello, Message::OpenSession(open)] {
            tx.send(&m)
                .await
                .map_err(|e| me.blame(hop, LinkFailure::Stream, &e.to_string()))?;
        }
        let mut link = Self {
            slowest: None,
            depth,
            hop: hop.clone(),
            below,
            below_hops,
            me,
            tx,
            rx,
        };
        for expect in ["HelloAck", "SessionOpened"] {
            let silence = left();
            match recv_answer(&mut link.rx, silence, silence).await {
                Ok(Message::HelloAck(_)) if expect == "HelloAck" => {}
                Ok(Message::SessionOpened(_)) if expect == "SessionOpened" => {}
                Ok(Message::Error(e)) => return Err(link.relay(e)),
                Ok(m) => {
                    let what = format!("answered the open with {}", m.kind());
                    return Err(link.me.blame(&link.hop, LinkFailure::BadReply, &what));
                }
                Err(e) => return Err(link.me.blame(&link.hop, e.link(), &e.to_string())),
            }
        }
        Ok(link)
    }

    /// Where the next hop is (to evict its pooled connection after a failure).
    pub fn hop(&self) -> &HopAddr {
        &self.hop
    }

    /// An error the next hop answered: relayed as it is when its report verifies (the
    /// connection is fine), else this hop's own report that the next hop misbehaved.
    fn relay(&self, e: ErrorMessage) -> NextHopFailure {
        if verified_report(&e, self.me.session_id, &self.below).is_some() {
            let mut e = e;
            // The text is for people; the report says who failed.
            e.message = format!("{}: {}", self.hop.addr, e.message);
            e.message.truncate(lamina_protocol::MAX_ERROR_MESSAGE_BYTES);
            return NextHopFailure {
                reply: e,
                broken: false,
            };
        }
        self.me.blame(
            &self.hop,
            LinkFailure::BadReply,
            &format!("answered {} without a valid failure report", e.code),
        )
    }

    /// Sends step `f` down and waits for its answer, within a deadline from what the next
    /// hop has shown it needs (tighter than every deadline above: see
    /// [`downstream_deadline`]) and `cap` in all. `sent` is the digest of `f`'s input: the
    /// step records of the answer must chain up from it (else the next hop is blamed).
    pub async fn forward(
        &mut self,
        f: Forward,
        sent: Digest,
        cap: Duration,
    ) -> Result<Message, NextHopFailure> {
        let (rows, session_id, step) = (f.rows(), f.session_id, f.step);
        let silence = downstream_deadline(self.slowest, rows, self.depth).min(cap);
        let t0 = std::time::Instant::now();
        if let Err(e) = self.tx.send(&Message::Forward(f)).await {
            return Err(self
                .me
                .blame(&self.hop, LinkFailure::Stream, &e.to_string()));
        }
        match recv_answer(&mut self.rx, silence, cap).await {
            Ok(Message::StepResult(r)) if r.session_id == session_id && r.step == step => {
                if rows == 1 {
                    let took = t0.elapsed();
                    self.slowest = Some(self.slowest.map_or(took, |s| s.max(took)));
                }
                let answered = StepProduct::of(&r.output);
                if let Err(e) = check_chain(
                    &r.evidence,
                    &self.below_hops,
                    session_id,
                    step,
                    sent,
                    answered,
                ) {
                    let what = format!("answered with step records that do not hold: {e}");
                    return Err(self.me.blame(&self.hop, LinkFailure::BadReply, &what));
                }
                Ok(Message::StepResult(r))
            }
            Ok(Message::Error(e)) => Err(self.relay(e)),
            Ok(m) => {
                let what = format!("answered Forward with {}", m.kind());
                Err(self.me.blame(&self.hop, LinkFailure::BadReply, &what))
            }
            Err(e) => Err(self.me.blame(&self.hop, e.link(), &e.to_string())),
        }
    }

    /// Closes the session on the next hop (waiting briefly for its `Closed`).
    pub async fn close(&mut self, t: Duration) {
        let close = Message::Close(Close {
            session_id: self.me.session_id,
        });
        if self.tx.send(&close).await.is_ok() {
            let t = t.min(Duration::from_secs(5));
            let _ = recv_answer(&mut self.rx, t, t).await;
        }
        self.tx.finish();
    }

    /// Sends `Close` without waiting, and ends the stream (the session is going away).
    pub async fn abandon(&mut self, send_close: bool) {
        if send_close {
            let close = Message::Close(Close {
                session_id: self.me.session_id,
            });
            let _ = self.tx.send(&close).await;
        }
        self.tx.finish();
    }
}
