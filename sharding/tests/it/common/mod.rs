//! Shared helpers of the integration tests: where the real models are, and how to fail
//! (in CI) or skip (elsewhere) when they are absent.
#![allow(dead_code)]

use std::path::PathBuf;

/// The folder of the shared real models: `$LAMINA_TEST_MODELS`, else `../shared/models`
/// beside the repository.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("LAMINA_TEST_MODELS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/models"),
    }
}

/// The path of a shared model file, or `None` (after saying so) when it is missing
/// outside CI. In CI (`CI=true`) a missing file fails the test: a skipped parity test
/// must never look like a passing one.
pub fn model_path(file: &str) -> Option<PathBuf> {
    let p = models_dir().join(file);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "required test model {} is missing (set LAMINA_TEST_MODELS to the shared models folder)",
            p.display()
        );
    }
    eprintln!("SKIPPED: test model {} not found", p.display());
    None
}

/// `reference.json` parsed.
pub fn reference() -> Option<serde_json::Value> {
    let p = model_path("reference.json")?;
    let text = std::fs::read_to_string(p).expect("read reference.json");
    Some(serde_json::from_str(&text).expect("parse reference.json"))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Top-1 minus top-2 of a logits row.
pub fn margin(logits: &[f32]) -> f32 {
    let mut a = f32::NEG_INFINITY;
    let mut b = f32::NEG_INFINITY;
    for &x in logits {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    a - b
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}
