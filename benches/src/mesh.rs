//! What the HTTP benches (`mesh`, `e2e`) share: finding the `lamina` binary, a testnet
//! that stops its nodes (and its link relays) when dropped, a streamed chat completion
//! measured as an OpenAI client sees it, and a Ctrl-C flag that turns an interrupt into an
//! ordinary error, so the drop guards run.

use anyhow::{bail, Context, Result};
use lamina_testnet::{TestnetState, UpOptions};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The chat message every HTTP bench sends: SmolLM2 writes well past 64 tokens on it.
pub const PROMPT: &str = "Write a long story about a lighthouse keeper.";

/// The `lamina` binary: `arg`, else `lamina` next to this executable.
pub fn lamina_exe(arg: Option<PathBuf>) -> Result<PathBuf> {
    let p = match arg {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("lamina"),
    };
    if !p.exists() {
        bail!(
            "{} not found: build it with cargo build --release -p lamina-node",
            p.display()
        );
    }
    Ok(p)
}

/// The `lamina` binary of a drill: `$LAMINA_BIN` if set, else `lamina` next to this
/// executable.
pub fn lamina_bin() -> Result<PathBuf> {
    lamina_exe(std::env::var_os("LAMINA_BIN").map(PathBuf::from))
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C (SIGINT) set the flag [`stopped`] reads instead of killing the process, so
/// that loops end with an error and the testnets' drop guards stop their nodes. A second
/// Ctrl-C exits at once (status 130).
pub fn install_ctrl_c() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered before this returns, so no early Ctrl-C slips past it.
    let first = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    })?;
    std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut sig = first;
                sig.recv().await;
                eprintln!("interrupted: stopping the testnets (Ctrl-C again to exit at once)");
                STOP.store(true, Ordering::SeqCst);
                sig.recv().await;
                std::process::exit(130);
            })
        })?;
    Ok(())
}

/// Whether Ctrl-C was pressed.
pub fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fails when Ctrl-C was pressed.
pub fn check_stop() -> Result<()> {
    if stopped() {
        bail!("interrupted");
    }
    Ok(())
}

/// A running testnet. Dropping it (also on error or panic) stops its nodes, then its link
/// relays.
pub struct Net {
    state_path: PathBuf,
    pub state: TestnetState,
    /// The relays in front of the nodes' data planes, when started with a link spec.
    pub links: Option<lamina_testnet::Links>,
}

impl Net {
    /// Starts a testnet (with link emulation when `opts.link` is set).
    pub fn up(opts: &UpOptions) -> Result<Self> {
        let t = lamina_testnet::up_with_links(opts)?;
        Ok(Self {
            state_path: opts.state.clone(),
            state: t.state,
            links: t.links,
        })
    }

    /// node-0's HTTP API (`http://host:port`).
    pub fn api(&self) -> Result<&str> {
        self.state
            .nodes
            .first()
            .and_then(|n| n.api.as_deref())
            .context("node-0 has no HTTP API")
    }

    /// Data-plane bytes the relays have sent on so far, both directions of every link
    /// (0 without relays).
    pub fn relayed_bytes(&self) -> u64 {
        self.links.as_ref().map_or(0, |l| {
            l.relays()
                .iter()
                .map(|r| {
                    let s = r.stats();
                    s.inbound.bytes + s.outbound.bytes
                })
                .sum()
        })
    }

    /// Datagrams the relays have dropped (loss model, full queue, send errors).
    pub fn relay_drops(&self) -> u64 {
        self.links.as_ref().map_or(0, |l| {
            l.relays()
                .iter()
                .map(|r| {
                    let s = r.stats();
                    [s.inbound, s.outbound]
                        .iter()
                        .map(|d| d.dropped_loss + d.dropped_overflow + d.send_errors)
                        .sum::<u64>()
                })
                .sum()
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Err(e) = lamina_testnet::down(&self.state_path) {
            eprintln!("warning: stopping {}: {e:#}", self.state_path.display());
        }
        drop(self.links.take());
    }
}

/// What one streamed request measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    /// Request sent -> first non-empty `delta.content`.
    #[serde(serialize_with = "as_ms")]
    pub ttft: Duration,
    /// Request sent -> the stream's end.
    #[serde(serialize_with = "as_ms")]
    pub total: Duration,
    /// `(completion_tokens - 1)` / (first -> last content delta).
    pub tokens_per_s: f64,
    pub completion_tokens: usize,
    /// `usage.prompt_tokens` (the chat template applied).
    pub prompt_tokens: usize,
    #[serde(skip)]
    pub text: String,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// One streamed `POST {api}/v1/chat/completions` of [`PROMPT`] at temperature 0, bounded
/// by `timeout`; ends early (with an error) on Ctrl-C.
pub fn stream_chat(api: &str, max_tokens: usize, timeout: Duration) -> Result<Sample> {
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let sent = Instant::now();
    let resp = ureq::post(&format!("{api}/v1/chat/completions"))
        .set("content-type", "application/json")
        .timeout(timeout)
        .send_string(&body.to_string());
    let resp = match resp {
        Ok(r) => r,
        // The body says why (the API answers errors as OpenAI-style JSON).
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            bail!(
                "POST {api}/v1/chat/completions: status {code}: {}",
                text.trim()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("POST {api}/v1/chat/completions")),
    };
    let (mut first, mut last) = (None, None);
    let mut text = String::new();
    let mut usage = None;
    let mut prompt_tokens = 0;
    for line in std::io::BufReader::new(resp.into_reader()).lines() {
        check_stop()?;
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(data).context("SSE chunk")?;
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            usage = Some(n as usize);
            prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
        }
        let delta = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
        if !delta.is_empty() {
            let now = sent.elapsed();
            first.get_or_insert(now);
            last = Some(now);
            text.push_str(delta);
        }
    }
    let total = sent.elapsed();
    let (Some(first), Some(last)) = (first, last) else {
        bail!("{api}: no content in the stream");
    };
    let completion_tokens = usage.context("no usage chunk in the stream")?;
    let decode = (last - first).as_secs_f64();
    Ok(Sample {
        ttft: first,
        total,
        tokens_per_s: completion_tokens.saturating_sub(1) as f64 / decode.max(1e-9),
        completion_tokens,
        prompt_tokens,
        text,
    })
}

/// `clients` streams of [`stream_chat`] started at once (behind a barrier): every
/// stream's sample and the wall time from the common start to the last stream's end. On
/// any failure, the first error, saying how many of the streams failed.
pub fn concurrent_streams(
    api: &str,
    clients: usize,
    max_tokens: usize,
    timeout: Duration,
) -> Result<(Vec<Sample>, Duration)> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (api, barrier) = (api.to_string(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                stream_chat(&api, max_tokens, timeout)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut samples = Vec::with_capacity(clients);
    let (mut failed, mut first_err) = (0, None);
    for h in handles {
        let e = match h.join() {
            Ok(Ok(s)) => {
                samples.push(s);
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("a client thread panicked"),
        };
        failed += 1;
        first_err.get_or_insert(e);
    }
    let wall = start.elapsed();
    if let Some(e) = first_err {
        return Err(e.context(format!(
            "{failed} of {clients} concurrent streams failed; the first"
        )));
    }
    Ok((samples, wall))
}

/// `median (min-max)` with `prec` decimals.
pub fn spread(v: &[f64], prec: usize) -> String {
    let (lo, hi) = crate::report::min_max(v);
    format!(
        "{:.prec$} ({lo:.prec$}-{hi:.prec$})",
        crate::report::median(v)
    )
}

/// Removes `dir` (a bench's scratch folder) on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
