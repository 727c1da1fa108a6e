//! API keys, quotas, usage and audit (issue 15, parts 4 and 5), on `lamina node`
//! processes serving stories260K whole (0..5) through a chain file:
//!
//! - `lamina keys add|list|revoke` as a user runs them;
//! - with `--api-keys`: no key and a wrong key 401, a right key 200, in OpenAI's shape; a
//!   key over `--rpm`, `--tokens-per-day` or `--concurrent` 429 with `Retry-After`;
//!   `/v1/usage`; the audit log (one line per request, key names and routes, no text);
//!   the day's counts survive a restart; a revoked key is refused without a restart;
//! - the official OpenAI client with `api_key=KEY`, and text in the audit log only with
//!   `--audit-content`;
//! - a non-loopback API without keys refuses to start unless `--api-open`;
//! - `lamina testnet up --api-keys` gives every node the keys, and each writes
//!   `audit.jsonl` in its data dir with the route through the testnet.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::api::*;
use crate::common::pipeline::*;

fn lamina(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(args)
        .env("LAMINA_LOG", "warn")
        .output()
        .expect("run lamina")
}

/// `lamina keys add`; returns the key it printed.
fn add_key(file: &Path, name: &str, limits: &[&str]) -> String {
    let f = file.to_str().expect("utf-8 path");
    let mut args = vec!["keys", "add", "--file", f, "--name", name];
    args.extend_from_slice(limits);
    let o = lamina(&args);
    assert!(
        o.status.success(),
        "keys add: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let key = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(key.starts_with("lam-") && key.len() == 68, "{key:?}");
    key
}

/// A `lamina node` serving all of stories260K with its API through a chain file of
/// itself, in a data dir the caller keeps (so a restart finds its counts).
struct ApiNode {
    child: Child,
    api: String,
    ready: Value,
}

impl ApiNode {
    fn start(model: &Path, data_dir: &Path, extra: &[&str]) -> Self {
        let chain_file = data_dir.join("chain.json");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lamina"))
            .arg("node")
            .arg("--model")
            .arg(model)
            .args([
                "--layers",
                "0..5",
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "1",
            ])
            .args(["--open", "--api", "127.0.0.1:0"])
            .arg("--api-chain")
            .arg(&chain_file)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lamina node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("node ready within 120 s");
        let ready: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
        let hop = json!([{
            "layers": ready["layers"], "addr": ready["listen"], "peer_id": ready["peer_id"],
        }]);
        std::fs::write(&chain_file, hop.to_string()).expect("write the chain file");
        let api = ready["api"].as_str().expect("api address").to_owned();
        ApiNode { child, api, ready }
    }

    fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Resp {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        match body {
            Some(b) => request_with(
                &self.api,
                method,
                path,
                &headers,
                Some("application/json"),
                &b.to_string(),
            ),
            None => request_with(&self.api, method, path, &headers, None, ""),
        }
    }
}

impl Drop for ApiNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn completion_body(max_tokens: usize) -> Value {
    json!({"prompt": "Once upon a time, there was a little girl", "max_tokens": max_tokens,
        "temperature": 0})
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not within 30 s: {what}");
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

fn assert_401(r: &Resp) {
    let e = assert_error(r, 401, "invalid_request_error");
    assert_eq!(e["code"], "invalid_api_key", "{}", r.body);
}

fn assert_429(r: &Resp) -> u64 {
    let e = assert_error(r, 429, "rate_limit_error");
    assert_eq!(e["code"], "rate_limit_exceeded", "{}", r.body);
    r.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a Retry-After in seconds: {}", r.headers))
}

#[test]
fn keys_cli_adds_lists_and_revokes_and_stores_hashes_only() {
    let dir = TempDir::new("keys-cli");
    let file = dir.path().join("keys.json");
    let f = file.to_str().unwrap();
    let a = add_key(&file, "alice", &["--rpm", "5", "--tokens-per-day", "1000"]);
    let b = add_key(&file, "bob", &[]);
    assert_ne!(a, b);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&a[4..]) && !text.contains(&b[4..]), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The same name twice, a zero limit and a bad name are refused.
    for args in [
        vec!["keys", "add", "--file", f, "--name", "alice"],
        vec!["keys", "add", "--file", f, "--name", "carol", "--rpm", "0"],
        vec!["keys", "add", "--file", f, "--name", "a b"],
    ] {
        assert!(!lamina(&args).status.success(), "{args:?}");
    }
    let o = lamina(&["keys", "list", "--file", f, "--format", "json"]);
    assert!(o.status.success());
    let list: Value = serde_json::from_slice(&o.stdout).expect("json list");
    assert_eq!(list[0]["name"], "alice");
    assert_eq!(list[0]["limits"]["rpm"], 5);
    assert_eq!(list[0]["limits"]["tokens_per_day"], 1000);
    assert_eq!(list[1]["name"], "bob");
    assert_eq!(list[1]["limits"]["rpm"], Value::Null);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("hash"));
    let o = lamina(&["keys", "list", "--file", f]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("alice") && text.contains("bob"), "{text}");

    assert!(lamina(&["keys", "revoke", "--file", f, "--name", "alice"])
        .status
        .success());
    let o = lamina(&["keys", "revoke", "--file", f, "--name", "alice"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("alice"));
    let o = lamina(&["keys", "list", "--file", f, "--format", "json"]);
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

#[test]
fn keys_quotas_usage_and_audit_hold_across_a_restart() {
    let Some(model) = model_path(STORIES) else {
        return;
    };
    let dir = TempDir::new("api-keys");
    let keys = dir.path().join("keys.json");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let alice = add_key(&keys, "alice", &[]);
    let bob = add_key(&keys, "bob", &["--rpm", "2"]);
    let carol = add_key(&keys, "carol", &["--tokens-per-day", "5"]);
    let dave = add_key(&keys, "dave", &["--concurrent", "1"]);
    let args = [
        "--api-keys",
        keys.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
    ];
    let node = ApiNode::start(&model, &data, &args);
    let peer = node.ready["peer_id"].as_str().unwrap().to_owned();
    let mut v1_requests = 0;

    // No key, a wrong key, a malformed header: 401 in OpenAI's shape.
    assert_401(&node.call("GET", "/v1/models", None, None));
    assert_401(&node.call("GET", "/v1/models", Some("lam-0000"), None));
    assert_401(&node.call(
        "POST",
        "/v1/completions",
        Some(""),
        Some(&completion_body(4)),
    ));
    v1_requests += 3;
    // Outside /v1 nothing is asked.
    assert_eq!(node.call("GET", "/status", None, None).status, 200);

    // The right key.
    let r = node.call("GET", "/v1/models", Some(&alice), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = node.call(
        "POST",
        "/v1/completions",
        Some(&alice),
        Some(&completion_body(8)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let usage = r.json()["usage"].clone();
    let (pt, ct) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    v1_requests += 2;

    // Over --rpm.
    for _ in 0..2 {
        assert_eq!(node.call("GET", "/v1/models", Some(&bob), None).status, 200);
    }
    let wait = assert_429(&node.call("GET", "/v1/models", Some(&bob), None));
    assert!((1..=60).contains(&wait), "{wait}");
    v1_requests += 3;

    // Over --tokens-per-day: the first completion is counted after it ends, the next
    // request is refused until midnight UTC.
    let r = node.call(
        "POST",
        "/v1/completions",
        Some(&carol),
        Some(&completion_body(4)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let wait = assert_429(&node.call("GET", "/v1/models", Some(&carol), None));
    assert!((1..=86_400).contains(&wait), "{wait}");
    v1_requests += 2;

    // Over --concurrent: a request whose body has not arrived holds dave's one slot. On a
    // loaded machine a poll may reach the node before the held request does, take the slot
    // for a moment, and get the held request refused (429, answered at once): then it is
    // sent again.
    let send_held = || {
        let mut held = connect(&node.api);
        write!(
            held,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {dave}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"prompt\""
        )
        .unwrap();
        held.flush().unwrap();
        held.set_nonblocking(true).unwrap();
        held
    };
    // Whether the node answered (or closed) the held request: it holds no slot then.
    let answered = |held: &std::net::TcpStream| {
        let mut b = [0u8; 1];
        !matches!(held.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    };
    let mut held = send_held();
    let mut held_sent = 1;
    let mut polls = 0;
    eventually("dave's slot taken", || {
        if answered(&held) {
            held = send_held();
            held_sent += 1;
        }
        polls += 1;
        node.call("GET", "/v1/models", Some(&dave), None).status == 429
    });
    let r = node.call("GET", "/v1/models", Some(&dave), None);
    assert_eq!(assert_429(&r), 1);
    drop(held);
    eventually("dave's slot freed", || {
        polls += 1;
        node.call("GET", "/v1/models", Some(&dave), None).status == 200
    });
    // The polls, the one above, and the held requests (the last one 400: its body never
    // came; any earlier one 429).
    v1_requests += polls + 1 + held_sent;

    // /v1/usage: alice's day so far (this request included).
    let r = node.call("GET", "/v1/usage", Some(&alice), None);
    v1_requests += 1;
    assert_eq!(r.status, 200, "{}", r.body);
    let u = r.json();
    assert_eq!(u["key"], "alice");
    assert_eq!(u["prompt_tokens"], pt);
    assert_eq!(u["completion_tokens"], ct);
    assert_eq!(u["total_tokens"], pt + ct);
    let alice_requests = u["requests"].as_u64().unwrap();
    assert!(alice_requests >= 3, "{u}");
    assert_eq!(u["limits"]["rpm"], Value::Null);
    let r = node.call("GET", "/v1/usage", Some(&bob), None);
    v1_requests += 1;
    assert!(assert_429(&r) > 0);
    let r = node.call("GET", "/v1/usage", Some(&dave), None);
    v1_requests += 1;
    assert_eq!(r.json()["limits"]["concurrent"], 1, "{}", r.body);

    // The audit log: one line per /v1 request, with key names and the route, no text.
    eventually("every audit line written", || {
        audit_lines(&audit).len() == v1_requests
    });
    let lines = audit_lines(&audit);
    let text = std::fs::read_to_string(&audit).unwrap();
    for k in [&alice, &bob, &carol, &dave] {
        assert!(!text.contains(&k[4..]), "a key in the audit log");
    }
    assert!(
        !text.contains("little girl"),
        "prompt text in the audit log"
    );
    assert!(lines
        .iter()
        .all(|l| l["request_id"].as_str().is_some_and(|s| s.len() == 32)));
    let unauth: Vec<_> = lines.iter().filter(|l| l["status"] == 401).collect();
    assert_eq!(unauth.len(), 3);
    assert!(unauth.iter().all(|l| l["key"].is_null()));
    let gen = lines
        .iter()
        .find(|l| l["key"] == "alice" && l["path"] == "/v1/completions")
        .expect("alice's completion");
    assert_eq!(gen["status"], 200);
    assert_eq!(gen["prompt_tokens"], pt);
    assert_eq!(gen["completion_tokens"], ct);
    assert_eq!(gen["route"], json!([{"peer_id": peer, "layers": "0..5"}]));
    assert!(gen["model"].as_str().is_some());
    assert!(gen["duration_ms"].as_u64().is_some());
    assert!(gen.get("prompt").is_none() && gen.get("completion").is_none());
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["key"] == "bob" && l["status"] == 429)
            .count(),
        2
    );

    // The day's counts survive a crash and a restart.
    let usage_file = data.join("api-usage.json");
    eventually("usage persisted", || {
        std::fs::read_to_string(&usage_file)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["alice"]["requests"] == alice_requests)
    });
    drop(node);
    let node = ApiNode::start(&model, &data, &args);
    let u = node.call("GET", "/v1/usage", Some(&alice), None).json();
    assert_eq!(u["requests"], alice_requests + 1, "{u}");
    assert_eq!(u["total_tokens"], pt + ct, "{u}");
    assert_429(&node.call("GET", "/v1/models", Some(&carol), None));

    // A revoked key is refused by the running node.
    let o = lamina(&[
        "keys",
        "revoke",
        "--file",
        keys.to_str().unwrap(),
        "--name",
        "alice",
    ]);
    assert!(o.status.success());
    assert_401(&node.call("GET", "/v1/models", Some(&alice), None));
    assert_eq!(
        node.call("GET", "/v1/models", Some(&dave), None).status,
        200
    );
}

/// A Python with `openai`: `LAMINA_PYTHON`; in CI its absence fails the test.
fn python() -> Option<PathBuf> {
    let p = PathBuf::from(
        std::env::var_os("LAMINA_PYTHON").unwrap_or_else(|| "/work/venvs/openai/bin/python".into()),
    );
    let ok = Command::new(&p)
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "no Python with the openai package ({p:?}); set LAMINA_PYTHON"
    );
    eprintln!("SKIPPED: no Python with the openai package ({p:?})");
    None
}

#[test]
fn official_openai_client_uses_the_key_and_audit_content_keeps_text() {
    let Some(model) = model_path(STORIES) else {
        return;
    };
    let Some(python) = python() else {
        return;
    };
    let dir = TempDir::new("api-keys-py");
    let keys = dir.path().join("keys.json");
    let audit = dir.path().join("audit.jsonl");
    let key = add_key(&keys, "py", &["--rpm", "100"]);
    let node = ApiNode::start(
        &model,
        dir.path(),
        &[
            "--api-keys",
            keys.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
            "--audit-content",
        ],
    );
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/python/openai_chat.py");
    let run = |k: &str| {
        Command::new(&python)
            .arg(&script)
            .arg(format!("http://{}/v1", node.api))
            .args([
                "--prompt",
                "Tell me a story",
                "--max-tokens",
                "6",
                "--api-key",
                k,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run the python script")
    };
    let out = run(&key);
    assert!(
        out.status.success(),
        "the script failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");
    let bad = run("lam-wrong");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("AuthenticationError") && err.contains("401"),
        "{err}"
    );

    // models, whole, streamed, then the refused one.
    eventually("4 audit lines", || audit_lines(&audit).len() == 4);
    let lines = audit_lines(&audit);
    let chats: Vec<_> = lines
        .iter()
        .filter(|l| l["path"] == "/v1/chat/completions")
        .collect();
    assert_eq!(chats.len(), 2);
    for l in &chats {
        assert_eq!(l["key"], "py");
        assert_eq!(l["prompt"][0]["content"], "Tell me a story", "{l}");
        assert_eq!(l["completion"], v["text"], "{l}");
    }
    assert_eq!(lines[3]["status"], 401);
    assert!(lines[3].get("completion").is_none());
}

/// Runs `lamina ARGS`, which must exit (within 30 s) unsuccessfully; returns its stderr.
fn fails_to_start(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(args)
        .env("LAMINA_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lamina");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lamina {args:?} started");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{args:?}");
    let out = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_non_loopback_api_without_keys_refuses_to_start_unless_open() {
    let Some(model) = model_path(STORIES) else {
        return;
    };
    let dir = TempDir::new("api-open");
    let m = model.to_str().unwrap();
    let d = dir.path().to_str().unwrap();
    let base = [
        "node",
        "--model",
        m,
        "--layers",
        "0..5",
        "--open",
        "--data-dir",
        d,
        "--api",
        "0.0.0.0:0",
    ];
    let err = fails_to_start(&base);
    assert!(
        err.contains("--api-keys") && err.contains("--api-open") && err.contains("0.0.0.0"),
        "{err}"
    );
    // A keys file that cannot be read is an error at start, not at the first request.
    let missing = dir.path().join("missing-keys.json");
    let mut args = base.to_vec();
    args.extend(["--api-keys", missing.to_str().unwrap()]);
    let err = fails_to_start(&args);
    assert!(err.contains("missing-keys.json"), "{err}");

    // With --api-open it serves.
    let node = NodeProc::start(&model, "0..5", &["--api", "0.0.0.0:0", "--api-open"]);
    assert!(node.ready["api"].as_str().is_some());
}

/// Runs `lamina testnet down` on drop (a failed assertion must not leave nodes running).
struct TestnetDown(PathBuf);

impl Drop for TestnetDown {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = Command::new(env!("CARGO_BIN_EXE_lamina"))
                .args(["testnet", "down", "--state"])
                .arg(&self.0)
                .status();
        }
    }
}

#[test]
fn testnet_up_with_api_keys_gives_every_node_the_keys_and_an_audit_log() {
    let Some(model) = model_path(STORIES) else {
        return;
    };
    let dir = TempDir::new("testnet-keys");
    let keys = dir.path().join("keys.json");
    let key = add_key(&keys, "tn", &[]);
    let state_path = dir.path().join("state.json");
    let _down = TestnetDown(state_path.clone());
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["testnet", "up", "--detach", "--nodes", "2", "--model"])
        .arg(&model)
        .arg("--state")
        .arg(&state_path)
        .arg("--api-keys")
        .arg(&keys)
        .output()
        .expect("run testnet up");
    assert!(
        out.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = lamina_testnet::TestnetState::read(&state_path).expect("state file");
    let peers: Vec<&str> = state.nodes.iter().map(|n| n.peer_id.as_str()).collect();
    for (i, n) in state.nodes.iter().enumerate() {
        let api = n
            .api
            .as_deref()
            .and_then(|a| a.strip_prefix("http://"))
            .expect("api");
        let call = |key: Option<&str>, path: &str, body: Option<&Value>| {
            let auth = key.map(|k| format!("Bearer {k}"));
            let h: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("Authorization", a)])
                .unwrap_or_default();
            match body {
                Some(b) => request_with(
                    api,
                    "POST",
                    path,
                    &h,
                    Some("application/json"),
                    &b.to_string(),
                ),
                None => request_with(api, "GET", path, &h, None, ""),
            }
        };
        assert_401(&call(None, "/v1/models", None));
        let r = call(Some(&key), "/v1/completions", Some(&completion_body(4)));
        assert_eq!(r.status, 200, "{}", r.body);
        let audit = n.data_dir.join("audit.jsonl");
        eventually("the node's audit lines", || audit_lines(&audit).len() == 2);
        let lines = audit_lines(&audit);
        assert_eq!(lines[0]["status"], 401);
        assert_eq!(lines[1]["key"], "tn");
        let route: Vec<&str> = lines[1]["route"]
            .as_array()
            .expect("route")
            .iter()
            .map(|h| h["peer_id"].as_str().expect("peer id"))
            .collect();
        assert_eq!(route, peers, "node {i}");
    }
}
