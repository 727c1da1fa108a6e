//! The Rust client API: join a mesh as a light peer (no layers), plan routes from its
//! announcements and run generations through it directly over the data plane, with the
//! same failover as a node's HTTP API. For programs that embed lamina rather than talk
//! HTTP to a node. It is a [`Node`] that serves no layers and no API.
//!
//! ```text
//! let client = lamina_node::client::MeshClient::join(
//!     "SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(),
//!     &["/ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooW...".parse()?],
//!     lamina_node::MeshChoice::Member("client.member.json".into()),
//! )?;
//! let out = client.complete("Once upon a time", 32)?;
//! println!("{}", out.text);
//! ```
//!
//! The whole program, compiled and run by the examples' test, is
//! `examples/examples/mesh_client.rs` (not a doc test: each doc test links the whole
//! stack once more).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lamina_sharding::generate::{GenerateRequest, GenerationOutput};
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;
use libp2p::Multiaddr;

use crate::config::{LayersChoice, MeshChoice, NodeConfig};
use crate::daemon::{Node, NodeHandle};
use crate::mesh::MeshStatus;
use crate::pipeline::{ChainClient, GenerateOptions, Observer};

/// How long [`MeshClient::join`] waits for the mesh to cover the model.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A light member of a mesh that can generate through it.
pub struct MeshClient {
    rt: tokio::runtime::Runtime,
    node: Option<NodeHandle>,
    client: ChainClient,
}

/// Calls a closure with each piece of text.
struct Pieces<F>(F);

impl<F: FnMut(&str) + Send> Observer for Pieces<F> {
    async fn text(&mut self, piece: &str) -> ControlFlow<()> {
        (self.0)(piece);
        ControlFlow::Continue(())
    }
}

impl MeshClient {
    /// Joins the mesh through `bootstrap` for the model in `model_file` (read locally for
    /// its tokenizer and model id; no layers are loaded) and waits, bounded, until the
    /// mesh covers the model. With no bootstrap peers it looks for them with mDNS. `mesh`
    /// is the mesh to join; with a fresh identity in memory that can only be an open one
    /// (a member file names one peer id): [`join_as`](Self::join_as) joins a private mesh.
    pub fn join(
        model_file: &Path,
        bootstrap: &[Multiaddr],
        mesh: MeshChoice,
    ) -> anyhow::Result<Self> {
        Self::join_as(model_file, bootstrap, mesh, None)
    }

    /// As [`join`](Self::join), with the identity kept in `data_dir` (made on first use;
    /// `lamina node --print-peer-id --data-dir DIR` prints its peer id, which
    /// `lamina mesh admit` turns into the member file `mesh` names).
    pub fn join_as(
        model_file: &Path,
        bootstrap: &[Multiaddr],
        mesh: MeshChoice,
        data_dir: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let model = ModelFile::open(model_file)
            .with_context(|| format!("cannot open {}", model_file.display()))?;
        let cfg = model.config()?;
        let tokenizer = Arc::new(model.tokenizer()?);
        drop(model);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut config = NodeConfig::new(model_file);
        config.layers = LayersChoice::None;
        config.bootstrap = bootstrap.to_vec();
        config.mdns = bootstrap.is_empty();
        config.mesh = mesh;
        if let Some(dir) = data_dir {
            config.identity = crate::config::IdentityStore::Dir(dir.to_path_buf());
        }
        config.listen = "0.0.0.0:0".parse()?;
        let (node, client) = rt.block_on(async {
            let node = Node::start(config).await?;
            node.mesh()
                .wait_covered(JOIN_TIMEOUT)
                .await
                .map_err(|e| anyhow::anyhow!("the mesh does not cover the model: {e}"))?;
            let client = ChainClient {
                dialer: node.dialer().clone(),
                model_id: node.info().model_id,
                tokenizer,
                context_length: cfg.context_length,
                ends: None,
                verify: Default::default(),
            };
            Ok::<_, anyhow::Error>((node, client))
        })?;
        Ok(Self {
            rt,
            node: Some(node),
            client,
        })
    }

    /// The mesh as this client sees it.
    pub fn status(&self) -> Option<MeshStatus> {
        self.node.as_ref().map(|n| n.status())
    }

    /// The chain a request would take now: each hop's peer, layers and address.
    pub fn route(&self) -> anyhow::Result<Vec<crate::pipeline::ChainHop>> {
        let node = self.node.as_ref().context("the client has left the mesh")?;
        Ok(node.mesh().route()?.hops)
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
    /// generated. Hops that fail are routed around (see [`crate::pipeline::failover`]).
    pub fn generate(
        &self,
        req: &GenerateRequest,
        on_text: impl FnMut(&str) + Send,
    ) -> anyhow::Result<GenerationOutput> {
        let node = self.node.as_ref().context("the client has left the mesh")?;
        let routes = node.mesh().clone();
        let opts = GenerateOptions::default();
        let g =
            self.rt.block_on(
                self.client
                    .generate(&routes, req, &opts, &mut Pieces(on_text)),
            )?;
        Ok(g.output)
    }
}

impl Drop for MeshClient {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            self.rt.block_on(node.shutdown());
        }
    }
}
