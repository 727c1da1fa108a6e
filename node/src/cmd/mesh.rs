//! `lamina mesh create|admit|revoke`: the operator's side of a private mesh, thin over
//! [`crate::trust::Authority`] and [`crate::mesh::handover`].

use std::time::Duration;

use anyhow::Context;
use lamina_protocol::Role;

use crate::cli::MeshCommand;
use crate::trust::Authority;

/// How long `revoke` waits for the member to take the revocation.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(15);
/// The certificate of the throwaway peer `revoke` joins as.
const HANDOVER_CERT_SECS: u64 = 600;

pub fn run(cmd: MeshCommand) -> anyhow::Result<()> {
    match cmd {
        MeshCommand::Create { out } => {
            let a = Authority::create(&out)?;
            println!("{}", a.mesh());
            eprintln!(
                "made mesh {} in {} (keep mesh.key secret; admit nodes with `lamina mesh admit`)",
                a.mesh(),
                out.display()
            );
            Ok(())
        }
        MeshCommand::Admit {
            mesh,
            peer,
            role,
            expires,
            out,
        } => {
            let a = Authority::open(&mesh)?;
            let until = crate::ids::now_ms() / 1000 + expires.as_secs();
            a.member_file(&peer, role, until)?.save(&out)?;
            eprintln!(
                "admitted {peer} as {role} until {until} (unix); member file {}",
                out.display()
            );
            Ok(())
        }
        MeshCommand::Revoke {
            mesh,
            peer,
            bootstrap,
        } => {
            let a = Authority::open(&mesh)?;
            let now = crate::ids::now_ms() / 1000;
            let revocation = a.revoke(&peer, now)?;
            let key = libp2p::identity::Keypair::generate_ed25519();
            let me = key.public().to_peer_id();
            let cert = a.admit(&me, Role::Client, now + HANDOVER_CERT_SECS)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let member = rt
                .block_on(crate::mesh::handover::hand_over(
                    a.mesh(),
                    key,
                    cert,
                    revocation,
                    bootstrap.clone(),
                    HANDOVER_TIMEOUT,
                ))
                .with_context(|| format!("cannot hand the revocation to {bootstrap}"))?;
            eprintln!("revoked {peer}; handed to {member}, it spreads from there");
            Ok(())
        }
    }
}
