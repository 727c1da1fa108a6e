//! The `lamina` command line, run as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn lamina(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(args)
        .env("LAMINA_LOG", "warn")
        .output()
        .expect("run lamina")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A shared real model; in CI a missing file fails the test instead of skipping it.
fn model(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LAMINA_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/models"));
    let p = dir.join(file);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("required test model {} is missing", p.display());
    }
    eprintln!("SKIPPED: {} not found", p.display());
    None
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "lamina failed: {}", stderr(o));
    serde_json::from_str(stdout(o).trim()).expect("one JSON object on stdout")
}

#[test]
fn default_model_runs_with_a_notice() {
    let o = lamina(&["generate", "--max-tokens", "8", "--format", "json", "hello"]);
    let v = json(&o);
    assert!(stderr(&o).contains("random-weight"), "{}", stderr(&o));
    assert_eq!(v["generated_token_ids"].as_array().unwrap().len(), 8);
    for k in ["prompt_token_ids", "text", "finish_reason"] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert!(v["timings"]["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["timings"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn stories_split_generation_matches_reference() {
    let Some(m) = model("stories260K.gguf") else {
        return;
    };
    let m = m.to_str().unwrap();
    let want: Vec<u64> = vec![
        432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408,
        419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394,
    ];
    for split in [None, Some("0..2,2..5"), Some("0..1,1..2,2..3,3..4,4..5")] {
        let mut args = vec![
            "generate",
            "--model",
            m,
            "--max-tokens",
            "32",
            "--format",
            "json",
        ];
        if let Some(s) = split {
            args.extend(["--layers-split", s]);
        }
        args.push("Once upon a time");
        let v = json(&lamina(&args));
        let got: Vec<u64> = v["generated_token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(got, want, "split {split:?}");
        assert_eq!(
            v["text"],
            ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw"
        );
        assert_eq!(v["finish_reason"], "length");
    }
}

/// `--chat` renders SmolLM2's own template, stops at `<|im_end|>`, and answers.
#[test]
fn smollm2_chat_answers_and_stops_at_im_end() {
    let Some(m) = model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let m = m.to_str().unwrap();
    for (q, must) in [
        ("What is 2 + 2?", "4"),
        ("What color is the sky on a clear day?", "blue"),
    ] {
        let v = json(&lamina(&[
            "generate",
            "--model",
            m,
            "--chat",
            "--max-tokens",
            "40",
            "--format",
            "json",
            q,
        ]));
        let text = v["text"].as_str().unwrap();
        assert!(text.to_lowercase().contains(must), "{q:?} -> {text:?}");
        let prompt: Vec<u64> = v["prompt_token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        // The template: <|im_start|>system ... <|im_end|> <|im_start|>user ... <|im_start|>assistant\n
        assert_eq!(prompt[0], 1, "starts with <|im_start|>");
        assert_eq!(prompt.iter().filter(|&&t| t == 1).count(), 3);
        assert_eq!(prompt.iter().filter(|&&t| t == 2).count(), 2);
        if q.starts_with("What is") {
            assert_eq!(
                v["finish_reason"], "stop",
                "{text:?} should end at <|im_end|>"
            );
            assert!(!text.contains("<|im_end|>"));
        }
    }
}

#[test]
fn bad_flags_and_files_are_clear_errors() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["generate", "--threads", "0", "x"], "thread count"),
        (
            vec!["generate", "--layers-split", "0..2,3..4", "x"],
            "layer split",
        ),
        (
            vec!["generate", "--layers-split", "0..9", "x"],
            "out of bounds",
        ),
        (
            vec!["generate", "--layers-split", "banana", "x"],
            "invalid layer range",
        ),
        (
            vec!["generate", "--model", "/nonexistent/model.gguf", "x"],
            "/nonexistent/model.gguf",
        ),
        (vec!["generate", "--temperature", "-1", "x"], "temperature"),
        (vec!["generate", "--top-p", "0", "x"], "top_p"),
        (
            vec!["model", "synth", "--preset", "nope", "--out", "/tmp/x.gguf"],
            "preset",
        ),
        (
            vec![
                "model",
                "synth",
                "--preset",
                "tiny",
                "--dtype",
                "q3_z",
                "--out",
                "/tmp/x.gguf",
            ],
            "q3_z",
        ),
        (vec!["model", "inspect", "/etc/hostname"], "not a GGUF file"),
    ];
    for (args, needle) in cases {
        let o = lamina(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: error should mention {needle:?}: {err}"
        );
    }
}

#[test]
fn synth_then_inspect_then_generate() {
    let dir = std::env::temp_dir().join(format!("lamina-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("tiny.gguf");
    let f = f.to_str().unwrap();
    let o = lamina(&[
        "model", "synth", "--preset", "tiny", "--dtype", "q4_0", "--seed", "3", "--out", f,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&lamina(&["model", "inspect", "--format", "json", f]));
    assert_eq!(v["config"]["n_layers"], 4);
    assert_eq!(v["model_id"].as_str().unwrap().len(), 64);
    assert_eq!(v["layer_bytes"].as_array().unwrap().len(), 4);
    // The same seed gives the same model id; the text report names it too.
    let text = stdout(&lamina(&["model", "inspect", f]));
    assert!(text.contains(v["model_id"].as_str().unwrap()), "{text}");
    assert!(text.contains("Q4_0"), "{text}");
    let g = json(&lamina(&[
        "generate",
        "--model",
        f,
        "--max-tokens",
        "4",
        "--format",
        "json",
        "--layers-split",
        "0..1,1..4",
        "abc",
    ]));
    assert_eq!(g["generated_token_ids"].as_array().unwrap().len(), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_real_model_reports_id_and_layers() {
    let Some(m) = model("stories260K.gguf") else {
        return;
    };
    let v = json(&lamina(&[
        "model",
        "inspect",
        "--format",
        "json",
        m.to_str().unwrap(),
    ]));
    assert_eq!(v["config"]["n_layers"], 5);
    assert_eq!(v["config"]["n_kv_heads"], 4);
    assert_eq!(v["config"]["tied_embeddings"], false);
    assert!(v["tensor_types"]["F32"]["tensors"].as_u64().unwrap() > 0);
    // Stable across runs: the id is a function of the bytes.
    let again = json(&lamina(&[
        "model",
        "inspect",
        "--format",
        "json",
        m.to_str().unwrap(),
    ]));
    assert_eq!(v["model_id"], again["model_id"]);
}
