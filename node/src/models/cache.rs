//! Where models live on disk, and the two rules that keep the cache trustworthy:
//! a file appears under its final name only by an atomic rename after it was verified, and
//! a verified file carries a `.sha256` record keyed by its size and mtime, so later pulls
//! trust it without re-reading 100 MB.
//!
//! Layout under the cache root:
//! - `NAME/FILE` for catalog models (`smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf`), with
//!   `NAME/FILE.sha256` beside it;
//! - `hf/OWNER/REPO/REVISION/FILE` for Hub files (`REVISION` is `main` when none is given);
//! - names starting with `.` are work in progress (temp files, pip and Hub staging dirs)
//!   and are never listed or resolved.

use super::{CatalogEntry, PullError};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Overrides the cache root.
pub const CACHE_ENV: &str = "LAMINA_MODEL_CACHE";

/// The cache root: `$LAMINA_MODEL_CACHE`, else `$XDG_CACHE_HOME/lamina/models`, else
/// `$HOME/.cache/lamina/models`, from the given values (the caller read them:
/// [`super::PullOptions::from_env`]). Empty values count as unset, and a relative `XDG_CACHE_HOME` is
/// ignored as the XDG spec requires.
pub fn cache_dir_from(
    lamina: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, PullError> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(lamina) {
        return Ok(dir);
    }
    if let Some(xdg) = set(xdg).filter(|p| p.is_absolute()) {
        return Ok(xdg.join("lamina").join("models"));
    }
    if let Some(home) = set(home) {
        return Ok(home.join(".cache").join("lamina").join("models"));
    }
    Err(PullError::NoCacheDir)
}

/// Where a catalog model's file lives.
pub fn catalog_path(root: &Path, entry: &CatalogEntry) -> PathBuf {
    root.join(&entry.name).join(&entry.file_name)
}

/// Where a Hub file lives.
pub fn hf_path(root: &Path, repo: &str, revision: Option<&str>, file: &str) -> PathBuf {
    let mut p = root.join("hf");
    for part in repo.split('/') {
        p.push(part);
    }
    p.push(revision.unwrap_or("main"));
    for part in file.split('/') {
        p.push(part);
    }
    p
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// `size mtime_ns`: what must be unchanged for a recorded hash to still hold.
fn stamp(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{} {mtime}", meta.len()))
}

/// True if `path` has a hash record for its current size and mtime naming `sha256`.
pub fn recorded_hash_matches(path: &Path, sha256: &str) -> bool {
    let (Some(now), Ok(record)) = (stamp(path), std::fs::read_to_string(sidecar(path))) else {
        return false;
    };
    let mut it = record.split_whitespace();
    let recorded_hash = it.next();
    let recorded_stamp = it.collect::<Vec<_>>().join(" ");
    recorded_hash == Some(sha256) && recorded_stamp == now
}

/// The sha256 a completed pull recorded for `path`, whatever the file is now (`None`: no
/// record, so no completed pull).
pub fn recorded_hash(path: &Path) -> Option<String> {
    let record = std::fs::read_to_string(sidecar(path)).ok()?;
    let hash = record.split_whitespace().next()?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hash.to_string())
}

/// Records that `path`, as it is now, hashes to `sha256`: the mark that the cache entry is
/// complete, so it is written last, after the file and its directory were synced. The
/// record is written atomically and synced too: a torn record would only cost a re-hash,
/// but a stale one must never read as valid.
pub fn record_hash(path: &Path, sha256: &str) -> Result<(), PullError> {
    let Some(now) = stamp(path) else {
        return Err(PullError::io(
            format!("cannot stat {}", path.display()),
            std::io::Error::other("vanished after writing"),
        ));
    };
    let dir = parent_of(path);
    let side = sidecar(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(dir)
        .map_err(|e| PullError::io(format!("cannot create a temp file in {}", dir.display()), e))?;
    writeln!(tmp, "{sha256} {now}")
        .map_err(|e| PullError::io(format!("cannot write {}", side.display()), e))?;
    write_durably(tmp, &side)
}

/// Writes a small text file next to a model (its pin), atomically and durably.
pub(crate) fn write_small(path: &Path, text: &str) -> Result<(), PullError> {
    let dir = parent_of(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(dir)
        .map_err(|e| PullError::io(format!("cannot create a temp file in {}", dir.display()), e))?;
    tmp.write_all(text.as_bytes())
        .map_err(|e| PullError::io(format!("cannot write {}", path.display()), e))?;
    write_durably(tmp, path)
}

/// Syncs a finished temp file, renames it to `dest` and syncs the directory, so that after
/// a crash `dest` is either absent (or the old file) or the whole new one, never a name
/// pointing at unwritten blocks.
pub(crate) fn write_durably(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<(), PullError> {
    tmp.as_file()
        .sync_all()
        .map_err(|e| PullError::io(format!("cannot flush {}", tmp.path().display()), e))?;
    tmp.persist(dest)
        .map_err(|e| PullError::io(format!("cannot write {}", dest.display()), e.error))?;
    sync_dir(parent_of(dest))
}

/// Syncs a directory so that renames and creations in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), PullError> {
    #[cfg(unix)]
    {
        let d = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| PullError::io(format!("cannot sync the directory {}", d.display()), e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Syncs a file's data (a download another library wrote) before it is renamed into place.
pub(crate) fn sync_file(path: &Path) -> Result<(), PullError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| PullError::io(format!("cannot flush {}", path.display()), e))
}

pub(crate) fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), PullError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| PullError::io(format!("cannot create {}", dir.display()), e))
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `r` into `w` while hashing, with a progress bar on a terminal (nothing extra
/// otherwise: callers print one line before and after). Returns the sha256 and byte count.
pub(crate) fn copy_hashing(
    mut r: impl Read,
    mut w: impl Write,
    total: u64,
    label: &str,
    quiet: bool,
) -> std::io::Result<(String, u64)> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        bar
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        n += k as u64;
        bar.set_position(n);
    }
    w.flush()?;
    bar.finish_and_clear();
    Ok((hex(&hasher.finalize()), n))
}

/// The sha256 of a file on disk.
pub(crate) fn hash_file(path: &Path, quiet: bool) -> Result<String, PullError> {
    let f = std::fs::File::open(path)
        .map_err(|e| PullError::io(format!("cannot open {}", path.display()), e))?;
    let total = f.metadata().map(|m| m.len()).unwrap_or(0);
    copy_hashing(f, std::io::sink(), total, "verifying", quiet)
        .map(|(h, _)| h)
        .map_err(|e| PullError::io(format!("cannot read {}", path.display()), e))
}

/// Crash leftovers older than this are removed by the next download; younger ones may
/// belong to a pull that is still running (pip is given 30 minutes at most).
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn is_stale(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_AFTER)
}

/// Removes what killed pulls left: `.pip-*` and `.hf-*` staging dirs in the root and
/// `.partial-*` temp files in model dirs. Best effort: a failure here must not fail a pull.
pub(crate) fn sweep_stale(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for ent in rd.flatten() {
        let path = ent.path();
        let name = ent.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with(".pip-") || name.starts_with(".hf-") {
            if is_stale(&path) {
                let _ = std::fs::remove_dir_all(&path);
            }
        } else if !name.starts_with('.') && name != "hf" && path.is_dir() {
            let Ok(files) = std::fs::read_dir(&path) else {
                continue;
            };
            for f in files.flatten() {
                let partial = f
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(".partial-"));
                if partial && is_stale(&f.path()) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }
}

/// A model found in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedModel {
    /// The spec that pulls it again (`smollm2-135m`, `hf:OWNER/REPO@REV/FILE`).
    pub spec: String,
    pub path: PathBuf,
    pub size: u64,
}

fn visible(name: &OsString) -> Option<String> {
    let s = name.to_str()?;
    (!s.starts_with('.')).then(|| s.to_string())
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<(String, PathBuf, std::fs::Metadata)>, PullError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PullError::io(format!("cannot list {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| PullError::io(format!("cannot list {}", dir.display()), e))?;
        let Some(name) = visible(&ent.file_name()) else {
            continue;
        };
        // A file deleted while we list is simply not listed.
        let Ok(meta) = std::fs::metadata(ent.path()) else {
            continue;
        };
        out.push((name, ent.path(), meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// GGUF files under `dir` (recursively), as paths relative to `dir`.
fn ggufs_under(
    dir: &Path,
    rel: &str,
    out: &mut Vec<(String, PathBuf, u64)>,
) -> Result<(), PullError> {
    for (name, path, meta) in read_dir_sorted(dir)? {
        let rel_name = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if meta.is_dir() {
            ggufs_under(&path, &rel_name, out)?;
        } else if meta.is_file() && name.to_ascii_lowercase().ends_with(".gguf") {
            out.push((rel_name, path, meta.len()));
        }
    }
    Ok(())
}

/// Everything in the cache at `root`; a missing root is an empty cache.
pub fn list(root: &Path) -> Result<Vec<CachedModel>, PullError> {
    let mut models = Vec::new();
    for (name, path, meta) in read_dir_sorted(root)? {
        if !meta.is_dir() {
            continue;
        }
        if name == "hf" {
            for (owner, owner_dir, m) in read_dir_sorted(&path)? {
                if !m.is_dir() {
                    continue;
                }
                for (repo, repo_dir, m) in read_dir_sorted(&owner_dir)? {
                    if !m.is_dir() {
                        continue;
                    }
                    for (rev, rev_dir, m) in read_dir_sorted(&repo_dir)? {
                        if !m.is_dir() {
                            continue;
                        }
                        let mut files = Vec::new();
                        ggufs_under(&rev_dir, "", &mut files)?;
                        for (file, path, size) in files {
                            let spec = if rev == "main" {
                                format!("hf:{owner}/{repo}/{file}")
                            } else {
                                format!("hf:{owner}/{repo}@{rev}/{file}")
                            };
                            models.push(CachedModel { spec, path, size });
                        }
                    }
                }
            }
        } else {
            let mut files = Vec::new();
            ggufs_under(&path, "", &mut files)?;
            for (_, path, size) in files {
                models.push(CachedModel {
                    spec: name.clone(),
                    path,
                    size,
                });
            }
        }
    }
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn cache_dir_resolution_order() {
        assert_eq!(
            cache_dir_from(o("/l"), o("/x"), o("/h")).unwrap(),
            PathBuf::from("/l")
        );
        assert_eq!(
            cache_dir_from(None, o("/x"), o("/h")).unwrap(),
            PathBuf::from("/x/lamina/models")
        );
        assert_eq!(
            cache_dir_from(o(""), o(""), o("/h")).unwrap(),
            PathBuf::from("/h/.cache/lamina/models")
        );
        assert_eq!(
            cache_dir_from(None, o("relative"), o("/h")).unwrap(),
            PathBuf::from("/h/.cache/lamina/models")
        );
        assert!(matches!(
            cache_dir_from(None, None, None),
            Err(PullError::NoCacheDir)
        ));
    }

    #[test]
    fn hf_layout() {
        let root = Path::new("/c");
        assert_eq!(
            hf_path(root, "a/b", None, "d/e.gguf"),
            PathBuf::from("/c/hf/a/b/main/d/e.gguf")
        );
        assert_eq!(
            hf_path(root, "a/b", Some("v1"), "e.gguf"),
            PathBuf::from("/c/hf/a/b/v1/e.gguf")
        );
    }

    #[test]
    fn hash_record_tracks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.gguf");
        std::fs::write(&f, b"GGUFabc").unwrap();
        let h = hash_file(&f, true).unwrap();
        assert_eq!(
            h,
            hex(&Sha256::digest(b"GGUFabc")),
            "hash_file agrees with sha2"
        );
        assert!(!recorded_hash_matches(&f, &h));
        record_hash(&f, &h).unwrap();
        assert!(recorded_hash_matches(&f, &h));
        assert!(!recorded_hash_matches(&f, &"0".repeat(64)));
        std::fs::write(&f, b"GGUFabcd").unwrap();
        assert!(!recorded_hash_matches(&f, &h), "size changed");
    }

    #[test]
    fn sweep_removes_only_old_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let day_ago = std::time::SystemTime::now() - 2 * STALE_AFTER;
        let age = |p: &Path| {
            std::fs::File::open(p)
                .unwrap()
                .set_modified(day_ago)
                .unwrap()
        };
        std::fs::create_dir_all(r.join("m")).unwrap();
        std::fs::write(r.join("m/x.gguf"), b"GGUF").unwrap();
        age(&r.join("m/x.gguf"));
        std::fs::write(r.join("m/.partial-old"), b"GG").unwrap();
        age(&r.join("m/.partial-old"));
        std::fs::write(r.join("m/.partial-new"), b"GG").unwrap();
        std::fs::create_dir_all(r.join(".pip-old")).unwrap();
        age(&r.join(".pip-old"));
        std::fs::create_dir_all(r.join(".hf-new")).unwrap();
        sweep_stale(r);
        assert!(r.join("m/x.gguf").exists());
        assert!(!r.join("m/.partial-old").exists());
        assert!(r.join("m/.partial-new").exists());
        assert!(!r.join(".pip-old").exists());
        assert!(r.join(".hf-new").exists());
        sweep_stale(&r.join("missing"));
    }

    #[test]
    fn list_skips_work_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("m")).unwrap();
        std::fs::write(r.join("m/x.gguf"), b"GGUF").unwrap();
        std::fs::write(r.join("m/x.gguf.sha256"), b"h 4 0").unwrap();
        std::fs::write(r.join("m/.partial-123"), b"GG").unwrap();
        std::fs::create_dir_all(r.join(".pip-1")).unwrap();
        std::fs::create_dir_all(r.join("hf/o/r/main")).unwrap();
        std::fs::write(r.join("hf/o/r/main/y.gguf"), b"GGUF1").unwrap();
        std::fs::create_dir_all(r.join("hf/o/r/v2")).unwrap();
        std::fs::write(r.join("hf/o/r/v2/y.gguf"), b"GGUF12").unwrap();
        let l = list(r).unwrap();
        let specs: Vec<_> = l.iter().map(|m| (m.spec.as_str(), m.size)).collect();
        assert_eq!(
            specs,
            vec![("hf:o/r/y.gguf", 5), ("hf:o/r@v2/y.gguf", 6), ("m", 4)]
        );
        assert!(list(&r.join("missing")).unwrap().is_empty());
    }
}
