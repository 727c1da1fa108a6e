//! Files are input too: every size a model file (or a file shipped with it) declares is
//! checked against `file_limits` and the bytes present before anything is sized from it,
//! and each refusal is a typed error naming the field. Each test builds a valid file, then
//! corrupts one field.

use candle_core::quantized::gguf_file::Value;
use lamina_sharding::chat::{ChatMessage, ChatTemplate};
use lamina_sharding::config::ModelConfig;
use lamina_sharding::file_limits::*;
use lamina_sharding::gguf::{parse_header, GgufFile};
use lamina_sharding::safetensors::{check_header, SafetensorsModel};
use lamina_sharding::source::ModelFile;
use lamina_sharding::tokenizer::Tokenizer;
use lamina_sharding::{synth, Error};
use std::path::Path;

/// A GGUF v3 header written field by field, so that any field can be made wrong.
#[derive(Default)]
struct Gguf {
    kvs: Vec<u8>,
    n_kvs: u64,
    tensors: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

const T_U32: u32 = 4;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;

fn str_bytes(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Gguf {
    fn kv_u32(mut self, key: &str, v: u32) -> Self {
        str_bytes(&mut self.kvs, key);
        self.kvs.extend(T_U32.to_le_bytes());
        self.kvs.extend(v.to_le_bytes());
        self.n_kvs += 1;
        self
    }

    fn kv_u64(mut self, key: &str, v: u64) -> Self {
        str_bytes(&mut self.kvs, key);
        self.kvs.extend(T_U64.to_le_bytes());
        self.kvs.extend(v.to_le_bytes());
        self.n_kvs += 1;
        self
    }

    /// An array entry of `n` declared u32 elements, `present` of them actually written.
    fn kv_u32_array(mut self, key: &str, n: u64, present: u64) -> Self {
        str_bytes(&mut self.kvs, key);
        self.kvs.extend(T_ARRAY.to_le_bytes());
        self.kvs.extend(T_U32.to_le_bytes());
        self.kvs.extend(n.to_le_bytes());
        for i in 0..present {
            self.kvs.extend((i as u32).to_le_bytes());
        }
        self.n_kvs += 1;
        self
    }

    /// A raw key/value entry: the key, then `rest` (type and value) as given.
    fn kv_raw(mut self, key: &str, rest: &[u8]) -> Self {
        str_bytes(&mut self.kvs, key);
        self.kvs.extend(rest);
        self.n_kvs += 1;
        self
    }

    /// A tensor entry; `dims` innermost first, as GGUF stores them.
    fn tensor(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        str_bytes(&mut self.tensors, name);
        self.tensors.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.tensors.extend(d.to_le_bytes());
        }
        self.tensors.extend(ty.to_le_bytes());
        self.tensors.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    fn data(mut self, n: usize) -> Self {
        self.data = vec![0u8; n];
        self
    }

    fn bytes_with_counts(&self, n_tensors: u64, n_kvs: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(n_tensors.to_le_bytes());
        b.extend(n_kvs.to_le_bytes());
        b.extend(&self.kvs);
        b.extend(&self.tensors);
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(&self.data);
        b
    }

    fn bytes(&self) -> Vec<u8> {
        self.bytes_with_counts(self.n_tensors, self.n_kvs)
    }
}

fn parse(bytes: &[u8]) -> lamina_sharding::Result<lamina_sharding::gguf::Header> {
    parse_header(Path::new("bad.gguf"), bytes)
}

/// Asserts a `LimitExceeded` whose field contains `field`.
#[track_caller]
fn assert_limit<T>(r: lamina_sharding::Result<T>, field: &str, limit: u64) {
    match r {
        Err(Error::LimitExceeded {
            field: f, limit: l, ..
        }) if f.contains(field) && l == limit => {}
        Err(e) => panic!("expected a limit on `{field}`, got: {e}"),
        Ok(_) => panic!("expected a limit on `{field}`, got Ok"),
    }
}

#[track_caller]
fn assert_malformed<T>(r: lamina_sharding::Result<T>, words: &str) {
    match r {
        Err(e @ Error::Malformed { .. }) => {
            assert!(e.to_string().contains(words), "{e}")
        }
        Err(e) => panic!("expected Malformed ({words}), got: {e}"),
        Ok(_) => panic!("expected Malformed ({words}), got Ok"),
    }
}

#[test]
fn gguf_baseline_parses() {
    let g = Gguf::default()
        .kv_u32("general.alignment", 32)
        .kv_u32_array("a", 3, 3)
        .tensor("w", &[4, 2], 0, 0)
        .data(32);
    let h = parse(&g.bytes()).unwrap();
    assert_eq!(h.tensors[0].shape, vec![2, 4]);
    assert_eq!(h.tensors[0].size, Some(32));
}

#[test]
fn gguf_counts_above_the_limits() {
    let g = Gguf::default().data(1 << 16);
    assert_limit(
        parse(&g.bytes_with_counts(GGUF_MAX_TENSORS + 1, 0)),
        "tensor count",
        GGUF_MAX_TENSORS,
    );
    assert_limit(
        parse(&g.bytes_with_counts(0, u64::MAX)),
        "metadata entry count",
        GGUF_MAX_METADATA_ENTRIES,
    );
    // Under the limits but more than the file can hold: malformed, nothing allocated.
    assert_malformed(parse(&g.bytes_with_counts(0, 60_000)), "more than the file");
}

#[test]
fn gguf_string_lengths_are_bounded() {
    // A key declaring 2^40 bytes.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend((1u64 << 40).to_le_bytes());
    b.extend([0u8; 64]);
    assert_limit(parse(&b), "metadata key length", GGUF_MAX_STRING_BYTES);
    // A string value over the limit.
    let mut rest = T_STRING.to_le_bytes().to_vec();
    rest.extend((GGUF_MAX_STRING_BYTES + 1).to_le_bytes());
    let g = Gguf::default().kv_raw("tokenizer.chat_template", &rest);
    assert_limit(
        parse(&g.bytes()),
        "metadata `tokenizer.chat_template` string length",
        GGUF_MAX_STRING_BYTES,
    );
    // A string under the limit but past the end of the file.
    let mut rest = T_STRING.to_le_bytes().to_vec();
    rest.extend(1000u64.to_le_bytes());
    let g = Gguf::default().kv_raw("general.name", &rest);
    assert_malformed(parse(&g.bytes()), "past the end");
    // A tensor name over its own limit.
    let g = Gguf::default().tensor(&"n".repeat(2000), &[4], 0, 0);
    assert_limit(
        parse(&g.bytes()),
        "tensor name length",
        GGUF_MAX_TENSOR_NAME_BYTES,
    );
}

#[test]
fn gguf_array_lengths_are_bounded() {
    let g = Gguf::default().kv_u32_array("tokenizer.ggml.scores", u64::MAX, 0);
    assert_limit(
        parse(&g.bytes()),
        "metadata `tokenizer.ggml.scores` array length",
        GGUF_MAX_ARRAY_LEN,
    );
    // Under the limit, but 4 bytes per element are not there: refused before any
    // allocation of that size.
    let g = Gguf::default().kv_u32_array("tokenizer.ggml.scores", 1 << 20, 10);
    assert_malformed(parse(&g.bytes()), "runs past the end");
    // Nested deeper than arrays of arrays.
    let mut rest = T_ARRAY.to_le_bytes().to_vec();
    for _ in 0..3 {
        rest.extend(T_ARRAY.to_le_bytes());
        rest.extend(1u64.to_le_bytes());
    }
    rest.extend([0u8; 64]);
    let g = Gguf::default().kv_raw("deep", &rest);
    assert_malformed(parse(&g.bytes()), "nest too deeply");
    // An unknown value type names the key.
    let g = Gguf::default().kv_raw("odd", &99u32.to_le_bytes());
    assert_malformed(parse(&g.bytes()), "`odd` has unknown value type 99");
}

#[test]
fn gguf_tensor_dims_are_checked() {
    let g = Gguf::default().tensor("w", &[1, 1, 1, 1, 1], 0, 0).data(32);
    assert_limit(
        parse(&g.bytes()),
        "tensor `w` dimension count",
        GGUF_MAX_TENSOR_DIMS,
    );
    let g = Gguf::default().tensor("w", &[], 0, 0).data(32);
    assert_malformed(parse(&g.bytes()), "no dimensions");
    // The element count overflows u64.
    let g = Gguf::default()
        .tensor("w", &[1 << 32, 1 << 32, 1 << 32], 0, 0)
        .data(32);
    assert_malformed(parse(&g.bytes()), "too large");
    // The element count fits, but times 4 bytes of F32 does not: unchecked, it wrapped
    // to a small size that passed the bounds check.
    let g = Gguf::default().tensor("w", &[1 << 62, 1], 0, 0).data(32);
    assert_malformed(parse(&g.bytes()), "too large");
    // A dimension above ggml's int64.
    let g = Gguf::default().tensor("w", &[u64::MAX], 0, 0).data(32);
    assert_malformed(parse(&g.bytes()), "dimension");
    // A quantized row that is not whole blocks.
    let g = Gguf::default().tensor("w", &[33], 8, 0).data(64);
    assert_malformed(parse(&g.bytes()), "block size");
    // Bytes past the end of the file.
    let g = Gguf::default().tensor("w", &[16], 0, 0).data(32);
    assert_malformed(parse(&g.bytes()), "truncated");
    let g = Gguf::default().tensor("w", &[1], 0, u64::MAX - 31).data(32);
    assert_malformed(parse(&g.bytes()), "truncated");
}

#[test]
fn gguf_alignment_is_checked() {
    let t = |g: Gguf| g.tensor("w", &[8], 0, 0).data(32).bytes();
    assert_limit(
        parse(&t(Gguf::default().kv_u64("general.alignment", 1 << 40))),
        "general.alignment",
        GGUF_MAX_ALIGNMENT,
    );
    assert_malformed(
        parse(&t(Gguf::default().kv_u32("general.alignment", 0))),
        "power of two",
    );
    assert_malformed(
        parse(&t(Gguf::default().kv_u32("general.alignment", 24))),
        "power of two",
    );
    let g = Gguf::default().tensor("w", &[1], 0, 4).data(64);
    assert_malformed(parse(&g.bytes()), "not a multiple of the alignment");
}

/// The tiny synthetic model with one metadata value replaced.
fn tiny_with(key: &str, value: Value) -> ModelFile {
    let spec = synth::SynthSpec {
        preset: synth::preset("tiny").unwrap().clone(),
        dtype: synth::SynthDType::F32,
        seed: 1,
        n_layers_override: None,
    };
    let g = GgufFile::from_bytes("tiny", synth::gguf_bytes(&spec).unwrap()).unwrap();
    let mut md = g.metadata().clone();
    md.insert(key.to_string(), value);
    let mut bytes = Vec::new();
    {
        use candle_core::quantized::gguf_file;
        let tensors: Vec<(String, candle_core::quantized::QTensor)> = g
            .tensors()
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    g.qtensor(&t.name, &candle_core::Device::Cpu).unwrap(),
                )
            })
            .collect();
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<_> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut out = std::io::Cursor::new(&mut bytes);
        gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
    }
    ModelFile::from_gguf_bytes("tiny.gguf", bytes).unwrap()
}

#[track_caller]
fn assert_out_of_range<T: std::fmt::Debug>(r: lamina_sharding::Result<T>, key: &str) {
    match r {
        Err(Error::OutOfRange { key: k, .. }) if k == key => {}
        other => panic!("expected OutOfRange on `{key}`, got {other:?}"),
    }
}

#[test]
fn model_settings_are_bounded_at_load() {
    // A context length of 2^32 used to reach the RoPE tables and abort there.
    let m = tiny_with("llama.context_length", Value::U64(1 << 32));
    assert_out_of_range(m.config(), "llama.context_length");
    let m = tiny_with(
        "llama.context_length",
        Value::U32((MAX_CONTEXT_LENGTH + 1) as u32),
    );
    assert_out_of_range(m.config(), "llama.context_length");
    let m = tiny_with("llama.block_count", Value::U32(1_000_000));
    assert_out_of_range(m.config(), "llama.block_count");
    let m = tiny_with("llama.vocab_size", Value::I64(-1));
    assert_out_of_range(m.config(), "llama.vocab_size");
    let m = tiny_with("llama.feed_forward_length", Value::U32(0));
    assert_out_of_range(m.config(), "llama.feed_forward_length");
    // Nothing was loaded: the error is at config time, before any tensor is read.
    let m = tiny_with("llama.context_length", Value::U32(4096));
    assert_eq!(m.config().unwrap().context_length, 4096);
}

fn hf_config() -> serde_json::Value {
    serde_json::json!({
        "model_type": "llama",
        "hidden_size": 64,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
        "max_position_embeddings": 2048,
    })
}

#[test]
fn hf_config_values_are_bounded() {
    assert!(ModelConfig::from_hf_config(&hf_config()).is_ok());
    for (key, value) in [
        ("max_position_embeddings", serde_json::json!(1u64 << 32)),
        ("num_hidden_layers", serde_json::json!(100_000)),
        ("vocab_size", serde_json::json!(-5)),
        ("intermediate_size", serde_json::json!(u64::MAX)),
        ("head_dim", serde_json::json!(1 << 20)),
        ("num_key_value_heads", serde_json::json!(0)),
    ] {
        let mut c = hf_config();
        c[key] = value;
        assert_out_of_range(
            ModelConfig::from_hf_config(&c),
            &format!("config.json: {key}"),
        );
    }
    // A wrong type is named, not silently replaced by a default.
    let mut c = hf_config();
    c["max_position_embeddings"] = serde_json::json!("lots");
    let err = ModelConfig::from_hf_config(&c).unwrap_err();
    assert!(
        matches!(err, Error::BadMetadata { ref key, .. } if key == "config.json: max_position_embeddings"),
        "{err}"
    );
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("lamina-badfiles-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A valid safetensors file of one F32 tensor `[2, 3]`, through the `safetensors` crate.
fn st_bytes() -> Vec<u8> {
    let data = vec![0u8; 24];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &data).unwrap();
    safetensors::serialize([("model.norm.weight", view)], None).unwrap()
}

/// A safetensors file with the given JSON header and `data` bytes of data.
fn st_with_header(json: &str, data: usize) -> Vec<u8> {
    let mut b = (json.len() as u64).to_le_bytes().to_vec();
    b.extend(json.as_bytes());
    b.extend(vec![0u8; data]);
    b
}

#[test]
fn safetensors_headers_are_checked() {
    let p = Path::new("bad.safetensors");
    let ok = check_header(p, &st_bytes()).unwrap();
    assert_eq!(ok[0].shape, vec![2, 3]);
    // Header length above the limit, and past the end of the file.
    let mut b = st_bytes();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_limit(
        check_header(p, &b),
        "safetensors header length",
        SAFETENSORS_MAX_HEADER_BYTES,
    );
    let mut b = st_bytes();
    b[..8].copy_from_slice(&1000u64.to_le_bytes());
    assert_malformed(check_header(p, &b), "truncated");
    assert_malformed(check_header(p, &[1, 2, 3]), "too short");
    let t = |entry: &str, data: usize| st_with_header(&format!("{{\"t\":{entry}}}"), data);
    // Offsets outside the data section, or reversed.
    assert_malformed(
        check_header(
            p,
            &t(r#"{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#, 4),
        ),
        "not inside the data section",
    );
    assert_malformed(
        check_header(
            p,
            &t(r#"{"dtype":"F32","shape":[0],"data_offsets":[8,0]}"#, 16),
        ),
        "not inside",
    );
    // Shape times dtype overflows, or does not match the byte range.
    assert_malformed(
        check_header(
            p,
            &t(
                r#"{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}"#,
                0,
            ),
        ),
        "too large",
    );
    assert_malformed(
        check_header(
            p,
            &t(r#"{"dtype":"F32","shape":[3],"data_offsets":[0,8]}"#, 8),
        ),
        "takes 96 bits",
    );
    // Unknown dtype, and a header that is not an object.
    assert_malformed(
        check_header(
            p,
            &t(r#"{"dtype":"F33","shape":[1],"data_offsets":[0,4]}"#, 4),
        ),
        "tensor `t`",
    );
    assert_malformed(check_header(p, &st_with_header("[1,2]", 0)), "JSON object");
}

#[test]
fn safetensors_checkpoint_files_are_checked_before_mapping() {
    let dir = TempDir::new("st");
    std::fs::write(dir.0.join("config.json"), hf_config().to_string()).unwrap();
    let mut b = st_bytes();
    b[..8].copy_from_slice(&(SAFETENSORS_MAX_HEADER_BYTES + 1).to_le_bytes());
    std::fs::write(dir.0.join("model.safetensors"), &b).unwrap();
    assert_limit(
        SafetensorsModel::open(&dir.0),
        "safetensors header length",
        SAFETENSORS_MAX_HEADER_BYTES,
    );
    std::fs::write(dir.0.join("model.safetensors"), st_bytes()).unwrap();
    assert!(SafetensorsModel::open(&dir.0).is_ok());
    // config.json is read with a cap, whatever else is right.
    let mut big = hf_config().to_string();
    big.pop();
    big.push_str(&format!(
        ",\"pad\":\"{}\"}}",
        "x".repeat(CONFIG_JSON_MAX_BYTES as usize)
    ));
    std::fs::write(dir.0.join("config.json"), big).unwrap();
    assert_limit(
        SafetensorsModel::open(&dir.0),
        "config.json size",
        CONFIG_JSON_MAX_BYTES,
    );
}

fn word_level_tokenizer(max_id: u64) -> String {
    format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,"decoder":null,
        "model":{{"type":"WordLevel","vocab":{{"<unk>":0,"a":1,"b":{max_id}}},"unk_token":"<unk>"}}}}"#
    )
}

/// Regression (the `tokenizer_json` fuzz target's crash): a BPE merge whose result is
/// missing from the vocabulary made the `tokenizers` crate panic (a slice index) while
/// building its merge table; it is a typed error now, before that crate sees the file.
#[test]
fn a_bpe_merge_outside_the_vocabulary_is_an_error_not_a_panic() {
    let crash = r#"{"version":"1.0","truncation":null,"padding":null,
        "added_tokens":[{"id":5,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
    "post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},
        "model":{"type":"BPE","dropout":null,"~use_unkn":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallbAck":false,
        "vocab":{"h":8,"e":26},"merges":["h e","l l"]}}"#;
    assert!(matches!(
        Tokenizer::from_hf_json_bytes(crash.as_bytes(), None),
        Err(Error::Tokenizer(m)) if m.contains("not in the vocabulary")
    ));
    let short = crash
        .replace(
            r#""continuing_subword_prefix":null"#,
            r#""continuing_subword_prefix":"@@""#,
        )
        .replace(
            r#""vocab":{"h":8,"e":26}"#,
            r#""vocab":{"h":8,"e":26,"he":27}"#,
        );
    assert!(matches!(
        Tokenizer::from_hf_json_bytes(short.as_bytes(), None),
        Err(Error::Tokenizer(m)) if m.contains("shorter than the subword prefix")
    ));
}

#[test]
fn tokenizer_json_is_bounded() {
    let tok = Tokenizer::from_hf_json_bytes(word_level_tokenizer(2).as_bytes(), None).unwrap();
    assert_eq!(tok.vocab_size(), 3);
    // An id of 4e9 sized a table of 4e9 strings (about 100 GB).
    assert_limit(
        Tokenizer::from_hf_json_bytes(word_level_tokenizer(4_000_000_000).as_bytes(), None),
        "largest token id",
        MAX_VOCAB,
    );
    assert!(matches!(
        Tokenizer::from_hf_json_bytes(b"{\"model\": 7}", None),
        Err(Error::Tokenizer(_))
    ));
    // On disk the size is capped before parsing.
    let dir = TempDir::new("tok");
    let p = dir.0.join("tokenizer.json");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(TOKENIZER_JSON_MAX_BYTES + 1).unwrap();
    assert_limit(
        Tokenizer::from_hf_file(&p, None),
        "tokenizer.json size",
        TOKENIZER_JSON_MAX_BYTES,
    );
}

fn msgs() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "be brief"),
        ChatMessage::new("user", "hi"),
    ]
}

#[test]
fn chat_templates_are_bounded() {
    let t =
        ChatTemplate::new("{% for m in messages %}{{ m.content }}{% endfor %}", "", "").unwrap();
    assert_eq!(t.render(&msgs(), true).unwrap(), "be briefhi");
    // Source size.
    let big = "x".repeat(CHAT_TEMPLATE_MAX_BYTES + 1);
    assert_limit(
        ChatTemplate::new(&big, "", ""),
        "chat template source size",
        CHAT_TEMPLATE_MAX_BYTES as u64,
    );
    // Time: a loop of 10^10 iterations runs out of fuel.
    let t = ChatTemplate::new(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    assert_limit(
        t.render(&msgs(), true),
        "render instructions",
        CHAT_RENDER_FUEL,
    );
    // Output: 100 MB of text stops at the cap.
    let t = ChatTemplate::new(
        "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    assert_limit(
        t.render(&msgs(), true),
        "rendered chat prompt size",
        CHAT_RENDER_MAX_BYTES as u64,
    );
    // Recursion: an endless macro is an error, not a stack overflow.
    let t = ChatTemplate::new(
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "",
        "",
    )
    .unwrap();
    assert!(matches!(
        t.render(&msgs(), true),
        Err(Error::ChatTemplate(_))
    ));
}

/// The seed corpora of the file fuzz targets (`fuzz/corpus/<target>/`) are exactly what
/// the writers below make: small valid files of each format, from the synth writer and the
/// builders above, so the seeds cannot drift from the formats. To write them afresh:
/// `LAMINA_FUZZ_SEEDS=$PWD/fuzz/corpus cargo test -p lamina-sharding --test it
/// bad_files::fuzz_seeds`.
#[test]
fn fuzz_seeds_are_what_the_writers_make() {
    let committed = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let write_to = std::env::var_os("LAMINA_FUZZ_SEEDS").map(std::path::PathBuf::from);
    let put = |target: &str, name: &str, bytes: &[u8]| match &write_to {
        Some(root) => {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        None => {
            let p = committed.join(target).join(name);
            let have = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(
                have == bytes,
                "{} is not what its writer makes (rewrite with LAMINA_FUZZ_SEEDS)",
                p.display()
            );
        }
    };
    // GGUF: a one-layer model of the smallest legal shape (every metadata kind a real file
    // has: strings, u32/f32 values, token/score/type arrays), and hand-built headers.
    let micro = synth::Preset {
        name: "micro",
        n_layers: 1,
        dim: 8,
        n_heads: 2,
        n_kv_heads: 1,
        ffn_dim: 16,
        vocab_size: synth::MIN_VOCAB_SIZE,
        context_length: 64,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        tied_embeddings: true,
    };
    let spec = synth::SynthSpec {
        preset: micro,
        dtype: synth::SynthDType::F32,
        seed: 1,
        n_layers_override: None,
    };
    let micro = synth::gguf_bytes(&spec).unwrap();
    assert!(GgufFile::from_bytes("micro", micro.clone()).is_ok());
    put("gguf_header", "micro_f32.gguf", &micro);
    let hand = Gguf::default()
        .kv_u32("general.alignment", 32)
        .kv_u32_array("a", 3, 3)
        .tensor("w", &[32], 8, 0)
        .tensor("v", &[4, 2], 0, 64)
        .data(96);
    assert!(parse(&hand.bytes()).is_ok());
    put("gguf_header", "hand.gguf", &hand.bytes());
    // safetensors.
    put("safetensors_header", "one_f32.safetensors", &st_bytes());
    let data = [1u8; 16];
    let a = safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![2, 2], &data[..8])
        .unwrap();
    let b = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![4], &data[8..])
        .unwrap();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let two = safetensors::serialize([("a", a), ("b", b)], Some(meta)).unwrap();
    assert!(check_header(Path::new("two"), &two).is_ok());
    put("safetensors_header", "two_meta.safetensors", &two);
    // tokenizer.json: a word-level one and a byte-level BPE one.
    put(
        "tokenizer_json",
        "word_level.json",
        word_level_tokenizer(2).as_bytes(),
    );
    let bpe = r#"{"version":"1.0","truncation":null,"padding":null,
        "added_tokens":[{"id":5,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
        "normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
        "post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},
        "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,
        "vocab":{"h":0,"e":1,"l":2,"o":3,"he":4,"<s>":5,"ll":6,"Ġ":7},"merges":["h e","l l"]}}"#;
    assert!(Tokenizer::from_hf_json_bytes(bpe.as_bytes(), None).is_ok());
    put("tokenizer_json", "byte_level_bpe.json", bpe.as_bytes());
    // Chat templates: ChatML, a Llama-2-style one, one with a namespace and macros.
    let templates = [
        ("chatml.jinja", "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
        ("llama2.jinja", "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}{{ '[INST] ' + m.content | trim + ' [/INST]' }}{% elif m.role == 'system' %}{{ '<<SYS>>\n' + m.content + '\n<</SYS>>\n\n' }}{% else %}{{ ' ' + m.content + ' ' + eos_token }}{% endif %}{% endfor %}"),
        ("namespace.jinja", "{% set ns = namespace(n=0, sys='') %}{% macro tag(r) %}<{{ r|upper }}>{% endmacro %}{% for m in messages %}{% if m.role == 'system' %}{% set ns.sys = m.content %}{% else %}{% set ns.n = ns.n + 1 %}{{ tag(m.role) }}{{ m.content|tojson }}{% endif %}{% endfor %}{{ ns.n }} {{ ns.sys.strip() }}{% if add_generation_prompt %}<ASSISTANT>{% endif %}"),
    ];
    for (name, src) in templates {
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        t.render(&msgs(), true).unwrap();
        put("chat_template", name, src.as_bytes());
    }
}
