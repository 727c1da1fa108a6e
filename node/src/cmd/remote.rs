//! Commands that talk to a running node over its HTTP API: `lamina generate --peer URL`
//! and `lamina status --peer URL`. They need no model file and no keys: any peer's API
//! plans the route and runs the generation.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::cli::{GenerateArgs, OutputFormat};

fn base(url: &str) -> String {
    let u = url.trim_end_matches('/');
    if u.starts_with("http://") || u.starts_with("https://") {
        u.to_string()
    } else {
        format!("http://{u}")
    }
}

/// Turns an HTTP error reply into the API's own message.
fn http_error(e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Status(code, r) => {
            let body = r.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(body);
            anyhow::anyhow!("the peer answered {code}: {msg}")
        }
        e => anyhow::anyhow!("cannot reach the peer: {e}"),
    }
}

/// `lamina generate --peer URL PROMPT`: streams the completion (or the chat reply with
/// `--chat`) from any node of a mesh.
pub fn generate(args: &GenerateArgs, peer: &str) -> anyhow::Result<()> {
    let url = base(peer);
    let stop: Vec<&str> = args.stop.iter().map(String::as_str).collect();
    let mut body = json!({
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repeat_penalty,
        "seed": args.seed,
        "stop": stop,
        "stream": true,
        "stream_options": {"include_usage": true},
        "activation_dtype": args.activation_dtype.to_string(),
    });
    let endpoint = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": args.prompt}));
        body["messages"] = json!(messages);
        "/v1/chat/completions"
    } else {
        body["prompt"] = json!(args.prompt);
        "/v1/completions"
    };
    let t0 = Instant::now();
    let resp = ureq::post(&format!("{url}{endpoint}"))
        .timeout(Duration::from_secs(3600))
        .set("content-type", "application/json")
        .send_string(&body.to_string())
        .map_err(http_error)?;
    let mut text = String::new();
    let mut first: Option<Duration> = None;
    let mut usage = Value::Null;
    let mut finish = Value::Null;
    let stdout = std::io::stdout();
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.context("reading the stream")?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).context("a stream chunk is not JSON")?;
        if let Some(e) = v.get("error") {
            bail!("the peer failed mid-stream: {}", e["message"]);
        }
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
        let c = &v["choices"][0];
        let piece = c["delta"]["content"]
            .as_str()
            .or(c["text"].as_str())
            .unwrap_or("");
        if !piece.is_empty() {
            first.get_or_insert_with(|| t0.elapsed());
            text.push_str(piece);
            if args.format == OutputFormat::Text {
                let mut o = stdout.lock();
                write!(o, "{piece}")?;
                o.flush()?;
            }
        }
        if !c["finish_reason"].is_null() {
            finish = c["finish_reason"].clone();
        }
    }
    let total = t0.elapsed();
    let tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
    let ttft = first.unwrap_or(total);
    let decode_secs = (total - ttft).as_secs_f64();
    let tps = if tokens > 1 && decode_secs > 0.0 {
        (tokens - 1) as f64 / decode_secs
    } else {
        0.0
    };
    match args.format {
        OutputFormat::Text => {
            println!();
            eprintln!(
                "[{tokens} tokens, first after {:.0} ms, {tps:.1} tokens/s, finish: {}]",
                ttft.as_secs_f64() * 1e3,
                finish.as_str().unwrap_or("?")
            );
        }
        OutputFormat::Json => println!(
            "{}",
            json!({"text": text, "finish_reason": finish, "usage": usage,
                   "time_to_first_token_ms": ttft.as_secs_f64() * 1e3, "tokens_per_sec": tps})
        ),
    }
    Ok(())
}

/// `GET /status` of a peer.
pub fn fetch_status(peer: &str) -> anyhow::Result<Value> {
    let url = format!("{}/status", base(peer));
    let body = ureq::get(&url)
        .timeout(Duration::from_secs(10))
        .call()
        .map_err(http_error)?
        .into_string()?;
    serde_json::from_str(&body).with_context(|| format!("{url} is not JSON"))
}

/// `lamina status --peer URL`: the mesh as that peer sees it.
pub fn status(peer: &str, format: OutputFormat) -> anyhow::Result<()> {
    let s = fetch_status(peer)?;
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        OutputFormat::Text => print!("{}", render_status(&s)),
    }
    Ok(())
}

/// A readable coverage map: one row per peer with its range drawn over the layers, then
/// the servers per layer and the last route.
pub fn render_status(s: &Value) -> String {
    let n = s["n_layers"].as_u64().unwrap_or(0) as usize;
    let mut out = String::new();
    let short = |p: &str| {
        p.chars()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
    };
    out.push_str(&format!(
        "model {} ({} layers), seen from ..{}: {}\n",
        s["model_id"]
            .as_str()
            .map_or("?", |m| &m[..m.len().min(16)]),
        n,
        short(s["peer_id"].as_str().unwrap_or("")),
        if s["complete"].as_bool() == Some(true) {
            "covered".to_string()
        } else {
            format!(
                "NOT covered (layers {} have no server)",
                s["uncovered"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            )
        }
    ));
    let empty = vec![];
    for p in s["peers"].as_array().unwrap_or(&empty) {
        let layers = p["layers"].as_str().unwrap_or("none");
        let mut bar = vec!['.'; n];
        if let Some((a, b)) = layers.split_once("..") {
            if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                for c in bar.iter_mut().take(b.min(n)).skip(a) {
                    *c = '#';
                }
            }
        }
        out.push_str(&format!(
            "  ..{} {} {:>7} {:<8} {:>7.1} tok/s  rtt {:>6}  slots {:>3}{}{}\n",
            short(p["peer_id"].as_str().unwrap_or("")),
            bar.iter().collect::<String>(),
            layers,
            p["state"].as_str().unwrap_or("?"),
            p["tokens_per_sec"].as_f64().unwrap_or(0.0),
            p["rtt_ms"]
                .as_f64()
                .map_or("-".to_string(), |r| format!("{r:.2}ms")),
            p["free_slots"].as_u64().unwrap_or(0),
            if p["self"].as_bool() == Some(true) {
                "  (this node)"
            } else {
                ""
            },
            if p["reachable"].as_bool() == Some(false) {
                "  UNREACHABLE"
            } else {
                ""
            },
        ));
    }
    let counts: String = s["coverage"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|l| match l["servers"].as_u64().unwrap_or(0) {
            0 => '0',
            k @ 1..=9 => char::from(b'0' + k as u8),
            _ => '+',
        })
        .collect();
    out.push_str(&format!("  servers per layer    {counts}\n"));
    if let Some(r) = s.get("last_route").filter(|r| !r.is_null()) {
        if let Some(hops) = r["hops"].as_array() {
            let hops: Vec<String> = hops
                .iter()
                .map(|h| {
                    format!(
                        "{} @ ..{}",
                        h["layers"].as_str().unwrap_or("?"),
                        short(h["peer"].as_str().unwrap_or(""))
                    )
                })
                .collect();
            out.push_str(&format!(
                "  last route: {} (est. {:.2} ms/token)\n",
                hops.join(" -> "),
                r["est_ms_per_token"].as_f64().unwrap_or(0.0)
            ));
        } else if let Some(e) = r["error"].as_str() {
            out.push_str(&format!("  last route: {e}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_map_draws_ranges_and_counts() {
        let s = json!({
            "model_id": "f95b4e49c8cd7b911f7a", "n_layers": 6, "peer_id": "12D3KooWAAAAAAAA",
            "complete": false, "uncovered": ["4..6"],
            "peers": [{"peer_id": "12D3KooWBBBBBBBB", "layers": "0..4", "state": "serving",
                       "tokens_per_sec": 100.0, "rtt_ms": 0.25, "free_slots": 8, "self": true, "reachable": true}],
            "coverage": [{"servers": 1}, {"servers": 1}, {"servers": 1}, {"servers": 1}, {"servers": 0}, {"servers": 0}],
            "last_route": {"error": "layers 4..6 are not served by any live peer"}
        });
        let t = render_status(&s);
        assert!(t.contains("####.."), "{t}");
        assert!(t.contains("111100"), "{t}");
        assert!(t.contains("NOT covered (layers 4..6"), "{t}");
        assert!(t.contains("(this node)"), "{t}");
    }
}
