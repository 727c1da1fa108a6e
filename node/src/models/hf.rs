//! GGUF files from the Hugging Face Hub, through `hf-hub`'s blocking client.
//!
//! hf-hub keeps its own cache layout (blobs named by etag, symlinked snapshots); lamina wants
//! one plain file per model under a predictable name. So hf-hub downloads into a throwaway
//! cache inside the lamina cache root (the same filesystem), the blob is checked to be GGUF,
//! and only then renamed to its final name; the staging directory is removed either way.

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
    if dest.is_file() && check_gguf(&dest).is_ok() {
        opts.note(format!("cached: {}", dest.display()));
        return Ok(absolute);
    }
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
    create_dir(parent_of(&dest))?;
    std::fs::rename(&blob, &dest)
        .map_err(|e| PullError::io(format!("cannot move the model to {}", dest.display()), e))?;
    opts.note(format!("ready: {}", absolute.display()));
    Ok(absolute)
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
