//! Hands a revocation to one member of a private mesh (`lamina mesh revoke`): a throwaway
//! libp2p peer holding a client certificate the authority just signed for it joins
//! through `bootstrap`, sends the revocation in its membership hello and waits for the
//! member's answer (the acknowledgement). The member cuts the revoked peer off and hands
//! the revocation on to every peer it has admitted, so one member is enough.

use std::time::Duration;

use futures::StreamExt;
use lamina_protocol::{MeshKey, SignedMemberCert, SignedRevocation};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId};

use super::behaviour::{MemberHello, MAX_MEMBER_BYTES, MEMBER_PROTOCOL};
use super::MeshError;

/// Sends `revocation` to the member of `mesh` at `bootstrap` as `key` (admitted by
/// `cert`), and returns the member's peer id once it answered with a certificate of the
/// same mesh (a node of another mesh, or of an open one, would ignore the revocation),
/// within `timeout`.
pub async fn hand_over(
    mesh: MeshKey,
    key: Keypair,
    cert: SignedMemberCert,
    revocation: SignedRevocation,
    bootstrap: Multiaddr,
    timeout: Duration,
) -> Result<PeerId, MeshError> {
    let swarm_err = |e: &dyn std::fmt::Display| MeshError::Swarm(e.to_string());
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| swarm_err(&e))?
        .with_quic()
        .with_behaviour(|_| {
            let codec = request_response::cbor::codec::Codec::<MemberHello, MemberHello>::default()
                .set_request_size_maximum(MAX_MEMBER_BYTES)
                .set_response_size_maximum(MAX_MEMBER_BYTES);
            request_response::Behaviour::with_codec(
                codec,
                [(MEMBER_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(timeout),
            )
        })
        .map_err(|e| swarm_err(&e))?
        .build();
    swarm
        .dial(bootstrap.clone())
        .map_err(|e| MeshError::Swarm(format!("cannot dial {bootstrap}: {e}")))?;
    let hello = MemberHello {
        cert: Some(cert),
        revocations: vec![revocation],
    };
    let run = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    swarm.behaviour_mut().send_request(&peer_id, hello.clone());
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Err(MeshError::Swarm(format!(
                        "cannot connect to {bootstrap}: {error}"
                    )));
                }
                SwarmEvent::Behaviour(request_response::Event::Message {
                    peer, message, ..
                }) => match message {
                    request_response::Message::Response { response, .. } => {
                        let now = crate::ids::now_ms() / 1000;
                        return match response.cert.map(|c| c.verify(&mesh, &peer, now)) {
                            Some(Ok(_)) => Ok(peer),
                            Some(Err(e)) => Err(MeshError::Swarm(format!(
                                "{peer} is not a member of this mesh ({e}); the revocation was not handed over"
                            ))),
                            None => Err(MeshError::Swarm(format!(
                                "{peer} is in no private mesh; the revocation was not handed over"
                            ))),
                        };
                    }
                    request_response::Message::Request { channel, .. } => {
                        let _ = swarm.behaviour_mut().send_response(channel, hello.clone());
                    }
                },
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    peer,
                    error,
                    ..
                }) => {
                    return Err(MeshError::Swarm(format!(
                        "{peer} did not take the revocation: {error}"
                    )));
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| MeshError::Swarm(format!("no answer from {bootstrap} within {timeout:?}")))?
}
