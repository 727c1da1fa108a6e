//! Bad model files and bad requests give clear, typed errors naming the cause, and never
//! panic.

use crate::common::*;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use lamina_sharding::executor::{LogitRows, Shard, ShardInput};
use lamina_sharding::generate::{session_length, GenerateRequest, LocalChain};
use lamina_sharding::gguf::GgufFile;
use lamina_sharding::layers::LayerRange;
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;
use lamina_sharding::{synth, Error};
use std::collections::HashMap;

fn tiny_bytes() -> Vec<u8> {
    let spec = synth::SynthSpec {
        preset: synth::preset("tiny").unwrap().clone(),
        dtype: synth::SynthDType::Q8_0,
        seed: 1,
        n_layers_override: None,
    };
    synth::gguf_bytes(&spec).unwrap()
}

/// Rewrites a GGUF with edited metadata and tensors, through candle's writer.
fn rewrite(
    bytes: Vec<u8>,
    edit_md: impl FnOnce(&mut HashMap<String, Value>),
    keep_tensor: impl Fn(&str) -> bool,
) -> Vec<u8> {
    let g = GgufFile::from_bytes("in", bytes).unwrap();
    let mut md = g.metadata().clone();
    edit_md(&mut md);
    let tensors: Vec<(String, QTensor)> = g
        .tensors()
        .iter()
        .filter(|t| keep_tensor(&t.name))
        .map(|t| (t.name.clone(), g.qtensor(&t.name, &Device::Cpu).unwrap()))
        .collect();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
    out.into_inner()
}

fn open(bytes: Vec<u8>) -> lamina_sharding::Result<ModelFile> {
    ModelFile::from_gguf_bytes("test.gguf", bytes)
}

fn load_all(m: &ModelFile) -> lamina_sharding::Result<LocalChain> {
    let n = m.config()?.n_layers;
    LocalChain::load(m, &[lamina_sharding::layers::range(0, n)?], &Device::Cpu)
}

#[test]
fn truncated_file_is_named_truncated() {
    let bytes = tiny_bytes();
    for cut in [0, 3, 10, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = open(bytes[..cut].to_vec()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::Malformed { .. } | Error::BadMagic { .. }),
            "cut {cut}: {msg}"
        );
        if cut > 4 {
            assert!(
                msg.contains("truncated")
                    || msg.contains("ends early")
                    || msg.contains("past the end"),
                "cut {cut}: {msg}"
            );
        }
    }
}

#[test]
fn wrong_magic() {
    let mut bytes = tiny_bytes();
    bytes[..4].copy_from_slice(b"GGML");
    let err = open(bytes).unwrap_err();
    assert!(matches!(err, Error::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains("not a GGUF file"));
}

#[test]
fn unsupported_architecture() {
    let bytes = rewrite(
        tiny_bytes(),
        |md| {
            md.insert("general.architecture".into(), Value::String("mamba".into()));
        },
        |_| true,
    );
    let m = open(bytes).unwrap();
    let err = m.config().unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedArchitecture(ref a) if a == "mamba"),
        "{err}"
    );
    assert!(err.to_string().contains("mamba"));
}

#[test]
fn unsupported_tensor_type_names_the_tensor() {
    let mut bytes = tiny_bytes();
    // Patch the type of blk.1.attn_q.weight to IQ2_XXS (16), which candle cannot load.
    let name = b"blk.1.attn_q.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor name in header");
    let mut p = at + name.len();
    let n_dims = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
    p += 4 + 8 * n_dims;
    bytes[p..p + 4].copy_from_slice(&16u32.to_le_bytes());
    let m = open(bytes).unwrap();
    // A shard that does not need the tensor still loads.
    Shard::load(
        &m,
        lamina_sharding::layers::range(0, 1).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let err = load_all(&m).unwrap_err();
    match &err {
        Error::UnsupportedTensorType { name, dtype } => {
            assert_eq!(name, "blk.1.attn_q.weight");
            assert_eq!(dtype, "IQ2_XXS");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn missing_tensor_is_named_and_other_shards_still_load() {
    let bytes = rewrite(tiny_bytes(), |_| {}, |n| n != "blk.2.ffn_up.weight");
    let m = open(bytes).unwrap();
    let err = load_all(&m).unwrap_err();
    assert!(
        matches!(err, Error::MissingTensor(ref n) if n == "blk.2.ffn_up.weight"),
        "{err}"
    );
    // A shard reads only its own tensors.
    Shard::load(
        &m,
        lamina_sharding::layers::range(0, 2).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    Shard::load(
        &m,
        lamina_sharding::layers::range(3, 4).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
}

#[test]
fn missing_metadata_is_named() {
    let bytes = rewrite(
        tiny_bytes(),
        |md| {
            md.remove("llama.embedding_length");
        },
        |_| true,
    );
    let err = open(bytes).unwrap().config().unwrap_err();
    assert!(
        matches!(err, Error::MissingMetadata(ref k) if k == "llama.embedding_length"),
        "{err}"
    );
}

#[test]
fn wrong_tensor_shape_is_named() {
    // Claim a larger embedding than the tensors have.
    let bytes = rewrite(
        tiny_bytes(),
        |md| {
            md.insert("llama.feed_forward_length".into(), Value::U32(256));
        },
        |_| true,
    );
    let err = load_all(&open(bytes).unwrap()).unwrap_err();
    assert!(matches!(err, Error::TensorShape { .. }), "{err}");
}

#[test]
fn layer_range_out_of_bounds() {
    let m = open(tiny_bytes()).unwrap();
    let n = m.config().unwrap().n_layers;
    let err = Shard::load(
        &m,
        lamina_sharding::layers::range(2, n + 1).unwrap(),
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(matches!(err, Error::LayerRangeOutOfBounds { .. }), "{err}");
    assert!(err.to_string().contains(&format!("{n} layers")));
    assert!("5..2".parse::<LayerRange>().is_err());
    let err = lamina_sharding::layers::parse_split("0..2,3..4", n).unwrap_err();
    assert!(matches!(err, Error::BadSplit(_)), "{err}");
}

#[test]
fn prompt_longer_than_context() {
    let m = open(tiny_bytes()).unwrap();
    let ctx = m.config().unwrap().context_length;
    let req = GenerateRequest {
        prompt_ids: vec![5; ctx + 10],
        max_tokens: 4,
        sampling: SamplingParams::greedy(),
        stop: vec![],
    };
    let err = session_length(&req, ctx).unwrap_err();
    assert!(matches!(err, Error::ContextOverflow { .. }), "{err}");
    // The executor refuses too, without advancing the cache.
    let shard = Shard::load(
        &m,
        lamina_sharding::layers::range(0, 4).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let mut cache = shard.new_cache(8).unwrap();
    let err = shard
        .forward(&mut cache, ShardInput::Tokens(vec![5; 9]), LogitRows::Last)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ContextOverflow {
                needed: 9,
                limit: 8
            }
        ),
        "{err}"
    );
    assert_eq!(cache.len(), 0);
    assert!(shard.new_cache(ctx + 1).is_err());
}

#[test]
fn bad_step_inputs_are_refused_without_side_effects() {
    let m = open(tiny_bytes()).unwrap();
    let cfg = m.config().unwrap();
    let first = Shard::load(
        &m,
        lamina_sharding::layers::range(0, 2).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let second = Shard::load(
        &m,
        lamina_sharding::layers::range(2, 4).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let mut c1 = first.new_cache(16).unwrap();
    let mut c2 = second.new_cache(16).unwrap();
    // Token id outside the vocabulary.
    let err = first
        .forward(
            &mut c1,
            ShardInput::Tokens(vec![cfg.vocab_size as u32]),
            LogitRows::Last,
        )
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    // Hidden states of the wrong width.
    let h = candle_core::Tensor::zeros((2, cfg.dim + 1), candle_core::DType::F32, &Device::Cpu)
        .unwrap();
    let err = second
        .forward(&mut c2, ShardInput::Hidden(h), LogitRows::Last)
        .unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
    // Tokens to a mid-model shard; a cache of another shard.
    assert!(second
        .forward(&mut c2, ShardInput::Tokens(vec![1]), LogitRows::Last)
        .is_err());
    assert!(first
        .forward(&mut c2, ShardInput::Tokens(vec![1]), LogitRows::Last)
        .is_err());
    assert_eq!((c1.len(), c2.len()), (0, 0));
    // Empty prompt.
    let req = GenerateRequest {
        prompt_ids: vec![],
        max_tokens: 1,
        sampling: SamplingParams::greedy(),
        stop: vec![],
    };
    assert!(matches!(
        session_length(&req, 100),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn garbage_never_panics() {
    let bytes = tiny_bytes();
    // Flip bytes across the header; every outcome must be an Ok or an Err, never a panic.
    let header_len = 4096.min(bytes.len());
    let mut state = 0x9e3779b97f4a7c15u64;
    for _ in 0..400 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut b = bytes.clone();
        let at = (state as usize) % header_len;
        b[at] = (state >> 32) as u8;
        if let Ok(m) = open(b) {
            if let Ok(cfg) = m.config() {
                if cfg.n_layers <= 8
                    && cfg.dim <= 256
                    && cfg.vocab_size <= 1024
                    && cfg.context_length <= 4096
                {
                    let _ = load_all(&m);
                }
            }
            let _ = m.tokenizer();
        }
    }
}

#[test]
fn real_file_truncated_on_disk() {
    let Some(path) = model_path("stories260K.gguf") else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let dir = std::env::temp_dir().join(format!("lamina-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("truncated.gguf");
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    let err = ModelFile::open(&p).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let err = ModelFile::open(dir.join("absent.gguf")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
