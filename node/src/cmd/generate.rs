//! `lamina generate`: one generation on this machine, optionally through an in-process
//! chain of shards split the way a mesh would split the model.

use crate::cli::{GenerateArgs, OutputFormat};
use anyhow::Context;
use candle_core::Device;
use lamina_sharding::chat::ChatMessage;
use lamina_sharding::generate::{generate, GenerateRequest, LocalChain};
use lamina_sharding::layers::parse_split;
use lamina_sharding::source::ModelFile;
use lamina_sharding::synth;
use std::io::Write;

/// The built-in default: a tiny random-weight model, made in memory from a fixed seed, so
/// that the main command runs on a fresh machine without any download.
pub fn default_model() -> anyhow::Result<ModelFile> {
    let spec = synth::SynthSpec {
        preset: synth::preset("tiny")?.clone(),
        dtype: synth::SynthDType::Q8_0,
        seed: 0,
        n_layers_override: None,
    };
    let bytes = synth::gguf_bytes(&spec)?;
    Ok(ModelFile::from_gguf_bytes(
        "<built-in tiny synthetic model>",
        bytes,
    )?)
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if let Some(peer) = &args.peer {
        return super::remote::generate(&args, peer);
    }
    if let Some(chain) = &args.chain {
        return super::chain::run(&args, chain);
    }
    let model = match &args.model {
        Some(p) => ModelFile::open(p).with_context(|| format!("cannot load {}", p.display()))?,
        None => {
            eprintln!(
                "note: no --model given: using a built-in random-weight model; its text is noise. \
                 Pass --model FILE.gguf for real text."
            );
            default_model()?
        }
    };
    let cfg = model.config()?;
    let tokenizer = model.tokenizer()?;

    let prompt_ids = if args.chat {
        let template = match model.chat_template(&tokenizer)? {
            Some(t) => t,
            None => {
                eprintln!("note: the model has no chat template; using ChatML");
                lamina_sharding::chat::ChatTemplate::chatml()
            }
        };
        let mut messages = Vec::new();
        if let Some(sys) = &args.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: sys.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: args.prompt.clone(),
        });
        lamina_sharding::chat::encode_chat(&tokenizer, &template, &messages)?
    } else {
        tokenizer.encode(&args.prompt, tokenizer.add_bos_default(), false)?
    };

    let split = match &args.layers_split {
        Some(s) => parse_split(s, cfg.n_layers)?,
        None => vec![lamina_sharding::layers::range(0, cfg.n_layers)?],
    };
    let req = GenerateRequest {
        prompt_ids,
        max_tokens: args.max_tokens,
        sampling: args.sampling()?,
        stop: args.stop.clone(),
    };
    let chain = LocalChain::load(&model, &split, &Device::Cpu)?;
    drop(model); // the shards hold copies of what they need; release the mapping
    let len = lamina_sharding::generate::session_length(&req, cfg.context_length)?;
    let mut session = chain.session(len)?;

    let mut stdout = std::io::stdout().lock();
    let streaming = args.format == OutputFormat::Text;
    let out = generate(
        &mut session,
        &tokenizer,
        &req,
        cfg.context_length,
        |piece| {
            if streaming {
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
        },
    )?;
    match args.format {
        OutputFormat::Text => {
            writeln!(stdout)?;
            eprintln!(
                "[{} prompt tokens, {} generated, finish: {:?}; prefill {:.1} tok/s, decode {:.1} tok/s; shards {}]",
                out.prompt_token_ids.len(),
                out.generated_token_ids.len(),
                out.finish_reason,
                out.timings.prefill_tokens_per_s,
                out.timings.decode_tokens_per_s,
                split.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",")
            );
        }
        OutputFormat::Json => {
            serde_json::to_writer(&mut stdout, &out)?;
            writeln!(stdout)?;
        }
    }
    Ok(())
}
