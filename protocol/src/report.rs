//! Failure reports: the typed, signed statement a hop attaches to an error reply, saying
//! which hop it is, which session and layers the failure belongs to, and whose fault it is.
//!
//! Why signed: an error travels up the chain through every hop above the one that failed,
//! and the entry bans the peer the error blames. If blame were read from the message text,
//! or from an unsigned field, any hop could name any other peer and have it banned. With a
//! signature by the reporter's libp2p key, a relaying hop can pass a report on but cannot
//! forge or alter one: the entry (and each hop on the way, which checks what its next hop
//! sends before relaying it) verifies the signature against the reporter's peer id and the
//! session. What a hop can still do is accuse its *direct* next hop (`Fault::NextHop`); who
//! is accused is then decided by the chain's order, which the entry chose, not by a name in
//! the report. Whether such an accusation is true is for the spot checks of the trust
//! issue to find out; see `docs/ARCHITECTURE.md`.
//!
//! Pure code: no clocks, no I/O.

use bincode::{Decode, Encode};
use libp2p_identity::{Keypair, PeerId, PublicKey};

use crate::codes::ErrorCode;
use crate::ids::SessionId;
use crate::layers::LayerRange;

/// Signed bytes are `DOMAIN || body`, so a report signature is never valid as a signature
/// over anything else the same key signs (announcements, libp2p handshakes).
const DOMAIN: &[u8] = b"lamina-failure-report-v1:";
/// The largest encoded report body (a peer id is at most ~42 bytes; the rest is fixed).
pub const MAX_REPORT_BODY_BYTES: usize = 256;
/// The largest public key accepted (an ed25519 key in protobuf is 36 bytes).
pub const MAX_REPORT_KEY_BYTES: usize = 128;
/// The largest signature accepted (ed25519: 64 bytes).
pub const MAX_REPORT_SIGNATURE_BYTES: usize = 128;

/// How a hop failed to get an answer from its next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum LinkFailure {
    /// The connection or stream could not be opened.
    Connect,
    /// The stream or connection failed while in use (reset, closed, connection lost).
    Stream,
    /// No answer within the hop's deadline for it.
    Deadline,
    /// An answer that is no valid reply: undecodable bytes, a message out of place, or an
    /// error whose report does not verify.
    BadReply,
}

/// Whose fault a failure is, as the reporter states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Fault {
    /// The reporter's own: it refused (see [`ErrorCode::is_refusal`]) or failed the request
    /// itself.
    Own,
    /// The reporter's next hop in this session did not answer properly.
    NextHop(LinkFailure),
}

/// What a hop states about a failure of one session.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct FailureReport {
    /// The reporter's libp2p peer id (multihash bytes); must be the signer.
    pub reporter: Vec<u8>,
    /// The session the failure belongs to, so a report cannot be replayed into another.
    pub session_id: SessionId,
    /// The layers the reporter runs in this session.
    pub layers: LayerRange,
    /// What failed (the same code as the error reply that carries the report; the entry
    /// trusts this one, which no relay can change).
    pub code: ErrorCode,
    /// Whose fault it is.
    pub fault: Fault,
}

/// A [`FailureReport`] with its signature, as it travels in an error reply.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SignedReport {
    /// bincode of the [`FailureReport`].
    pub body: Vec<u8>,
    /// The signer's public key, libp2p protobuf encoding.
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a report was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("failure report field {0} is too large")]
    TooLarge(&'static str),
    #[error("failure report does not decode: {0}")]
    Malformed(String),
    #[error("failure report public key does not decode")]
    BadKey,
    #[error("failure report signature does not verify")]
    BadSignature,
    #[error("failure report names a reporter other than its signer")]
    WrongSigner,
    #[error("failure report is about another session")]
    WrongSession,
    #[error("signing failed: {0}")]
    Sign(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_REPORT_BODY_BYTES>()
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DOMAIN.len() + body.len());
    v.extend_from_slice(DOMAIN);
    v.extend_from_slice(body);
    v
}

impl FailureReport {
    /// Signs the report with `key`, which must be the key of `reporter`.
    pub fn sign(&self, key: &Keypair) -> Result<SignedReport, ReportError> {
        let body = bincode::encode_to_vec(self, bincode::config::standard())
            .map_err(|e| ReportError::Malformed(e.to_string()))?;
        if body.len() > MAX_REPORT_BODY_BYTES {
            return Err(ReportError::TooLarge("body"));
        }
        let signature = key
            .sign(&signed_bytes(&body))
            .map_err(|e| ReportError::Sign(e.to_string()))?;
        Ok(SignedReport {
            body,
            public_key: key.public().encode_protobuf(),
            signature,
        })
    }

    /// The reporter as a peer id, if the bytes are one.
    pub fn reporter_peer(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.reporter).ok()
    }
}

impl SignedReport {
    /// Checks the bounds, the signature, that the signer is the reporter and that the
    /// report is about `session`; returns the report and its signer.
    pub fn verify(&self, session: SessionId) -> Result<(PeerId, FailureReport), ReportError> {
        self.check_bounds()?;
        let key =
            PublicKey::try_decode_protobuf(&self.public_key).map_err(|_| ReportError::BadKey)?;
        if !key.verify(&signed_bytes(&self.body), &self.signature) {
            return Err(ReportError::BadSignature);
        }
        let (r, used): (FailureReport, usize) = bincode::decode_from_slice(&self.body, config())
            .map_err(|e| ReportError::Malformed(e.to_string()))?;
        if used != self.body.len() {
            return Err(ReportError::Malformed(format!(
                "{} trailing bytes",
                self.body.len() - used
            )));
        }
        let signer = key.to_peer_id();
        if r.reporter != signer.to_bytes() {
            return Err(ReportError::WrongSigner);
        }
        if r.session_id != session {
            return Err(ReportError::WrongSession);
        }
        r.layers
            .validate()
            .map_err(|e| ReportError::Malformed(e.to_string()))?;
        Ok((signer, r))
    }

    /// The size bounds, checked on decode too (a report is never large).
    pub fn check_bounds(&self) -> Result<(), ReportError> {
        if self.body.len() > MAX_REPORT_BODY_BYTES {
            return Err(ReportError::TooLarge("body"));
        }
        if self.public_key.len() > MAX_REPORT_KEY_BYTES {
            return Err(ReportError::TooLarge("public_key"));
        }
        if self.signature.len() > MAX_REPORT_SIGNATURE_BYTES {
            return Err(ReportError::TooLarge("signature"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(key: &Keypair, session: u128, fault: Fault) -> FailureReport {
        FailureReport {
            reporter: key.public().to_peer_id().to_bytes(),
            session_id: SessionId::from(session),
            layers: LayerRange::new(10, 20).unwrap(),
            code: ErrorCode::NextHopFailed,
            fault,
        }
    }

    #[test]
    fn a_signed_report_verifies_for_its_session_only() {
        let key = Keypair::generate_ed25519();
        let r = report(&key, 7, Fault::NextHop(LinkFailure::Deadline));
        let s = r.sign(&key).unwrap();
        let (who, back) = s.verify(SessionId::from(7u128)).unwrap();
        assert_eq!(who, key.public().to_peer_id());
        assert_eq!(back, r);
        assert_eq!(
            s.verify(SessionId::from(8u128)),
            Err(ReportError::WrongSession)
        );
    }

    #[test]
    fn tampering_and_impersonation_are_refused() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let mut s = report(&key, 1, Fault::Own).sign(&key).unwrap();
        let last = s.body.len() - 1;
        s.body[last] ^= 1;
        assert_eq!(
            s.verify(SessionId::from(1u128)),
            Err(ReportError::BadSignature)
        );
        // Signed by `key` but naming `other` as the reporter: someone else's blame.
        let forged = FailureReport {
            reporter: other.public().to_peer_id().to_bytes(),
            ..report(&key, 1, Fault::Own)
        };
        let s = forged.sign(&key).unwrap();
        assert_eq!(
            s.verify(SessionId::from(1u128)),
            Err(ReportError::WrongSigner)
        );
        let mut big = report(&key, 1, Fault::Own).sign(&key).unwrap();
        big.signature = vec![0; MAX_REPORT_SIGNATURE_BYTES + 1];
        assert_eq!(
            big.verify(SessionId::from(1u128)),
            Err(ReportError::TooLarge("signature"))
        );
    }
}
