//! `lamina testnet kill|restart|status`: a killed node reads as dead and its layers as
//! uncovered; restarted, it has the same peer id (same data dir), a new pid in the state
//! file, and the mesh covers the model again and answers; `down` leaves no process.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::pipeline::*;
use lamina_testnet::{is_alive, TestnetState};
use serde_json::Value;

/// Runs `lamina testnet down` on drop, and SIGKILLs every pid the test saw.
struct Down(std::path::PathBuf, Vec<u32>);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = lamina_testnet::down(&self.0);
        }
        for pid in &self.1 {
            if lamina_testnet::is_our_node(*pid) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

fn lamina(args: &[&str], state: &std::path::Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .arg("testnet")
        .args(args)
        .arg("--state")
        .arg(state)
        .output()
        .expect("run lamina testnet");
    assert!(
        out.status.success(),
        "lamina testnet {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn status_json(state: &std::path::Path) -> Value {
    let out = lamina(&["status", "--format", "json"], state);
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// Polls `status --format json` until `pred` holds (30 s).
fn wait_for(state: &std::path::Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status_json(state);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never {what}: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_killed_node_restarts_with_its_peer_id_and_the_mesh_is_covered_again() {
    let Some(path) = model_path(STORIES) else {
        return;
    };
    let dir = TempDir::new("testnet-control");
    let state_path = dir.path().join("state.json");
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args([
            "testnet",
            "up",
            "--detach",
            "--nodes",
            "3",
            "--threads",
            "1",
            "--model",
        ])
        .arg(&path)
        .arg("--state")
        .arg(&state_path)
        .output()
        .expect("run testnet up");
    let mut guard = Down(state_path.clone(), Vec::new());
    assert!(
        out.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = TestnetState::read(&state_path).expect("state file");
    guard.1 = before.nodes.iter().map(|n| n.pid).collect();
    for n in &before.nodes {
        assert!(!n.args.is_empty(), "{} has its command line", n.id);
        assert_eq!(n.args[0], "node");
    }
    let s = status_json(&state_path);
    assert_eq!(s["complete"], true, "{s}");
    assert!(s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["alive"] == true));

    // Kill the first node: it is everyone's bootstrap peer, and its command line has no
    // --bootstrap, so the restart must find a live one.
    let victim = &before.nodes[0];
    let out = lamina(&["kill", "node-0"], &state_path);
    assert!(String::from_utf8_lossy(&out.stdout).contains("killed"));
    assert!(!is_alive(victim.pid), "node-0 is gone");
    let s = wait_for(&state_path, "saw node-0's layers uncovered", |s| {
        s["complete"] == false && s["seen_by"] != "node-0"
    });
    assert_eq!(s["nodes"][0]["alive"], false, "{s}");
    assert!(
        !s["uncovered"].as_array().unwrap().is_empty(),
        "node-0's layers are uncovered: {s}"
    );
    // Killing a dead node is not an error.
    let out = lamina(&["kill", "node-0", "--signal", "TERM"], &state_path);
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));

    let out = lamina(&["restart", "node-0"], &state_path);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&victim.peer_id),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after = TestnetState::read(&state_path).expect("state file");
    let node0 = &after.nodes[0];
    guard.1.push(node0.pid);
    assert_eq!(node0.peer_id, victim.peer_id, "same data dir, same peer id");
    assert_eq!(node0.layers, victim.layers);
    assert_ne!(node0.pid, victim.pid, "the state file has the new pid");
    assert!(is_alive(node0.pid));
    assert_eq!(
        after.nodes[1..],
        before.nodes[1..],
        "the others are unchanged"
    );
    // Restarting a running node is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["testnet", "restart", "node-0", "--state"])
        .arg(&state_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is running"));

    // Covered again, as every node sees it, and the restarted node answers.
    wait_for(&state_path, "covered again", |s| {
        s["complete"] == true
            && s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["alive"] == true)
    });
    let api = node0.api.clone().expect("node-0's API");
    lamina_testnet::wait_redundant(&api, 1, Duration::from_secs(30))
        .expect("node-0 sees the model covered");
    let resp = post_completion(
        &api,
        &serde_json::json!({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(resp["usage"]["completion_tokens"], 8, "{resp}");
    let text = lamina(&["status"], &state_path);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("coverage") && text.contains("complete"),
        "{text}"
    );

    // Down stops the restarted node too.
    lamina(&["down"], &state_path);
    for pid in &guard.1 {
        assert!(!is_alive(*pid), "pid {pid} is gone after down");
    }
}

fn post_completion(api: &str, body: &Value) -> Value {
    let addr = api.strip_prefix("http://").unwrap();
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read the response");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let json = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(json).expect("JSON body")
}
