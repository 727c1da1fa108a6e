//! GGUF files from the Hugging Face Hub, through `hf-hub`'s blocking client.
//!
//! hf-hub keeps its own cache layout (blobs named by etag, symlinked snapshots); lamina wants
//! one plain file per model under a predictable name. So hf-hub downloads into a throwaway
//! cache inside the lamina cache root (the same filesystem), the blob is checked to be GGUF,
//! and only then renamed to its final name; the staging directory is removed either way.
//!
//! Pinning: a completed pull records the file's sha256 (`FILE.sha256`, checked against the
//! Hub's own sha256, the etag of an LFS file) and the commit the revision resolved to
//! (`FILE.commit`). A later pull of the same spec accepts only those bytes: a cached file
//! that changed, or a branch that moved to different content while the file was deleted,
//! is refused ([`PullError::PinnedFileChanged`]) rather than silently replaced, and a
//! revision given as a full commit id must resolve to that commit. The file is synced,
//! renamed into place and its directory synced before the record that marks the entry
//! complete is written.

use super::cache::{self, create_dir, parent_of};
use super::{check_gguf, PullError, PullOptions};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// lamina's own endpoint override, checked before hf-hub's `HF_ENDPOINT`.
pub const ENDPOINT_ENV: &str = "LAMINA_HF_ENDPOINT";
/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The endpoint to use: the option (from `$LAMINA_HF_ENDPOINT` or `$HF_ENDPOINT`), else the
/// public Hub; without a trailing `/` (hf-hub appends `/{repo}/resolve/...`).
pub fn endpoint(opts: &PullOptions) -> String {
    let e = opts
        .hf_endpoint
        .clone()
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    e.trim_end_matches('/').to_string()
}

/// Pulls `file` of the model repo `repo` at `revision` (default `main`) into the cache at
/// `root`, or returns the cached copy without network access.
pub(crate) fn pull(
    repo: &str,
    revision: Option<&str>,
    file: &str,
    root: &Path,
    opts: &PullOptions,
) -> Result<PathBuf, PullError> {
    let dest = cache::hf_path(root, repo, revision, file);
    let absolute = std::path::absolute(&dest)
        .map_err(|e| PullError::io(format!("cannot make {} absolute", dest.display()), e))?;
    let pinned = cache::recorded_hash(&dest);
    if let (true, Some(pin)) = (dest.is_file(), &pinned) {
        if !cache::recorded_hash_matches(&dest, pin) {
            // Touched since the pull (size or mtime differ): only the same bytes are fine.
            let now = cache::hash_file(&dest, opts.quiet)?;
            if &now != pin {
                return Err(PullError::PinnedFileChanged {
                    what: dest.display().to_string(),
                    expected: pin.clone(),
                    actual: now,
                });
            }
            cache::record_hash(&dest, pin)?;
        }
        check_gguf(&dest)?;
        opts.note(format!("cached: {}", dest.display()));
        return Ok(absolute);
    }
    // No record: no pull of this spec completed (or one from before pinning); download.
    let endpoint = endpoint(opts);
    let rev = revision.unwrap_or("main");
    let url = format!("{endpoint}/{repo}/resolve/{rev}/{file}");
    opts.note(format!("downloading {url}"));
    create_dir(root)?;
    cache::sweep_stale(root);
    let staging = tempfile::Builder::new()
        .prefix(".hf-")
        .tempdir_in(root)
        .map_err(|e| PullError::io(format!("cannot create a temp dir in {}", root.display()), e))?;
    let api = ApiBuilder::from_cache(Cache::new(staging.path().to_path_buf()))
        .with_endpoint(endpoint)
        .with_token(opts.hf_token.clone())
        .with_progress(!opts.quiet && std::io::stderr().is_terminal())
        .build()
        .map_err(|e| hf_error(e, &url))?;
    let api_repo = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        rev.to_string(),
    ));
    // hf-hub unwraps a few things a server controls (a redirect without `Location`, an
    // out-of-range status); a bad server must cost an error, not the process.
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| api_repo.download(file)))
        .map_err(|_| PullError::HfProtocol {
            url: url.clone(),
            reason: "the client gave up on the server's response".into(),
        })?
        .map_err(|e| hf_error(e, &url))?;
    let commit = resolved_commit(&got);
    if let Some(requested) = revision.filter(|r| is_commit(r)) {
        if commit.as_deref() != Some(requested) {
            return Err(PullError::RevisionMismatch {
                what: url,
                requested: requested.to_string(),
                resolved: commit.unwrap_or_else(|| "an unknown commit".into()),
            });
        }
    }
    // `got` is a symlink into hf-hub's blob store; the blob is the real file.
    let blob = std::fs::canonicalize(&got)
        .map_err(|e| PullError::io(format!("cannot resolve {}", got.display()), e))?;
    check_gguf(&blob).map_err(|e| match e {
        PullError::NotGguf { found, .. } => PullError::NotGguf {
            what: url.clone(),
            found,
        },
        e => e,
    })?;
    let actual = cache::hash_file(&blob, opts.quiet)?;
    // hf-hub names a blob by its etag, which for an LFS file is the content's sha256.
    let etag = blob
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_matches('"').to_ascii_lowercase())
        .filter(|n| is_sha256(n));
    if let Some(expected) = etag {
        if expected != actual {
            return Err(PullError::HashMismatch {
                what: url,
                expected,
                actual,
            });
        }
    }
    if let Some(expected) = pinned {
        if expected != actual {
            return Err(PullError::PinnedFileChanged {
                what: url,
                expected,
                actual,
            });
        }
    }
    opts.note(format!("sha256 {actual} verified"));
    cache::sync_file(&blob)?;
    create_dir(parent_of(&dest))?;
    std::fs::rename(&blob, &dest)
        .map_err(|e| PullError::io(format!("cannot move the model to {}", dest.display()), e))?;
    cache::sync_dir(parent_of(&dest))?;
    if let Some(c) = &commit {
        cache::write_small(&commit_record(&dest), &format!("{c}\n"))?;
    }
    // Last: the record that marks the entry complete and pins its bytes.
    cache::record_hash(&dest, &actual)?;
    opts.note(format!("ready: {}", absolute.display()));
    Ok(absolute)
}

/// Where the commit a Hub file was resolved to is recorded.
pub fn commit_record(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".commit");
    PathBuf::from(s)
}

/// The commit hf-hub resolved the revision to: its snapshot directory
/// (`.../snapshots/COMMIT/FILE`).
fn resolved_commit(got: &Path) -> Option<String> {
    let mut parts = got.components().map(|c| c.as_os_str().to_str());
    parts.find(|p| *p == Some("snapshots"))?;
    parts
        .next()
        .flatten()
        .filter(|c| is_commit(c))
        .map(str::to_string)
}

/// A full git commit id (40 hex digits).
fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hf_error(e: ApiError, url: &str) -> PullError {
    if let ApiError::RequestError(req) = &e {
        if let ureq::Error::Status(404, _) = **req {
            return PullError::HfNotFound {
                url: url.to_string(),
            };
        }
    }
    PullError::Hf {
        url: url.to_string(),
        source: Box::new(e),
    }
}
