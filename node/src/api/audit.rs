//! The audit log (`--audit-log FILE`): one JSON line per `/v1` request, appended and
//! synced to disk one line at a time by a writer task, so a crash loses at most the
//! requests still in flight (and what sits in the queue, which the writer empties as fast
//! as the disk takes it).
//!
//! A line names the key (never the key itself), the request id (the trace id every hop
//! logs), the model, the token counts, the route (peer ids and layer ranges), the status
//! and the duration. Prompt and completion text are written only with `--audit-content`:
//! an operator must choose to keep what users wrote.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Lines waiting for the disk. Past this the line is dropped and counted (and logged), so
/// a stalled disk cannot make requests wait or memory grow.
pub const AUDIT_QUEUE: usize = 1024;

/// One hop of a generation's route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteHop {
    pub peer_id: String,
    pub layers: String,
}

/// One audit line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditLine {
    /// When the request arrived, RFC 3339 UTC.
    pub time: String,
    /// The key's name; `null` on a node without `--api-keys` or for a request without a
    /// valid key.
    pub key: Option<String>,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The chain the generation ran on last (after any failover); empty when there was
    /// no generation or it failed.
    pub route: Vec<RouteHop>,
    pub status: u16,
    pub duration_ms: u64,
    /// The prompt as the request gave it (`prompt` or `messages`), only with
    /// `--audit-content`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<serde_json::Value>,
    /// The generated text, only with `--audit-content`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
}

/// Why the audit log cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Where requests hand their lines.
#[derive(Debug)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditLine>,
    dropped: AtomicU64,
    /// Whether lines carry prompt and completion text.
    pub content: bool,
}

impl AuditSink {
    /// Opens `path` for appending (created with mode 0600: lines may name users and, with
    /// `content`, hold their text) and returns the sink and its writer, which runs until
    /// `stop` and then writes what is queued.
    pub async fn open(
        path: &Path,
        content: bool,
        stop: CancellationToken,
    ) -> Result<(Self, impl std::future::Future<Output = ()> + Send + 'static), AuditError> {
        let mut opts = tokio::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let file = opts.open(path).await.map_err(|source| AuditError {
            path: path.to_owned(),
            source,
        })?;
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE);
        let sink = Self {
            tx,
            dropped: AtomicU64::new(0),
            content,
        };
        Ok((sink, write_lines(file, path.to_owned(), rx, stop)))
    }

    /// Queues `line` without waiting.
    pub fn record(&self, line: AuditLine) {
        if self.tx.try_send(line).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(dropped = n, "audit queue full or closed; a line was lost");
        }
    }
}

async fn write_lines(
    mut file: tokio::fs::File,
    path: PathBuf,
    mut rx: mpsc::Receiver<AuditLine>,
    stop: CancellationToken,
) {
    loop {
        let line = tokio::select! {
            l = rx.recv() => l,
            () = stop.cancelled() => {
                // The API has stopped: write what is queued, then end.
                while let Ok(l) = rx.try_recv() {
                    write_one(&mut file, &path, &l).await;
                }
                return;
            }
        };
        match line {
            Some(l) => write_one(&mut file, &path, &l).await,
            None => return,
        }
    }
}

async fn write_one(file: &mut tokio::fs::File, path: &Path, line: &AuditLine) {
    let mut text = match serde_json::to_vec(line) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("audit line not serialisable: {e}");
            return;
        }
    };
    text.push(b'\n');
    let written = async {
        file.write_all(&text).await?;
        file.flush().await?;
        file.sync_data().await
    }
    .await;
    if let Err(e) = written {
        tracing::error!("cannot write the audit log {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_appended_one_per_record_and_text_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"old\":1}\n").unwrap();
        let stop = CancellationToken::new();
        let (sink, writer) = AuditSink::open(&path, false, stop.clone()).await.unwrap();
        let task = tokio::spawn(writer);
        for i in 0..3 {
            sink.record(AuditLine {
                key: Some("alice".into()),
                request_id: format!("r{i}"),
                status: 200,
                route: vec![RouteHop {
                    peer_id: "p".into(),
                    layers: "0..5".into(),
                }],
                ..AuditLine::default()
            });
        }
        stop.cancel();
        task.await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[1]["key"], "alice");
        assert_eq!(lines[3]["request_id"], "r2");
        assert_eq!(lines[2]["route"][0]["layers"], "0..5");
        assert!(lines[1].get("prompt").is_none());
        assert!(lines[1].get("completion").is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // An existing file keeps its mode; a new one is made 0600.
            let fresh = dir.path().join("new.jsonl");
            let (_s, _w) = AuditSink::open(&fresh, true, stop).await.unwrap();
            let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
