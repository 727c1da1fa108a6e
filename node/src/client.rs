//! The Rust client API: join a mesh as a light peer (no layers), plan routes from its
//! announcements and run generations through it directly over the data plane, with the
//! same failover as a node's HTTP API. For programs that embed lamina rather than talk
//! HTTP to a node.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let client = lamina_node::client::MeshClient::join(
//!     "SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(),
//!     &["/ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooW...".parse()?],
//! )?;
//! let out = client.complete("Once upon a time", 32)?;
//! println!("{}", out.text);
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lamina_protocol::{Announcement, CertFingerprint, NodeState, WireDType, ANNOUNCEMENT_VERSION};
use lamina_sharding::generate::{GenerateRequest, GenerationOutput};
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;
use libp2p::Multiaddr;

use crate::dataplane::{Dialer, Identity};
use crate::failover::FailoverPolicy;
use crate::mesh::swarm::SwarmOptions;
use crate::mesh::MeshHandle;
use crate::pipeline::{ChainClient, PipelineError};

/// A light member of a mesh that can generate through it.
pub struct MeshClient {
    rt: tokio::runtime::Runtime,
    mesh: MeshHandle,
    client: ChainClient,
}

impl MeshClient {
    /// Joins the mesh through `bootstrap` for the model in `model_file` (read locally for
    /// its tokenizer and model id; no layers are loaded) and waits, bounded, until the
    /// mesh covers the model.
    pub fn join(model_file: &Path, bootstrap: &[Multiaddr]) -> anyhow::Result<Self> {
        let model = ModelFile::open(model_file)
            .with_context(|| format!("cannot open {}", model_file.display()))?;
        let cfg = model.config()?;
        let model_id = crate::cmd::node::model_id_of(&model)?;
        let tokenizer = Arc::new(model.tokenizer()?);
        drop(model);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (mesh, dialer) = rt.block_on(async {
            let identity = Identity::generate()?;
            let endpoint = crate::dataplane::server_endpoint("127.0.0.1:0".parse()?, &identity)?;
            let key = libp2p::identity::Keypair::generate_ed25519();
            let template = Announcement {
                version: ANNOUNCEMENT_VERSION,
                peer_id: key.public().to_peer_id().to_bytes(),
                model_id,
                n_layers: u32::try_from(cfg.n_layers).unwrap_or(u32::MAX),
                layers: None,
                state: NodeState::Serving,
                dataplane_addr: endpoint.local_addr()?.to_string(),
                cert: identity.fingerprint(),
                listen_addrs: vec![],
                api: None,
                tokens_per_sec: 0.0,
                free_slots: 0,
                max_memory: 0,
                lamina_version: env!("CARGO_PKG_VERSION").into(),
                seq: 0,
                issued_at_ms: 0,
                expires_at_ms: 0,
                withdrawn: false,
                started_at_ms: crate::mesh::now_ms(),
            };
            let listen = vec!["/ip4/0.0.0.0/udp/0/quic-v1".parse()?];
            let opts = SwarmOptions {
                listen,
                bootstrap: bootstrap.to_vec(),
                mdns: bootstrap.is_empty(),
            };
            let mesh = MeshHandle::start(key, &opts, template)?;
            mesh.wait_listening(Duration::from_secs(5)).await;
            mesh.update(|_| {})?;
            tokio::spawn(mesh.clone().refresh_forever());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while mesh.route().is_err() {
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!(
                        "the mesh does not cover the model: {}",
                        mesh.route()
                            .err()
                            .map_or_else(String::new, |e| e.to_string())
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let dialer = Dialer::new(endpoint, lamina_protocol::FrameLimits::default());
            Ok::<_, anyhow::Error>((mesh, dialer))
        })?;
        let client = ChainClient {
            dialer,
            model_id,
            tokenizer,
            vocab_size: cfg.vocab_size,
            context_length: cfg.context_length,
        };
        Ok(Self { rt, mesh, client })
    }

    /// The mesh as this client sees it (the JSON of a node's `/status`).
    pub fn status(&self) -> serde_json::Value {
        self.mesh.status()
    }

    /// Greedy completion of `prompt`, up to `max_tokens` tokens.
    pub fn complete(&self, prompt: &str, max_tokens: usize) -> anyhow::Result<GenerationOutput> {
        let tok = &self.client.tokenizer;
        let req = GenerateRequest {
            prompt_ids: tok.encode(prompt, tok.add_bos_default(), false)?,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: vec![],
        };
        self.generate(&req, |_| {})
    }

    /// Runs `req` through the mesh, calling `on_text` with each piece of text as it is
    /// generated. Hops that fail are routed around (see [`crate::failover`]).
    pub fn generate(
        &self,
        req: &GenerateRequest,
        mut on_text: impl FnMut(&str),
    ) -> anyhow::Result<GenerationOutput> {
        let route = self.mesh.route()?;
        let mesh = self.mesh.clone();
        let replan = move |ex: &HashSet<CertFingerprint>| {
            crate::api::RouteSource::route_excluding(&mesh, ex).map_err(PipelineError::from)
        };
        let banner = self.mesh.clone();
        let report = move |cert| banner.ban(cert);
        let handle = self.rt.handle().clone();
        let (out, _) = self.client.generate_resilient(
            &handle,
            &route.hops,
            &replan,
            &report,
            FailoverPolicy::default(),
            req,
            WireDType::F16,
            |_, _| {},
            |t| {
                on_text(t);
                std::ops::ControlFlow::Continue(())
            },
        )?;
        Ok(out)
    }
}
