//! Typed failures of a chain, and the blame rules the entry applies to them. Pure: the
//! rules take the chain and the failure, and say whom to ban, whom to avoid, or that
//! nobody can be named.
//!
//! Blame rests on two kinds of facts and nothing else:
//! - what the entry observed itself: it could not reach its first hop, the first hop's
//!   stream failed or carried bytes that are no valid reply, or nothing came back within
//!   the entry's deadline;
//! - the signed [`FailureReport`](lamina_protocol::FailureReport) an error reply carries:
//!   which hop says it failed, for which session and layers, and whether the fault is its
//!   own or its next hop's. Each hop verifies the report it relays from below (and puts
//!   its own report, blaming its next hop, in place of one that does not verify), so a
//!   report the entry cannot verify was made by the first hop.
//!
//! Text in an error reply is for people and logs. A peer controls it, so it never decides
//! who is blamed (see the `blame_ignores_text` test and `node/tests/churn_harness.rs`).
//!
//! What a report can still claim falsely: a hop can accuse its *direct* next hop. The rule
//! below believes it (otherwise every honest report of a dead hop would be doubted); the
//! accusation cannot reach further than one hop, and the trust issue's spot checks are
//! where a hop that accuses honest neighbours gets caught.

use std::fmt;

use lamina_protocol::{CodeClass, ErrorCode, Fault, LayerRange, LinkFailure};
use libp2p::PeerId;

/// A hop of the chain a session runs on, as the entry planned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    pub peer: PeerId,
    pub layers: LayerRange,
}

/// A failure report whose signature, signer and session the receiver checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    pub reporter: PeerId,
    pub layers: LayerRange,
    pub code: ErrorCode,
    pub fault: Fault,
}

/// What went wrong with one open or step of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Seen by the entry on its own link to the first hop: it could not connect, the
    /// stream failed, or the bytes were no valid reply.
    FirstHop(LinkFailure),
    /// Nothing came back within the entry's deadline (any hop may have stalled).
    Deadline,
    /// An error reply; `report` is its verified report, `None` when it carried none that
    /// verifies (then it is the first hop's own).
    Reply {
        code: ErrorCode,
        report: Option<Box<Report>>,
    },
    /// The chain answered a token outside the vocabulary, or another answer no honest
    /// chain gives, and which hop changed it cannot be told.
    BadAnswer,
    /// A hop's own signed step record (checked by the entry) shows it misbehaved: the
    /// peer is named by its signature, not by anyone's say-so.
    Proven { peer: PeerId, misdeed: Misdeed },
}

/// What a hop's signed step record proves it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misdeed {
    /// As the last hop, it drew a token outside the vocabulary.
    TokenOutOfRange,
    /// Its signed output for an input differs from what other servers of the same layers
    /// computed for that input and history (spot-check verification, bit-exact in f32).
    WrongOutput,
}

/// What the entry does about a [`Failure`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Another chain would fail the same way (the request itself is refused): give up.
    Fatal,
    /// Plan a new chain without `avoid` (and `ban`); ban `ban` for a while.
    Reroute {
        ban: Option<PeerId>,
        avoid: Vec<PeerId>,
    },
    /// Nobody can be named from the facts at hand: wait (bounded) for the mesh to see
    /// which peer stopped answering, then hold the first hop to account.
    Unattributed,
}

impl Verdict {
    fn ban(peer: PeerId) -> Self {
        Verdict::Reroute {
            ban: Some(peer),
            avoid: vec![peer],
        }
    }

    fn avoid(peers: Vec<PeerId>) -> Self {
        Verdict::Reroute {
            ban: None,
            avoid: peers,
        }
    }
}

/// Applies the blame rules to `failure` of a session on `chain`.
pub fn judge(chain: &[Hop], failure: &Failure) -> Verdict {
    let Some(first) = chain.first() else {
        return Verdict::Fatal;
    };
    match failure {
        Failure::FirstHop(_) => Verdict::ban(first.peer),
        Failure::Deadline => Verdict::Unattributed,
        Failure::BadAnswer => Verdict::avoid(chain.iter().map(|h| h.peer).collect()),
        // The entry verified the peer's own signature over what it did: it needs no
        // chain position (a spot check's culprit may be on another chain).
        Failure::Proven { peer, .. } => Verdict::ban(*peer),
        Failure::Reply { code, report: None } => match code.class() {
            CodeClass::Refusal => Verdict::avoid(vec![first.peer]),
            CodeClass::Request => Verdict::Fatal,
            CodeClass::Failure => Verdict::ban(first.peer),
        },
        Failure::Reply {
            report: Some(r), ..
        } => judge_report(chain, r),
    }
}

fn judge_report(chain: &[Hop], r: &Report) -> Verdict {
    let Some(i) = chain.iter().position(|h| h.peer == r.reporter) else {
        // Not a hop of this chain: the first hop passed on a report it should have
        // refused, or made it up.
        return Verdict::ban(chain[0].peer);
    };
    if chain[i].layers != r.layers {
        // A signed statement about layers the reporter does not run for this session.
        return Verdict::ban(r.reporter);
    }
    match r.fault {
        Fault::NextHop(_) => match chain.get(i + 1) {
            Some(next) => Verdict::ban(next.peer),
            // The last hop has no next hop to blame.
            None => Verdict::ban(r.reporter),
        },
        Fault::Own => match r.code.class() {
            CodeClass::Refusal => Verdict::avoid(vec![r.reporter]),
            CodeClass::Failure => Verdict::ban(r.reporter),
            CodeClass::Request if i == 0 => Verdict::Fatal,
            // The entry sent a valid request; that it broke a rule by the time it
            // reached hop i means hop i-1 altered it, or hop i says so falsely.
            CodeClass::Request => Verdict::avoid(vec![chain[i - 1].peer, r.reporter]),
        },
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::FirstHop(l) => write!(f, "the first hop's link failed ({l:?})"),
            Failure::Deadline => f.write_str("no answer within the deadline"),
            Failure::BadAnswer => f.write_str("the chain gave an answer no honest chain gives"),
            Failure::Proven { peer, misdeed } => match misdeed {
                Misdeed::TokenOutOfRange => {
                    write!(f, "hop {peer} signed a token outside the vocabulary")
                }
                Misdeed::WrongOutput => {
                    write!(f, "hop {peer} signed an output other servers contradict")
                }
            },
            Failure::Reply { code, report: None } => {
                write!(f, "the first hop answered {code} (no failure report)")
            }
            Failure::Reply {
                code,
                report: Some(r),
            } => match r.fault {
                Fault::Own => write!(f, "hop {} ({}) answered {code}", r.reporter, r.layers),
                Fault::NextHop(l) => write!(
                    f,
                    "hop {} ({}) reports its next hop failed ({l:?})",
                    r.reporter, r.layers
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<Hop> {
        (0..n)
            .map(|i| Hop {
                peer: PeerId::random(),
                layers: LayerRange::new(i as u32 * 10, i as u32 * 10 + 10).unwrap(),
            })
            .collect()
    }

    fn reply(c: &[Hop], i: usize, code: ErrorCode, fault: Fault) -> Failure {
        Failure::Reply {
            code,
            report: Some(Box::new(Report {
                reporter: c[i].peer,
                layers: c[i].layers,
                code,
                fault,
            })),
        }
    }

    #[test]
    fn a_hop_reporting_its_dead_next_hop_blames_that_hop_not_itself() {
        let c = chain(3);
        for link in [
            LinkFailure::Connect,
            LinkFailure::Stream,
            LinkFailure::Deadline,
            LinkFailure::BadReply,
        ] {
            let f = reply(&c, 1, ErrorCode::NextHopFailed, Fault::NextHop(link));
            assert_eq!(judge(&c, &f), Verdict::ban(c[2].peer), "{link:?}");
        }
        // The last hop has no next hop: its accusation falls on itself.
        let f = reply(
            &c,
            2,
            ErrorCode::NextHopFailed,
            Fault::NextHop(LinkFailure::Stream),
        );
        assert_eq!(judge(&c, &f), Verdict::ban(c[2].peer));
    }

    #[test]
    fn refusals_ban_no_one() {
        let c = chain(3);
        for code in [
            ErrorCode::ShuttingDown,
            ErrorCode::SessionLimit,
            ErrorCode::Busy,
            ErrorCode::LayerMismatch,
        ] {
            let f = reply(&c, 1, code, Fault::Own);
            assert_eq!(judge(&c, &f), Verdict::avoid(vec![c[1].peer]), "{code}");
            let unsigned = Failure::Reply { code, report: None };
            assert_eq!(judge(&c, &unsigned), Verdict::avoid(vec![c[0].peer]));
        }
    }

    #[test]
    fn own_failures_and_observed_links_blame_the_hop_that_failed() {
        let c = chain(3);
        let f = reply(&c, 2, ErrorCode::Internal, Fault::Own);
        assert_eq!(judge(&c, &f), Verdict::ban(c[2].peer));
        assert_eq!(
            judge(&c, &Failure::FirstHop(LinkFailure::Stream)),
            Verdict::ban(c[0].peer)
        );
        assert_eq!(
            judge(
                &c,
                &Failure::Reply {
                    code: ErrorCode::Internal,
                    report: None
                }
            ),
            Verdict::ban(c[0].peer)
        );
        assert_eq!(judge(&c, &Failure::Deadline), Verdict::Unattributed);
    }

    #[test]
    fn requests_refused_at_the_first_hop_are_fatal_deeper_they_avoid_both_neighbours() {
        let c = chain(3);
        let f = reply(&c, 0, ErrorCode::ContextOverflow, Fault::Own);
        assert_eq!(judge(&c, &f), Verdict::Fatal);
        let f = reply(&c, 2, ErrorCode::BadTensor, Fault::Own);
        assert_eq!(judge(&c, &f), Verdict::avoid(vec![c[1].peer, c[2].peer]));
        let f = Failure::Reply {
            code: ErrorCode::InvalidMessage,
            report: None,
        };
        assert_eq!(judge(&c, &f), Verdict::Fatal);
    }

    #[test]
    fn reports_from_outside_the_chain_or_about_other_layers_count_against_their_source() {
        let c = chain(3);
        let stranger = Report {
            reporter: PeerId::random(),
            layers: c[1].layers,
            code: ErrorCode::Internal,
            fault: Fault::Own,
        };
        let f = Failure::Reply {
            code: ErrorCode::Internal,
            report: Some(Box::new(stranger)),
        };
        assert_eq!(judge(&c, &f), Verdict::ban(c[0].peer));
        let mut lying = Report {
            reporter: c[1].peer,
            layers: c[2].layers,
            code: ErrorCode::NextHopFailed,
            fault: Fault::NextHop(LinkFailure::Stream),
        };
        let f = Failure::Reply {
            code: lying.code,
            report: Some(Box::new(lying)),
        };
        assert_eq!(judge(&c, &f), Verdict::ban(c[1].peer));
        lying.layers = c[1].layers;
        let f = Failure::Reply {
            code: lying.code,
            report: Some(Box::new(lying)),
        };
        assert_eq!(judge(&c, &f), Verdict::ban(c[2].peer));
    }

    /// The verdict is a function of typed facts only: the same failure with any text
    /// (naming any peer) gets the same verdict, because the text is not an input.
    #[test]
    fn blame_ignores_text() {
        let c = chain(3);
        let f = Failure::Reply {
            code: ErrorCode::Internal,
            report: None,
        };
        // There is no way to hand `judge` the message text: the first hop is blamed for
        // its own unsigned error whatever it wrote about `c[2]`.
        assert_eq!(judge(&c, &f), Verdict::ban(c[0].peer));
        assert_eq!(
            judge(&c, &Failure::BadAnswer),
            Verdict::avoid(c.iter().map(|h| h.peer).collect())
        );
    }

    #[test]
    fn a_proven_misdeed_bans_exactly_its_signer() {
        let c = chain(3);
        for misdeed in [Misdeed::TokenOutOfRange, Misdeed::WrongOutput] {
            let f = Failure::Proven {
                peer: c[2].peer,
                misdeed,
            };
            assert_eq!(judge(&c, &f), Verdict::ban(c[2].peer));
        }
        let stranger = PeerId::random();
        let f = Failure::Proven {
            peer: stranger,
            misdeed: Misdeed::WrongOutput,
        };
        assert_eq!(judge(&c, &f), Verdict::ban(stranger));
    }
}
