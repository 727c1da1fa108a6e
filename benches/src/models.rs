//! The models the bench runs on, and the fixed prompt fed to every implementation.

use anyhow::{bail, Context, Result};
use lamina_sharding::source::ModelFile;
use lamina_sharding::synth::{self, SynthDType, SynthSpec};
use std::path::{Path, PathBuf};

/// The real model of the comparison (read-only, shared; never copied).
pub const SMOLLM2_PATH: &str = "/work/shared/models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where synthetic models are written (`$LAMINA_BENCH_DIR`, else `/tmp/lamina-bench`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LAMINA_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/lamina-bench"))
}

/// A model of the comparison: a label for tables and the GGUF file all three runtimes read.
#[derive(Clone, Debug)]
pub struct BenchModel {
    pub label: String,
    pub path: PathBuf,
}

/// The synthetic model `preset` in `dtype`, written into `dir` once and reused afterwards
/// (a file of the wrong size, e.g. from an older writer, is rewritten).
pub fn ensure_synth(dir: &Path, preset: &str, dtype: SynthDType, seed: u64) -> Result<PathBuf> {
    let spec = SynthSpec::new(preset, dtype, seed)?;
    let path = dir.join(format!("{preset}-{dtype}-seed{seed}.gguf"));
    let size = synth::file_size(&spec)?;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "writing synthetic {preset} {dtype} ({:.0} MiB) to {} (once; reused afterwards)",
        size as f64 / (1 << 20) as f64,
        path.display()
    );
    let t = std::time::Instant::now();
    synth::write_gguf_file(&spec, &path)?;
    eprintln!("  written in {:.1} s", t.elapsed().as_secs_f64());
    Ok(path)
}

/// The sentence repeated to build prompts: ordinary English, chosen because SmolLM2's greedy
/// continuation of it has no near tie in its first dozen tokens (llama.cpp's top-2 logit
/// margins stay above 1.5), so the agreement check compares the runtimes rather than the
/// order of float sums. (A "quick brown fox" prompt had a 0.02 tie at the third token.)
pub const PROMPT_SENTENCE: &str =
    " Once upon a time, in a small village by the sea, there lived an old fisherman who";

/// Exactly `n` prompt token ids for `model`: its BOS (when the model adds one by default),
/// then the ids of [`PROMPT_SENTENCE`] repeated. Ids, not text, go to every runtime, so all
/// of them see the same tokens whatever their tokenizers would do.
pub fn prompt_ids(model: &ModelFile, n: usize) -> Result<Vec<u32>> {
    if n == 0 {
        bail!("the prompt needs at least one token");
    }
    let tok = model.tokenizer()?;
    let sentence = tok.encode(PROMPT_SENTENCE, false, false)?;
    if sentence.is_empty() {
        bail!("the tokenizer turned the prompt sentence into no tokens");
    }
    let mut ids = Vec::with_capacity(n);
    if tok.add_bos_default() {
        if let Some(bos) = tok.bos_id() {
            ids.push(bos);
        }
    }
    while ids.len() < n {
        let room = n - ids.len();
        ids.extend(sentence.iter().take(room));
    }
    Ok(ids)
}

/// Parses `1,2,3`.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .with_context(|| format!("bad token id `{p}`"))
        })
        .collect()
}

pub fn format_ids(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let ids = vec![1, 22, 333];
        assert_eq!(parse_ids(&format_ids(&ids)).unwrap(), ids);
        assert!(parse_ids("1,x").is_err());
    }

    #[test]
    fn prompt_has_exact_length() {
        let spec = SynthSpec::new("tiny", SynthDType::Q8_0, 0).unwrap();
        let model = ModelFile::from_gguf_bytes("tiny", synth::gguf_bytes(&spec).unwrap()).unwrap();
        for n in [1, 7, 64] {
            assert_eq!(prompt_ids(&model, n).unwrap().len(), n);
        }
    }
}
