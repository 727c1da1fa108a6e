//! Helpers of the HTTP API tests: a chain of `lamina node` processes whose first node
//! serves the API through a chain file, a plain HTTP/1.1 client over `std::net` (every
//! read bounded by a timeout), SSE parsing, and the single-process reference run.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use candle_core::Device;
use lamina_node::pipeline::ChainHop;
use lamina_sharding::generate::{generate, GenerateRequest, GenerationOutput, LocalChain};
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;
use serde_json::Value;

use crate::common::pipeline::{NodeProc, TempDir};

/// Bound on every socket read: a generation of the tests' sizes takes far less.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// A chain of nodes; the first serves the HTTP API through `chain_file`.
pub struct ApiChain {
    pub nodes: Vec<NodeProc>,
    pub chain: Vec<ChainHop>,
    pub api: String,
    pub chain_file: std::path::PathBuf,
    _dir: TempDir,
}

impl ApiChain {
    /// Starts one node per range (the first with `--api` and `api_args`), then writes the
    /// chain file.
    pub fn start(model: &Path, ranges: &[&str], api_args: &[&str]) -> Self {
        let dir = TempDir::new("api");
        let chain_file = dir.path().join("chain.json");
        let chain_arg = chain_file.to_str().expect("utf-8 temp path").to_owned();
        let mut first_args = vec!["--api", "127.0.0.1:0", "--api-chain", &chain_arg];
        first_args.extend_from_slice(api_args);
        let mut nodes = vec![NodeProc::start(model, ranges[0], &first_args)];
        for r in &ranges[1..] {
            nodes.push(NodeProc::start(model, r, &[]));
        }
        let chain: Vec<ChainHop> = nodes.iter().map(NodeProc::hop).collect();
        let api = nodes[0].ready["api"]
            .as_str()
            .expect("the first node's api address")
            .to_owned();
        let c = ApiChain {
            nodes,
            chain,
            api,
            chain_file,
            _dir: dir,
        };
        c.write_chain(&c.chain);
        c
    }

    /// Replaces the chain file (atomically: the node reads it on every request).
    pub fn write_chain(&self, chain: &[ChainHop]) {
        let tmp = self.chain_file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string(chain).expect("chain json")).expect("write");
        std::fs::rename(&tmp, &self.chain_file).expect("rename chain file");
    }
}

/// One HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

pub fn write_request(
    s: &mut TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) {
    write_request_with(s, addr, method, path, &[], content_type, body);
}

/// [`write_request`] with more header lines (`("Authorization", "Bearer KEY")`).
pub fn write_request_with(
    s: &mut TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &str,
) {
    let ct = content_type
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{ct}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write the request");
}

pub fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    s
}

/// Decodes a `Transfer-Encoding: chunked` body.
pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = std::str::from_utf8(&raw[..eol]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("hex chunk size");
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[(size + 2).min(raw.len())..];
    }
}

/// Sends one request and reads the whole response.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Resp {
    request_with(addr, method, path, &[], content_type, body)
}

/// [`request`] with more header lines.
pub fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &str,
) -> Resp {
    let mut s = connect(addr);
    write_request_with(&mut s, addr, method, path, headers, content_type, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = &raw[split + 4..];
    let status: u16 = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let chunked = headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body: String::from_utf8(body).expect("utf-8 body"),
    }
}

pub fn get(addr: &str, path: &str) -> Resp {
    request(addr, "GET", path, None, "")
}

pub fn post(addr: &str, path: &str, body: &Value) -> Resp {
    request(
        addr,
        "POST",
        path,
        Some("application/json"),
        &body.to_string(),
    )
}

/// Starts a streamed request and reads until `want` has arrived; returns the open socket
/// (dropping it is a client going away) and what was read.
pub fn start_stream(addr: &str, path: &str, body: &Value, want: &str) -> (TcpStream, String) {
    let mut s = connect(addr);
    write_request(
        &mut s,
        addr,
        "POST",
        path,
        Some("application/json"),
        &body.to_string(),
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(want) {
        let n = s.read(&mut buf).expect("read the stream");
        assert!(
            n > 0,
            "the stream ended before {want:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    (s, String::from_utf8_lossy(&seen).into_owned())
}

/// The `data:` payloads of an SSE body, checking the framing on the way.
pub fn sse_data(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "events end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("an event is one data line: {e:?}"))
                .to_owned()
        })
        .collect()
}

/// A streamed answer, put back together.
#[derive(Debug)]
pub struct Streamed {
    pub text: String,
    pub finish_reason: String,
    pub chunks: Vec<Value>,
    pub usage: Option<Value>,
}

/// Joins the chunks of a stream (chat deltas or completion texts), checking that it ends
/// with `[DONE]` and that exactly the last choice chunk has a finish reason.
pub fn join_stream(body: &str) -> Streamed {
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d:?}: {e}")))
        .collect();
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for c in &chunks {
        assert!(c.get("error").is_none(), "error in stream: {c}");
        let choices = c["choices"].as_array().expect("choices");
        if choices.is_empty() {
            usage = Some(c["usage"].clone());
            continue;
        }
        assert!(finish.is_none(), "a chunk after the finish: {c}");
        let ch = &choices[0];
        if let Some(t) = ch["text"].as_str() {
            text.push_str(t);
        }
        if let Some(t) = ch["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = ch["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    Streamed {
        text,
        finish_reason: finish.expect("a chunk with finish_reason"),
        chunks,
        usage,
    }
}

/// Asserts OpenAI's error shape and returns the error object.
pub fn assert_error(r: &Resp, status: u16, kind: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["type"], kind, "{v}");
    let obj = e.as_object().expect("error object");
    assert!(obj.contains_key("param") && obj.contains_key("code"), "{v}");
    e.clone()
}

/// The single-process greedy run: the reference the API must reproduce.
pub fn reference_run(
    model: &ModelFile,
    prompt_ids: Vec<u32>,
    max_tokens: usize,
    stop: Vec<String>,
) -> GenerationOutput {
    let cfg = model.config().expect("config");
    let chain = LocalChain::load(
        model,
        &[lamina_sharding::layers::range(0, cfg.n_layers).expect("range")],
        &Device::Cpu,
    )
    .expect("local chain");
    let tok = model.tokenizer().expect("tokenizer");
    let req = GenerateRequest {
        prompt_ids,
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop,
    };
    let len = lamina_sharding::generate::session_length(&req, cfg.context_length).expect("fits");
    let mut s = chain.session(len).expect("session");
    generate(&mut s, &tok, &req, cfg.context_length, |_| {}).expect("local generation")
}

/// Polls `/status` (bounded) until no generation runs.
pub fn wait_idle(addr: &str) -> Value {
    for _ in 0..600 {
        let st = get(addr, "/status").json();
        if st["api"]["active_requests"] == 0 {
            return st;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the node still runs a generation after 60 s");
}
