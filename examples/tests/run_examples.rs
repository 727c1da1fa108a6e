//! Every example runs: the Rust client through a mesh, the shell/curl example, the custom
//! split by hand, the in-process split, and the Python OpenAI client (also run by
//! `node/tests/openai_python.rs`). Real models from `../shared/models` (or
//! `$LAMINA_TEST_MODELS`); with `CI=true` a missing model fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn model(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LAMINA_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/models"));
    let p = dir.join(file);
    if p.exists() {
        return Some(p);
    }
    assert!(!in_ci(), "required test model {} is missing", p.display());
    eprintln!("SKIPPED: {} not found", p.display());
    None
}

/// `target/<profile>/`, from this test's own path (`target/<profile>/deps/run_examples-*`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The `lamina` binary and the examples, built by `cargo test --workspace`; built here
/// when this test runs alone.
fn artifacts() -> (PathBuf, PathBuf) {
    let dir = profile_dir();
    let lamina = dir.join("lamina");
    let example = dir.join("examples").join("mesh_client");
    if !lamina.exists() || !example.exists() {
        let release = dir.ends_with("release");
        let mut c = Command::new(env!("CARGO"));
        c.args([
            "build",
            "-p",
            "lamina-node",
            "-p",
            "lamina-examples",
            "--examples",
            "--bins",
        ]);
        if release {
            c.arg("--release");
        }
        assert!(c.status().expect("cargo build").success());
    }
    (lamina, example)
}

fn check(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lamina_testnet::down(&self.0);
    }
}

#[test]
fn every_example_runs() {
    let (Some(smol), Some(stories)) = (
        model("SmolLM2-135M-Instruct.Q4_1.gguf"),
        model("stories260K.gguf"),
    ) else {
        return;
    };
    let (lamina, mesh_client) = artifacts();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));

    // The shell/curl example and the custom split by hand.
    for script in ["shell/curl.sh", "shell/custom_split.sh"] {
        let out = Command::new("bash")
            .arg(root.join(script))
            .env("LAMINA", &lamina)
            .env("MODEL", &smol)
            .stdin(Stdio::null())
            .output()
            .expect("bash");
        let text = check(script, out);
        assert!(text.contains("covered"), "{script}: {text}");
        eprintln!("{script} ok");
    }

    // The Rust client API through a mesh.
    let dir = std::env::temp_dir().join(format!("lamina-examples-{}", std::process::id()));
    let state = dir.join("state.json");
    let mut opts = lamina_testnet::UpOptions::new(
        lamina.clone(),
        2,
        stories.clone(),
        state.clone(),
        dir.join("net"),
    );
    opts.threads = Some(1);
    opts.ready_timeout = Duration::from_secs(60);
    // Open: the example client joins without a member file.
    opts.open = true;
    let st = lamina_testnet::up(&opts).expect("testnet up");
    let _down = Down(state);
    let boot = lamina_testnet::bootstrap_addr(&st.nodes[0].p2p).expect("p2p address");
    let out = Command::new(&mesh_client)
        .arg(&stories)
        .arg(&boot)
        .arg("Once upon a time")
        .stdin(Stdio::null())
        .output()
        .expect("run mesh_client");
    let text = check("mesh_client", out);
    assert!(
        text.starts_with("Once upon a time") && text.len() > "Once upon a time".len() + 10,
        "{text}"
    );

    // The in-process split.
    let split = profile_dir().join("examples").join("local_split");
    let out = Command::new(split)
        .arg(&stories)
        .arg("Once upon a time")
        .output()
        .expect("local_split");
    check("local_split", out);
}
