//! The hop's signed failure reports: every error this hop sends about a session carries
//! a report signed with its libp2p key, saying whose fault it is (its own, or its next
//! hop's), so the entry can blame on typed facts that no relaying hop can forge.

use lamina_protocol::{
    Digest, ErrorCode, ErrorMessage, FailureReport, Fault, LayerRange, LinkFailure, Message,
    SessionId, StepProduct, StepRecord,
};
use libp2p::identity::Keypair;
use libp2p::PeerId;

/// Signs this hop's failure reports.
#[derive(Clone)]
pub struct Reporter {
    key: Keypair,
    peer: PeerId,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("peer", &self.peer)
            .finish()
    }
}

impl Reporter {
    /// Reports signed with `key` (the node's libp2p identity).
    pub fn new(key: Keypair) -> Self {
        let peer = key.public().to_peer_id();
        Self { key, peer }
    }

    /// The peer id reports name.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// An error reply, signed when the session is known (errors before `OpenSession`, such
    /// as a wrong model at `Hello`, have no session to bind a report to, and go unsigned:
    /// the hop above then reports its next hop as failed).
    pub fn error(
        &self,
        session: Option<SessionId>,
        layers: LayerRange,
        code: ErrorCode,
        fault: Fault,
        message: impl Into<String>,
    ) -> ErrorMessage {
        let e = ErrorMessage::new(code, message);
        let Some(session_id) = session else {
            return e;
        };
        let report = FailureReport {
            reporter: self.peer.to_bytes(),
            session_id,
            layers,
            code,
            fault,
        };
        match report.sign(&self.key) {
            Ok(r) => e.with_report(r),
            Err(err) => {
                tracing::warn!("cannot sign a failure report: {err}");
                e
            }
        }
    }

    /// This hop's own failure or refusal.
    pub fn own(
        &self,
        session: Option<SessionId>,
        layers: LayerRange,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> ErrorMessage {
        self.error(session, layers, code, Fault::Own, message)
    }

    /// The next hop failed this session in the way `link` says.
    pub fn next_hop(
        &self,
        session: SessionId,
        layers: LayerRange,
        link: LinkFailure,
        message: impl Into<String>,
    ) -> ErrorMessage {
        self.error(
            Some(session),
            layers,
            ErrorCode::NextHopFailed,
            Fault::NextHop(link),
            message,
        )
    }

    /// `m` (a `StepResult` of step `step`) with this hop's signed record appended: it took
    /// the input of digest `input` and gave `output` (see `lamina_protocol::evidence`).
    /// Other messages pass unchanged; a record that cannot be signed is left out (the hop
    /// above then blames this one, as it should: an unsigned step proves nothing).
    pub fn seal(
        &self,
        m: Message,
        layers: LayerRange,
        input: Digest,
        output: StepProduct,
    ) -> Message {
        let Message::StepResult(mut r) = m else {
            return m;
        };
        let record = StepRecord {
            signer: self.peer.to_bytes(),
            session_id: r.session_id,
            step: r.step,
            layers,
            input,
            output,
        };
        match record.sign(&self.key) {
            Ok(signed) => r.evidence.push(signed),
            Err(e) => tracing::warn!("cannot sign a step record: {e}"),
        }
        Message::StepResult(r)
    }
}
