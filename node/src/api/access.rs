//! Who may use the API and how much: the keys (re-read when the keys file changes, so
//! `lamina keys revoke` takes effect without a restart), the quotas, and the day's usage
//! counts, persisted in `DATA_DIR/api-usage.json` after every change and loaded at start,
//! so a restart does not hand a key a fresh day's budget.
//!
//! The rules live in [`super::keys`] and [`super::quota`] (pure); this module holds their
//! state and does the file I/O.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::audit::AuditSink;
use super::keys::{KeyEntry, KeyRing, KeysError, KeysFile};
use super::quota::{InFlight, Quotas, Refusal, UsageBook};

/// Why the access layer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("API keys file {path}: {source}")]
    KeysIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API keys file {path}: {source}")]
    Keys { path: PathBuf, source: KeysError },
    #[error("API usage file {path}: {message}")]
    Usage { path: PathBuf, message: String },
    #[error(transparent)]
    Audit(#[from] super::audit::AuditError),
}

/// The keys file and when it was last read.
struct KeySource {
    path: PathBuf,
    /// Modification time and length of the file as last read.
    seen: Mutex<(Option<SystemTime>, u64, Arc<KeyRing>)>,
}

fn read_keys(path: &Path) -> Result<KeysFile, AccessError> {
    let text = std::fs::read_to_string(path).map_err(|source| AccessError::KeysIo {
        path: path.to_owned(),
        source,
    })?;
    KeysFile::parse(&text).map_err(|source| AccessError::Keys {
        path: path.to_owned(),
        source,
    })
}

fn stamp(path: &Path) -> Option<(Option<SystemTime>, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len()))
}

impl KeySource {
    fn open(path: &Path) -> Result<Self, AccessError> {
        let st = stamp(path);
        let ring = read_keys(path)?
            .ring()
            .map_err(|source| AccessError::Keys {
                path: path.to_owned(),
                source,
            })?;
        let (mtime, len) = st.unwrap_or((None, 0));
        Ok(Self {
            path: path.to_owned(),
            seen: Mutex::new((mtime, len, Arc::new(ring))),
        })
    }

    /// The current keys: re-read when the file's time or length changed. A file that
    /// cannot be read or parsed keeps the keys last read (a file being edited by hand
    /// must not lock everyone out, nor let anyone in), with a warning.
    fn ring(&self) -> Arc<KeyRing> {
        let now = stamp(&self.path);
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match now {
            Some((mtime, len)) if (mtime, len) != (seen.0, seen.1) => {
                match read_keys(&self.path).and_then(|f| {
                    f.ring().map_err(|source| AccessError::Keys {
                        path: self.path.clone(),
                        source,
                    })
                }) {
                    Ok(ring) => {
                        tracing::info!(keys = ring.len(), "API keys file re-read");
                        *seen = (mtime, len, Arc::new(ring));
                    }
                    Err(e) => tracing::warn!("{e}; keeping the keys read before"),
                }
            }
            Some(_) => {}
            None => tracing::warn!(
                "API keys file {} is gone; keeping the keys read before",
                self.path.display()
            ),
        }
        seen.2.clone()
    }
}

/// What the access layer is built from.
#[derive(Clone, Debug, Default)]
pub struct AccessOptions {
    /// The keys file; `None`: no keys are asked for.
    pub keys: Option<PathBuf>,
    /// Serve the API without keys on a non-loopback address (see [`check_exposure`]).
    pub open: bool,
    /// Where the day's usage counts are kept; `None`: in memory only.
    pub usage_file: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub audit_content: bool,
}

/// An API on `addr` without keys and not explicitly open: reachable by anyone who can
/// reach the machine, which must be a choice (`--api-open`), never a default.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the HTTP API on {addr} would be reachable from other machines with no API keys; \
     give --api-keys FILE (make keys with `lamina keys add`), or --api-open to serve it to \
     anyone, or an --api address on loopback (127.0.0.1)"
)]
pub struct OpenApiRefused {
    pub addr: std::net::SocketAddr,
}

/// Refuses an API on a non-loopback address without keys, unless `open`.
pub fn check_exposure(
    addr: std::net::SocketAddr,
    opts: &AccessOptions,
) -> Result<(), OpenApiRefused> {
    if addr.ip().is_loopback() || opts.keys.is_some() || opts.open {
        Ok(())
    } else {
        Err(OpenApiRefused { addr })
    }
}

/// The access state the API's middleware and handlers share.
pub struct Access {
    keys: Option<KeySource>,
    quotas: Mutex<Quotas>,
    usage: Option<watch::Sender<UsageBook>>,
    pub audit: Option<AuditSink>,
}

/// The tasks an [`Access`] needs run (usage and audit writers); they end on the token.
pub type Writers = Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;

fn now_ms() -> u64 {
    crate::ids::now_ms()
}

impl Access {
    /// No keys, no audit: the API as a loopback node without flags serves it.
    pub fn open() -> Self {
        Self {
            keys: None,
            quotas: Mutex::new(Quotas::default()),
            usage: None,
            audit: None,
        }
    }

    /// Reads the keys and the usage of today, opens the audit log; the writers must be
    /// spawned by the caller.
    pub async fn start(
        opts: &AccessOptions,
        stop: CancellationToken,
    ) -> Result<(Self, Writers), AccessError> {
        let mut writers: Writers = Vec::new();
        let keys = match &opts.keys {
            Some(p) => Some(KeySource::open(p)?),
            None => None,
        };
        let (quotas, usage) = match &opts.usage_file {
            Some(path) => {
                let book = read_usage(path)?;
                let quotas = Quotas::from_book(&book, now_ms());
                let (tx, rx) = watch::channel(quotas.book());
                writers.push(Box::pin(write_usage(path.clone(), rx, stop.clone())));
                (quotas, Some(tx))
            }
            None => (Quotas::default(), None),
        };
        let audit = match &opts.audit_log {
            Some(p) => {
                let (sink, writer) = AuditSink::open(p, opts.audit_content, stop).await?;
                writers.push(Box::pin(writer));
                Some(sink)
            }
            None => None,
        };
        Ok((
            Self {
                keys,
                quotas: Mutex::new(quotas),
                usage,
                audit,
            },
            writers,
        ))
    }

    /// Whether requests must carry a key.
    pub fn requires_keys(&self) -> bool {
        self.keys.is_some()
    }

    /// The entry of a presented key, if it is one of the current keys.
    pub fn find_key(&self, key: &str) -> Option<KeyEntry> {
        self.keys.as_ref()?.ring().find(key).cloned()
    }

    /// The entry named `name`.
    pub fn key_named(&self, name: &str) -> Option<KeyEntry> {
        self.keys.as_ref()?.ring().by_name(name).cloned()
    }

    fn quotas(&self) -> std::sync::MutexGuard<'_, Quotas> {
        match self.quotas.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Admits one request of `key` against its limits.
    pub fn admit(&self, key: &KeyEntry) -> Result<InFlight, Refusal> {
        let r = self.quotas().admit(&key.name, &key.limits, now_ms());
        if r.is_ok() {
            self.persist();
        }
        r
    }

    /// Counts a finished generation's tokens for `key`.
    pub fn add_tokens(&self, key: &str, prompt: u64, completion: u64) {
        self.quotas().add_tokens(key, prompt, completion, now_ms());
        self.persist();
    }

    /// Key `name`'s counts today and its requests in flight.
    pub fn usage(&self, name: &str) -> (super::quota::DayUsage, u32) {
        self.quotas().usage(name, now_ms())
    }

    fn persist(&self) {
        if let Some(tx) = &self.usage {
            let book = self.quotas().book();
            tx.send_replace(book);
        }
    }
}

fn read_usage(path: &Path) -> Result<UsageBook, AccessError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| AccessError::Usage {
            path: path.to_owned(),
            message: format!("not valid JSON ({e}); move it away to start counting afresh"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsageBook::new()),
        Err(e) => Err(AccessError::Usage {
            path: path.to_owned(),
            message: e.to_string(),
        }),
    }
}

/// Writes the latest counts after every change (whole file, renamed into place, so a
/// crash leaves the old or the new counts, never half of one). Changes that come faster
/// than the disk are folded into one write.
async fn write_usage(path: PathBuf, mut rx: watch::Receiver<UsageBook>, stop: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            r = rx.changed() => r.is_err(),
            () = stop.cancelled() => true,
        };
        let book = rx.borrow_and_update().clone();
        if let Err(e) = write_book(&path, &book).await {
            tracing::error!("cannot write API usage {}: {e}", path.display());
        }
        if stopping {
            return;
        }
    }
}

async fn write_book(path: &Path, book: &UsageBook) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(book).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, &text).await?;
    tokio::fs::rename(&tmp, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_without_keys_must_be_chosen() {
        let lan: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let lo: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let none = AccessOptions::default();
        assert!(check_exposure(lo, &none).is_ok());
        assert_eq!(
            check_exposure(lan, &none),
            Err(OpenApiRefused { addr: lan })
        );
        let open = AccessOptions {
            open: true,
            ..AccessOptions::default()
        };
        assert!(check_exposure(lan, &open).is_ok());
        let keyed = AccessOptions {
            keys: Some("k.json".into()),
            ..AccessOptions::default()
        };
        assert!(check_exposure(lan, &keyed).is_ok());
    }
}
