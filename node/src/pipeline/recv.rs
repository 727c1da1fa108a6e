//! Waiting for a hop's answer, the one way every caller does it (the entry for its first
//! hop, each hop for its next hop): `Progress` frames restart the silence deadline, within
//! a cap in all, and every way the wait can end is a typed [`RecvFailure`].
//!
//! Also here: checking the failure report an error reply carries, which both the entry and
//! each relaying hop do before they believe it.

use std::time::Duration;

use lamina_protocol::{ErrorMessage, LinkFailure, Message, ProtocolError, SessionId};
use libp2p::PeerId;

use crate::dataplane::{FramedRecv, RecvError};
use crate::failure::Report;

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum RecvFailure {
    /// Silence (no frame at all) for the whole deadline.
    #[error("no answer within {0:?}")]
    Silent(Duration),
    /// Progress reports kept coming, but no answer within the cap.
    #[error("still no answer after {0:?} of progress reports")]
    ProgressCap(Duration),
    /// The stream ended cleanly before an answer.
    #[error("the stream was closed")]
    Closed,
    /// The stream or its connection failed.
    #[error("the stream failed: {0}")]
    Stream(String),
    /// Bytes that are no valid frame.
    #[error("a bad frame: {0}")]
    BadFrame(ProtocolError),
}

impl RecvFailure {
    /// The link failure this is, as a report or the blame rules name it.
    pub fn link(&self) -> LinkFailure {
        match self {
            RecvFailure::Silent(_) | RecvFailure::ProgressCap(_) => LinkFailure::Deadline,
            RecvFailure::Closed | RecvFailure::Stream(_) => LinkFailure::Stream,
            RecvFailure::BadFrame(_) => LinkFailure::BadReply,
        }
    }
}

/// How long a step may take in all while the chain keeps reporting progress: ten silence
/// deadlines, at least two minutes (sixteen prompts queued on a one-thread node serving a
/// 1B model take about a minute).
pub fn progress_cap(silence: Duration) -> Duration {
    (silence * 10).max(Duration::from_secs(120))
}

/// The next message that is not `Progress`: silent for `silence` at most, `cap` in all.
pub async fn recv_answer(
    rx: &mut FramedRecv,
    silence: Duration,
    cap: Duration,
) -> Result<Message, RecvFailure> {
    let cap = cap.max(silence);
    let end = tokio::time::Instant::now() + cap;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(RecvFailure::ProgressCap(cap));
        }
        let wait = silence.min(left);
        match tokio::time::timeout(wait, rx.recv()).await {
            Err(_) if wait < silence => return Err(RecvFailure::ProgressCap(cap)),
            Err(_) => return Err(RecvFailure::Silent(silence)),
            Ok(Ok(Some(Message::Progress(_)))) => continue,
            Ok(Ok(Some(m))) => return Ok(m),
            Ok(Ok(None)) => return Err(RecvFailure::Closed),
            Ok(Err(RecvError::Stream(e))) => return Err(RecvFailure::Stream(e)),
            Ok(Err(RecvError::Protocol(e))) => return Err(RecvFailure::BadFrame(e)),
        }
    }
}

/// The report of `e`, if it verifies: signed by its reporter, about `session`, and the
/// reporter one of `peers` (the hops the receiver knows are below it).
pub fn verified_report(e: &ErrorMessage, session: SessionId, peers: &[PeerId]) -> Option<Report> {
    let signed = e.report.as_ref()?;
    let (reporter, r) = signed.verify(session).ok()?;
    if !peers.contains(&reporter) {
        return None;
    }
    Some(Report {
        reporter,
        layers: r.layers,
        code: r.code,
        fault: r.fault,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lamina_protocol::{ErrorCode, FailureReport, Fault, LayerRange};
    use libp2p::identity::Keypair;

    #[test]
    fn only_reports_of_known_hops_for_this_session_count() {
        let key = Keypair::generate_ed25519();
        let me = key.public().to_peer_id();
        let session = SessionId::from(5u128);
        let report = FailureReport {
            reporter: me.to_bytes(),
            session_id: session,
            layers: LayerRange::new(2, 4).unwrap(),
            code: ErrorCode::Internal,
            fault: Fault::Own,
        }
        .sign(&key)
        .unwrap();
        let e =
            ErrorMessage::new(ErrorCode::Internal, "peer 12D3Koo... did it").with_report(report);
        let r = verified_report(&e, session, &[me]).unwrap();
        assert_eq!(
            (r.reporter, r.code, r.fault),
            (me, ErrorCode::Internal, Fault::Own)
        );
        assert!(verified_report(&e, SessionId::from(6u128), &[me]).is_none());
        assert!(verified_report(&e, session, &[PeerId::random()]).is_none());
        assert!(
            verified_report(&ErrorMessage::new(ErrorCode::Internal, "x"), session, &[me]).is_none()
        );
    }
}
