//! Step evidence: the signed record each hop adds to a `StepResult`, saying which input it
//! took and which output it gave for one step of one session.
//!
//! Why: a hop that sends wrong activations, or a token outside the vocabulary, should be
//! caught by its peer id, not by avoiding the whole chain. Each hop signs (with its libp2p
//! key, like a [`crate::SignedReport`]) the blake3 digest of the input it received and of
//! the output it sent on (or the token it drew), and the records travel back up with the
//! result, each hop appending its own. A relaying hop cannot forge a record of another
//! hop; it can drop or damage one, which is why every hop checks the records from below
//! before it appends its own ([`check_chain`]): a hop that relays a broken chain of
//! records is the one blamed by the hop above it.
//!
//! What the records prove: the records of one step chain up (hop `k + 1`'s input is hop
//! `k`'s output), so the first inconsistency is between two named hops, and the token the
//! entry gets is the one the last hop signed. What they do not prove: that a hop computed
//! its output correctly from its input. That is what spot-check verification does (re-runs
//! the step elsewhere and compares digests hop by hop; see the node's `pipeline::verify`).
//!
//! Pure code: no clocks, no I/O.

use bincode::{Decode, Encode};
use libp2p_identity::{Keypair, PeerId, PublicKey};

use crate::ids::SessionId;
use crate::layers::LayerRange;
use crate::message::{ForwardInput, StepOutput};
use crate::tensor::WireTensor;

/// Signed bytes are `DOMAIN || body`, so a record's signature is valid for nothing else
/// the same key signs (reports, announcements, handshakes).
const DOMAIN: &[u8] = b"lamina-step-evidence-v1:";
/// Records one `StepResult` may carry: one per hop of the chain.
pub const MAX_EVIDENCE_RECORDS: usize = 64;
/// The largest encoded record body (a peer id is at most ~42 bytes, two digests 64).
pub const MAX_RECORD_BODY_BYTES: usize = 256;
/// The largest public key accepted (an ed25519 key in protobuf is 36 bytes).
pub const MAX_RECORD_KEY_BYTES: usize = 128;
/// The largest signature accepted (ed25519: 64 bytes).
pub const MAX_RECORD_SIGNATURE_BYTES: usize = 128;

/// A blake3 digest.
pub type Digest = [u8; 32];

/// What a hop gave for a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum StepProduct {
    /// Hidden states (sent to the next hop, or returned): their digest.
    Hidden(Digest),
    /// The token the last hop drew.
    Token(u32),
}

impl StepProduct {
    /// What `output` is, as a record states it.
    pub fn of(output: &StepOutput) -> Self {
        match output {
            StepOutput::Token { id, .. } => StepProduct::Token(*id),
            StepOutput::Hidden(h) => StepProduct::Hidden(digest_tensor(h)),
        }
    }
}

/// What one hop states about one step.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct StepRecord {
    /// The hop's libp2p peer id (multihash bytes); must be the signer.
    pub signer: Vec<u8>,
    pub session_id: SessionId,
    pub step: u64,
    /// The layers the hop runs in this session.
    pub layers: LayerRange,
    /// Digest of the input it received ([`digest_input`]).
    pub input: Digest,
    pub output: StepProduct,
}

/// A [`StepRecord`] with its signature, as it travels in a `StepResult`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SignedStepRecord {
    /// bincode of the [`StepRecord`].
    pub body: Vec<u8>,
    /// The signer's public key, libp2p protobuf encoding.
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a record, or a chain of them, was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("step record field {0} is too large")]
    TooLarge(&'static str),
    #[error("step record does not decode: {0}")]
    Malformed(String),
    #[error("step record public key does not decode")]
    BadKey,
    #[error("step record signature does not verify")]
    BadSignature,
    #[error("step record names a signer other than its key")]
    WrongSigner,
    #[error("signing failed: {0}")]
    Sign(String),
    /// The records do not state what the chain below is and did (see [`check_chain`]).
    #[error("hop {hop} of the chain below: {what}")]
    Inconsistent { hop: usize, what: &'static str },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD_BODY_BYTES>()
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DOMAIN.len() + body.len());
    v.extend_from_slice(DOMAIN);
    v.extend_from_slice(body);
    v
}

/// The digest of hidden states: dtype, shape and bytes, so a reinterpretation of the
/// same bytes is another digest.
pub fn digest_tensor(t: &WireTensor) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"hidden");
    h.update(&[t.dtype() as u8]);
    for d in t.shape() {
        h.update(&d.to_le_bytes());
    }
    h.update(t.data());
    *h.finalize().as_bytes()
}

/// The digest of a step's input as a hop receives it.
pub fn digest_input(input: &ForwardInput) -> Digest {
    match input {
        ForwardInput::Hidden(t) => digest_tensor(t),
        ForwardInput::Tokens(ids) => {
            let mut h = blake3::Hasher::new();
            h.update(b"tokens");
            for id in ids {
                h.update(&id.to_le_bytes());
            }
            *h.finalize().as_bytes()
        }
    }
}

impl StepRecord {
    /// Signs the record with `key`, which must be the key of `signer`.
    pub fn sign(&self, key: &Keypair) -> Result<SignedStepRecord, EvidenceError> {
        let body = bincode::encode_to_vec(self, bincode::config::standard())
            .map_err(|e| EvidenceError::Malformed(e.to_string()))?;
        if body.len() > MAX_RECORD_BODY_BYTES {
            return Err(EvidenceError::TooLarge("body"));
        }
        let signature = key
            .sign(&signed_bytes(&body))
            .map_err(|e| EvidenceError::Sign(e.to_string()))?;
        Ok(SignedStepRecord {
            body,
            public_key: key.public().encode_protobuf(),
            signature,
        })
    }
}

impl SignedStepRecord {
    /// Checks the bounds, the signature and that the signer is the record's; returns the
    /// record and its signer.
    pub fn verify(&self) -> Result<(PeerId, StepRecord), EvidenceError> {
        self.check_bounds()?;
        let key =
            PublicKey::try_decode_protobuf(&self.public_key).map_err(|_| EvidenceError::BadKey)?;
        if !key.verify(&signed_bytes(&self.body), &self.signature) {
            return Err(EvidenceError::BadSignature);
        }
        let (r, used): (StepRecord, usize) = bincode::decode_from_slice(&self.body, config())
            .map_err(|e| EvidenceError::Malformed(e.to_string()))?;
        if used != self.body.len() {
            return Err(EvidenceError::Malformed(format!(
                "{} trailing bytes",
                self.body.len() - used
            )));
        }
        let signer = key.to_peer_id();
        if r.signer != signer.to_bytes() {
            return Err(EvidenceError::WrongSigner);
        }
        Ok((signer, r))
    }

    /// The size bounds, checked on decode too.
    pub fn check_bounds(&self) -> Result<(), EvidenceError> {
        if self.body.len() > MAX_RECORD_BODY_BYTES {
            return Err(EvidenceError::TooLarge("body"));
        }
        if self.public_key.len() > MAX_RECORD_KEY_BYTES {
            return Err(EvidenceError::TooLarge("public_key"));
        }
        if self.signature.len() > MAX_RECORD_SIGNATURE_BYTES {
            return Err(EvidenceError::TooLarge("signature"));
        }
        Ok(())
    }
}

/// One hop of the chain below a checker, as the checker knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedHop {
    pub peer: PeerId,
    pub layers: LayerRange,
}

/// A verified record of one hop, in chain order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopEvidence {
    pub peer: PeerId,
    pub layers: LayerRange,
    pub input: Digest,
    pub output: StepProduct,
}

/// Checks the records a `StepResult` carries from the chain `below` (in chain order; the
/// records arrive last hop first, as each hop appends its own): one verified record per
/// hop, signed by that hop, for this session, step and the hop's layers; the first hop's
/// input is `sent` (the digest of what the checker sent down); each next hop's input is
/// the previous hop's output; the last hop's product is `answered` (what the result
/// carries). Returns the records in chain order.
///
/// Whoever relays records that fail this check is at fault: an honest hop checks what
/// its next hop relays before it appends its own record, so the entry and every hop
/// blame their *next* hop for a broken chain, never a hop further down by name.
pub fn check_chain(
    records: &[SignedStepRecord],
    below: &[ExpectedHop],
    session: SessionId,
    step: u64,
    sent: Digest,
    answered: StepProduct,
) -> Result<Vec<HopEvidence>, EvidenceError> {
    let bad = |hop: usize, what: &'static str| EvidenceError::Inconsistent { hop, what };
    if records.len() != below.len() {
        return Err(bad(
            records.len().min(below.len()),
            "missing or extra records",
        ));
    }
    let mut out = Vec::with_capacity(below.len());
    let mut expect_input = sent;
    for (i, (hop, signed)) in below.iter().zip(records.iter().rev()).enumerate() {
        let (signer, r) = signed
            .verify()
            .map_err(|_| bad(i, "record does not verify"))?;
        if signer != hop.peer {
            return Err(bad(i, "record signed by another peer"));
        }
        if r.session_id != session || r.step != step {
            return Err(bad(i, "record of another session or step"));
        }
        if r.layers != hop.layers {
            return Err(bad(i, "record of other layers"));
        }
        if r.input != expect_input {
            return Err(bad(i, "input differs from the previous hop's output"));
        }
        let last = i + 1 == below.len();
        match (r.output, last) {
            (StepProduct::Hidden(d), false) => expect_input = d,
            (p, true) if p == answered => {}
            (_, true) => return Err(bad(i, "the answer is not what the last hop signed")),
            (StepProduct::Token(_), false) => return Err(bad(i, "a token before the last hop")),
        }
        out.push(HopEvidence {
            peer: signer,
            layers: r.layers,
            input: r.input,
            output: r.output,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(key: &Keypair, a: u32, b: u32) -> ExpectedHop {
        ExpectedHop {
            peer: key.public().to_peer_id(),
            layers: LayerRange::new(a, b).unwrap(),
        }
    }

    fn record(
        key: &Keypair,
        h: &ExpectedHop,
        input: Digest,
        output: StepProduct,
    ) -> SignedStepRecord {
        StepRecord {
            signer: key.public().to_peer_id().to_bytes(),
            session_id: SessionId::from(9u128),
            step: 3,
            layers: h.layers,
            input,
            output,
        }
        .sign(key)
        .unwrap()
    }

    #[test]
    fn a_consistent_chain_checks_and_any_break_names_its_hop() {
        let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
        let below = [
            hop(&keys[0], 0, 2),
            hop(&keys[1], 2, 4),
            hop(&keys[2], 4, 5),
        ];
        let sent = digest_input(&ForwardInput::Tokens(vec![1, 2, 3]));
        let (d1, d2) = ([1u8; 32], [2u8; 32]);
        let honest = vec![
            record(&keys[2], &below[2], d2, StepProduct::Token(42)),
            record(&keys[1], &below[1], d1, StepProduct::Hidden(d2)),
            record(&keys[0], &below[0], sent, StepProduct::Hidden(d1)),
        ];
        let s = SessionId::from(9u128);
        let ok = check_chain(&honest, &below, s, 3, sent, StepProduct::Token(42)).unwrap();
        assert_eq!(ok.len(), 3);
        assert_eq!(ok[2].output, StepProduct::Token(42));
        // The token relayed is not the one signed.
        let e = check_chain(&honest, &below, s, 3, sent, StepProduct::Token(7)).unwrap_err();
        assert_eq!(
            e,
            EvidenceError::Inconsistent {
                hop: 2,
                what: "the answer is not what the last hop signed"
            }
        );
        // Another step, a dropped record, a record by another key.
        assert!(check_chain(&honest, &below, s, 4, sent, StepProduct::Token(42)).is_err());
        assert!(check_chain(&honest[1..], &below, s, 3, sent, StepProduct::Token(42)).is_err());
        let mut swapped = honest.clone();
        swapped[1] = record(&keys[0], &below[1], d1, StepProduct::Hidden(d2));
        assert!(matches!(
            check_chain(&swapped, &below, s, 3, sent, StepProduct::Token(42)),
            Err(EvidenceError::Inconsistent { hop: 1, .. })
        ));
        // A broken link between hop 0's output and hop 1's input.
        let mut broken = honest.clone();
        broken[1] = record(&keys[1], &below[1], [7u8; 32], StepProduct::Hidden(d2));
        assert!(matches!(
            check_chain(&broken, &below, s, 3, sent, StepProduct::Token(42)),
            Err(EvidenceError::Inconsistent { hop: 1, .. })
        ));
        // Tampered bytes.
        let mut tampered = honest;
        let n = tampered[0].body.len() - 1;
        tampered[0].body[n] ^= 1;
        assert_eq!(tampered[0].verify(), Err(EvidenceError::BadSignature));
    }

    #[test]
    fn digests_tell_tokens_from_hidden_states() {
        let t = WireTensor::from_f32(&[1, 2], &[1.0, 2.0], crate::WireDType::F32).unwrap();
        assert_ne!(
            digest_input(&ForwardInput::Hidden(t.clone())),
            digest_input(&ForwardInput::Tokens(vec![1, 2]))
        );
        assert_eq!(
            digest_input(&ForwardInput::Hidden(t.clone())),
            digest_tensor(&t)
        );
    }
}
