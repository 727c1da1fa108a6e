//! Session servers in this process, each on its own loopback QUIC endpoint with its own
//! identity: the same server, client and failover code as the daemon, without process
//! start-up or a libp2p mesh.

use std::sync::Arc;

use candle_core::Device;
use lamina_node::dataplane::{
    client_endpoint, server_endpoint, server_endpoint_with, Dialer, FramedRecv, FramedSend,
};
use lamina_node::pipeline::ChainHop;
use lamina_node::session::faults::FaultPlan;
use lamina_node::session::{Reporter, ServerOptions, SessionServer};
use lamina_protocol::{FrameLimits, LayerRange, ModelId};
use lamina_sharding::executor::Shard;
use lamina_sharding::source::ModelFile;
use lamina_sharding::synth;
use libp2p::identity::Keypair;

/// One in-process hop.
pub struct TestHop {
    /// The hop as a chain names it.
    pub hop: ChainHop,
    pub server: Arc<SessionServer>,
    pub endpoint: quinn::Endpoint,
    /// The faults armed on it (empty unless a test arms some).
    pub faults: Arc<FaultPlan>,
    /// Its libp2p key, which signs its failure reports.
    pub key: Keypair,
}

/// The tiny synthetic model (4 layers, dim 64) and its id.
pub fn tiny_model() -> (ModelFile, ModelId) {
    let spec = synth::SynthSpec::new("tiny", synth::SynthDType::Q8_0, 0).expect("spec");
    let model =
        ModelFile::from_gguf_bytes("tiny", synth::gguf_bytes(&spec).expect("gguf")).expect("model");
    let id = lamina_node::model_id_of(&model).expect("model id");
    (model, id)
}

/// Loads `layers` of `model` and serves them on a fresh loopback endpoint (inside a tokio
/// runtime). `opts.faults` is replaced by the hop's own plan.
pub fn spawn_hop(
    model: &ModelFile,
    id: ModelId,
    layers: LayerRange,
    opts: ServerOptions,
) -> TestHop {
    let shard = Arc::new(Shard::load(model, layers, &Device::Cpu).expect("shard"));
    spawn_shard(shard, id, opts)
}

/// Serves an already loaded shard (see [`spawn_hop`]).
pub fn spawn_shard(shard: Arc<Shard>, id: ModelId, mut opts: ServerOptions) -> TestHop {
    let key = Keypair::generate_ed25519();
    let endpoint = server_endpoint_with("127.0.0.1:0".parse().expect("addr"), &key, &opts.peers)
        .expect("endpoint");
    let addr = endpoint.local_addr().expect("local addr");
    let faults = Arc::new(FaultPlan::new());
    opts.faults = Some(faults.clone());
    let dialer = Dialer::new(endpoint.clone(), opts.limits, key.clone()).with_bounds(opts.peers);
    let layers = shard.range();
    let server =
        SessionServer::new(shard, id, dialer, Reporter::new(key.clone()), opts).expect("server");
    tokio::spawn(server.clone().serve(endpoint.clone()));
    TestHop {
        hop: ChainHop {
            layers,
            addr: addr.to_string(),
            peer: key.public().to_peer_id(),
        },
        server,
        endpoint,
        faults,
        key,
    }
}

/// A dial-only client with a fresh identity (inside a tokio runtime).
pub fn client_dialer(limits: FrameLimits) -> Dialer {
    Dialer::new(
        client_endpoint(None).expect("client endpoint"),
        limits,
        Keypair::generate_ed25519(),
    )
}

/// A fake hop for `layers`: a real QUIC endpoint with its own identity (and libp2p key,
/// returned for signing what it sends) whose streams are served by `serve`, the test's own
/// behaviour. Inside a tokio runtime.
pub fn spawn_fake<F, Fut>(layers: LayerRange, limits: FrameLimits, serve: F) -> (ChainHop, Keypair)
where
    F: Fn(FramedSend, FramedRecv) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    spawn_fake_with_key(layers, limits, Keypair::generate_ed25519(), serve)
}

/// [`spawn_fake`] with a key the test chose (to sign what the fake sends).
pub fn spawn_fake_with_key<F, Fut>(
    layers: LayerRange,
    limits: FrameLimits,
    key: Keypair,
    serve: F,
) -> (ChainHop, Keypair)
where
    F: Fn(FramedSend, FramedRecv) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let endpoint = server_endpoint("127.0.0.1:0".parse().expect("addr"), &key).expect("endpoint");
    let addr = endpoint.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Some(inc) = endpoint.accept().await {
            let serve = serve.clone();
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(serve(
                        FramedSend::new(send, limits),
                        FramedRecv::new(recv, limits),
                    ));
                }
            });
        }
    });
    let hop = ChainHop {
        layers,
        addr: addr.to_string(),
        peer: key.public().to_peer_id(),
    };
    (hop, key)
}
