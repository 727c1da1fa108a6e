//! `lamina model inspect|synth|pull|list`.

use crate::cli::{ModelCommand, OutputFormat};
use anyhow::Context;
use lamina_sharding::manifest::{Group, Manifest};
use lamina_sharding::source::ModelFile;
use lamina_sharding::synth;
use std::collections::BTreeMap;

pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Pull { spec, cache_dir } => {
            let env = crate::models::PullOptions::from_env();
            let opts = crate::models::PullOptions {
                cache_dir: cache_dir.or(env.cache_dir.clone()),
                ..env
            };
            let path = crate::models::pull(&spec, &opts)?;
            println!("{}", path.display());
            Ok(())
        }
        ModelCommand::List { cache_dir } => {
            let env = crate::models::PullOptions::from_env();
            let opts = crate::models::PullOptions {
                cache_dir: cache_dir.or(env.cache_dir.clone()),
                ..env
            };
            let models = crate::models::list(&opts)?;
            if models.is_empty() {
                eprintln!("no models in {}", opts_root(&opts));
            }
            for m in models {
                println!(
                    "{:<40} {:>10.1} MiB  {}",
                    m.spec,
                    m.size as f64 / (1 << 20) as f64,
                    m.path.display()
                );
            }
            Ok(())
        }
        ModelCommand::Inspect { file, format } => inspect(&file, format),
        ModelCommand::Synth {
            preset,
            dtype,
            seed,
            layers,
            out,
        } => {
            let spec = synth::SynthSpec {
                preset: synth::preset(&preset)?.clone(),
                dtype: dtype.parse()?,
                seed,
                n_layers_override: layers,
            };
            let t = std::time::Instant::now();
            write_synth(&spec, &out).with_context(|| format!("cannot write {}", out.display()))?;
            let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "wrote {} ({:.1} MiB, preset {}, {}, seed {}) in {:.1} s",
                out.display(),
                size as f64 / (1 << 20) as f64,
                preset,
                spec.dtype,
                seed,
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn opts_root(opts: &crate::models::PullOptions) -> String {
    match &opts.cache_dir {
        Some(d) => d.display().to_string(),
        None => "the model cache".into(),
    }
}

fn inspect(file: &std::path::Path, format: OutputFormat) -> anyhow::Result<()> {
    let model = ModelFile::open(file).with_context(|| format!("cannot load {}", file.display()))?;
    let cfg = model.config()?;
    let manifest = Manifest::compute(&model)?;
    let model_id = manifest.model_id();
    let tensors = model.tensor_list();
    let mut types: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in &tensors {
        let e = types.entry(t.dtype.clone()).or_default();
        e.0 += 1;
        e.1 += t.bytes.unwrap_or(0);
    }
    let group_bytes = manifest.group_bytes();
    match format {
        OutputFormat::Json => {
            let layers: Vec<u64> = (0..cfg.n_layers)
                .map(|l| group_bytes.get(&Group::Layer(l)).copied().unwrap_or(0))
                .collect();
            let v = serde_json::json!({
                "file": file,
                "format": model.format_name(),
                "model_id": model_id,
                "config": serde_json::to_value(&cfg)?,
                "tensor_types": types.iter().map(|(k, (n, b))| (k.clone(), serde_json::json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
                "embedding_bytes": group_bytes.get(&Group::Embedding).copied().unwrap_or(0),
                "head_bytes": group_bytes.get(&Group::Head).copied().unwrap_or(0),
                "layer_bytes": layers,
                "manifest": serde_json::to_value(&manifest)?,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        OutputFormat::Text => {
            println!("file:           {}", file.display());
            println!("format:         {}", model.format_name());
            println!("model id:       {model_id}");
            println!("name:           {}", cfg.name);
            println!("architecture:   {}", cfg.architecture);
            println!("layers:         {}", cfg.n_layers);
            println!("dim:            {}", cfg.dim);
            println!(
                "heads:          {} query, {} key/value (head dim {})",
                cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
            );
            println!("ffn dim:        {}", cfg.ffn_dim);
            println!("vocab:          {}", cfg.vocab_size);
            println!("context:        {}", cfg.context_length);
            println!(
                "rope:           base {}, dim {}, {:?}",
                cfg.rope_base, cfg.rope_dim, cfg.rope_style
            );
            println!("rms eps:        {:e}", cfg.rms_eps);
            println!(
                "output head:    {}",
                if cfg.tied_embeddings {
                    "tied to the embedding"
                } else {
                    "separate"
                }
            );
            println!("tensor types:");
            for (ty, (n, b)) in &types {
                println!(
                    "  {ty:<8} {n:>5} tensors  {:>10.2} MiB",
                    *b as f64 / (1 << 20) as f64
                );
            }
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            println!(
                "embedding:      {:.2} MiB",
                mib(group_bytes.get(&Group::Embedding).copied().unwrap_or(0))
            );
            println!("per layer:");
            for l in 0..cfg.n_layers {
                println!(
                    "  layer {l:>3}: {:.2} MiB",
                    mib(group_bytes.get(&Group::Layer(l)).copied().unwrap_or(0))
                );
            }
            println!(
                "head:           {:.2} MiB",
                mib(group_bytes.get(&Group::Head).copied().unwrap_or(0))
            );
        }
    }
    Ok(())
}

/// `synth::write_gguf_file` with a byte bar: written to `out.tmp`, renamed when complete,
/// so an interrupted run leaves nothing that looks like a model.
pub(crate) fn write_synth(spec: &synth::SynthSpec, out: &std::path::Path) -> anyhow::Result<()> {
    let total = synth::file_size(spec)?;
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let result = (|| -> anyhow::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let label = format!("synthesising {}", spec.preset.name);
        let mut w = super::progress::ProgressWriter::new(
            std::io::BufWriter::with_capacity(1 << 20, file),
            total,
            &label,
        );
        synth::write_gguf(spec, &mut w)?;
        std::io::Write::flush(&mut w)?;
        drop(w.finish());
        std::fs::rename(&tmp, out)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
