//! `lamina generate --chain FILE`: one generation through running nodes, on a fixed chain.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use lamina_protocol::FrameLimits;
use lamina_sharding::generate::GenerateRequest;
use lamina_sharding::source::ModelFile;

use crate::cli::{GenerateArgs, OutputFormat};
use crate::dataplane::{client_endpoint, resolve, Dialer};
use crate::pipeline::{
    check_chain, read_chain_file, ChainClient, FailoverPolicy, GenerateOptions, Observer,
};
use crate::routes::FixedRoute;

/// Prints the text as it comes (text output only).
struct Print(bool);

impl Observer for Print {
    async fn text(&mut self, piece: &str) -> ControlFlow<()> {
        if self.0 {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{piece}");
            let _ = out.flush();
        }
        ControlFlow::Continue(())
    }
}

pub fn run(args: &GenerateArgs, chain_file: &Path) -> anyhow::Result<()> {
    let model_path = args.model.as_ref().context(
        "--chain needs --model FILE (the same model file the nodes serve: its tokenizer and id)",
    )?;
    if args.chat || args.layers_split.is_some() {
        anyhow::bail!("--chain does not combine with --chat or --layers-split yet");
    }
    let model = ModelFile::open(model_path)
        .with_context(|| format!("cannot load {}", model_path.display()))?;
    let cfg = model.config()?;
    let model_id = crate::daemon::model_id_of(&model)?;
    let tokenizer = Arc::new(model.tokenizer()?);
    drop(model);
    let chain = read_chain_file(chain_file)?;
    check_chain(&chain, u32::try_from(cfg.n_layers).unwrap_or(u32::MAX))?;
    let req = GenerateRequest {
        prompt_ids: tokenizer.encode(&args.prompt, tokenizer.add_bos_default(), false)?,
        max_tokens: args.max_tokens,
        sampling: args.sampling()?,
        stop: args.stop.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let streaming = args.format == OutputFormat::Text;
    let hops = chain.len();
    let out = rt.block_on(async {
        let first = chain.first().map(|h| h.addr.clone()).unwrap_or_default();
        let family = resolve(&first).await.ok();
        let client = ChainClient {
            // A throwaway identity: nodes of an open mesh serve it; a private mesh's
            // refuse it (NotAMember), as they refuse any peer without a certificate.
            dialer: Dialer::new(
                client_endpoint(family)?,
                FrameLimits::default(),
                libp2p::identity::Keypair::generate_ed25519(),
            ),
            model_id,
            tokenizer: tokenizer.clone(),
            context_length: cfg.context_length,
            ends: None,
            verify: Default::default(),
        };
        let opts = GenerateOptions {
            activation_dtype: args.activation_dtype,
            trace_id: None,
            // A fixed chain has nowhere to fail over to.
            policy: FailoverPolicy::none(),
        };
        let routes = FixedRoute(chain);
        let g = client
            .generate(&routes, &req, &opts, &mut Print(streaming))
            .await?;
        Ok::<_, anyhow::Error>(g.output)
    })?;
    let mut stdout = std::io::stdout().lock();
    match args.format {
        OutputFormat::Text => {
            writeln!(stdout)?;
            eprintln!(
                "[{} prompt tokens, {} generated, finish: {:?}; decode {:.1} tok/s; {hops} hops]",
                out.prompt_token_ids.len(),
                out.generated_token_ids.len(),
                out.finish_reason,
                out.timings.decode_tokens_per_s,
            );
        }
        OutputFormat::Json => {
            serde_json::to_writer(&mut stdout, &out)?;
            writeln!(stdout)?;
        }
    }
    Ok(())
}
