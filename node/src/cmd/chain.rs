//! `lamina generate --chain FILE`: one generation through running nodes.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use lamina_protocol::FrameLimits;
use lamina_sharding::generate::GenerateRequest;
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;

use crate::cli::{GenerateArgs, OutputFormat};
use crate::dataplane::{client_endpoint, resolve, Dialer};
use crate::pipeline::{check_chain, read_chain_file, ChainClient};

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
    let model_id = super::node::model_id_of(&model)?;
    let tokenizer = Arc::new(model.tokenizer()?);
    drop(model);
    let chain = read_chain_file(chain_file)?;
    check_chain(&chain, u32::try_from(cfg.n_layers).unwrap_or(u32::MAX))?;
    let prompt_ids = tokenizer.encode(&args.prompt, tokenizer.add_bos_default(), false)?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repeat_penalty,
        seed: args.seed,
        ..SamplingParams::default()
    };
    sampling.validate()?;
    let req = GenerateRequest {
        prompt_ids,
        max_tokens: args.max_tokens,
        sampling,
        stop: args.stop.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let first = chain.first().map(|h| h.addr.clone()).unwrap_or_default();
    let client = rt.block_on(async {
        let family = resolve(&first).await.ok();
        let endpoint = client_endpoint(family)?;
        Ok::<_, anyhow::Error>(ChainClient {
            dialer: Dialer::new(endpoint, FrameLimits::default()),
            model_id,
            tokenizer: tokenizer.clone(),
            vocab_size: cfg.vocab_size,
            context_length: cfg.context_length,
        })
    })?;
    let streaming = args.format == OutputFormat::Text;
    let mut stdout = std::io::stdout().lock();
    let out = client.generate(rt.handle(), &chain, &req, args.activation_dtype, |piece| {
        if streaming {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
    })?;
    match args.format {
        OutputFormat::Text => {
            writeln!(stdout)?;
            eprintln!(
                "[{} prompt tokens, {} generated, finish: {:?}; decode {:.1} tok/s; {} hops]",
                out.prompt_token_ids.len(),
                out.generated_token_ids.len(),
                out.finish_reason,
                out.timings.decode_tokens_per_s,
                chain.len()
            );
        }
        OutputFormat::Json => {
            serde_json::to_writer(&mut stdout, &out)?;
            writeln!(stdout)?;
        }
    }
    Ok(())
}
