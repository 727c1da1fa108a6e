//! Generates through a running mesh with lamina's Rust client API: joins as a light peer
//! (no layers), plans the route from the mesh's announcements, streams the text.
//!
//! ```sh
//! lamina testnet up --detach --open --nodes 3 --model MODEL.gguf --state /tmp/t.json
//! BOOT=$(jq -r '.nodes[0].p2p[] | select(contains("quic"))' /tmp/t.json)
//! cargo run --release -p lamina-examples --example mesh_client -- MODEL.gguf "$BOOT" "Once upon a time"
//! ```

use std::io::Write;

use anyhow::Context;
use lamina_node::client::MeshClient;
use lamina_node::MeshChoice;
use lamina_sharding::generate::GenerateRequest;
use lamina_sharding::sampling::SamplingParams;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .context("usage: mesh_client MODEL.gguf BOOTSTRAP_MULTIADDR [PROMPT]")?;
    let bootstrap = args.next().context("a bootstrap multiaddr")?;
    let prompt = args.next().unwrap_or_else(|| "Once upon a time".into());
    // A private mesh: the member file in LAMINA_MEMBER (from `lamina mesh admit`) for the
    // identity kept in LAMINA_DATA_DIR; otherwise an open mesh.
    let (mesh, data_dir) = match std::env::var_os("LAMINA_MEMBER") {
        Some(f) => (
            MeshChoice::Member(f.into()),
            std::env::var_os("LAMINA_DATA_DIR").map(std::path::PathBuf::from),
        ),
        None => (MeshChoice::Open, None),
    };
    let client = MeshClient::join_as(
        model.as_ref(),
        &[bootstrap.parse()?],
        mesh,
        data_dir.as_deref(),
    )?;
    for hop in client.route()? {
        eprintln!("hop {} layers {} at {}", hop.peer, hop.layers, hop.addr);
    }
    // The tokenizer comes from the local model file; only token ids cross the network.
    let tok = lamina_sharding::source::ModelFile::open(&model)?.tokenizer()?;
    let req = GenerateRequest {
        prompt_ids: tok.encode(&prompt, tok.add_bos_default(), false)?,
        max_tokens: 32,
        sampling: SamplingParams::greedy(),
        stop: vec![],
    };
    print!("{prompt}");
    let out = client.generate(&req, |t| {
        print!("{t}");
        let _ = std::io::stdout().flush();
    })?;
    println!();
    eprintln!(
        "{} tokens, finish: {:?}",
        out.generated_token_ids.len(),
        out.finish_reason
    );
    Ok(())
}
