//! Running a worker as a child process and reading its one JSON line.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The binary that worker processes run: a copy of this executable taken at first use, so
/// that a rebuild of `target/release/lamina-bench` by someone else in the middle of a long
/// run cannot mix two versions in one table. Falls back to the executable itself.
pub fn worker_exe() -> Result<PathBuf> {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = EXE.get() {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let dir = crate::models::cache_dir();
    let copy = dir.join(format!("lamina-bench-worker-{}", std::process::id()));
    let chosen = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::copy(&me, &copy))
        .map_or(me, |_| copy);
    Ok(EXE.get_or_init(|| chosen).clone())
}

/// Deletes the copy made by [`worker_exe`], if any.
pub fn remove_worker_exe() {
    let me = std::env::current_exe().ok();
    let copy =
        crate::models::cache_dir().join(format!("lamina-bench-worker-{}", std::process::id()));
    if me.as_deref() != Some(Path::new(&copy)) {
        let _ = std::fs::remove_file(copy);
    }
}

/// Runs `cmd`, killing it after `timeout`, and parses the last stdout line that is a JSON
/// object. Stderr is passed on in the error when the child fails.
pub fn run_json<T: DeserializeOwned>(mut cmd: Command, timeout: Duration) -> Result<T> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {desc}"))?;
    let mut out = child.stdout.take().context("no stdout")?;
    let mut err = child.stderr.take().context("no stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{desc} timed out after {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if !status.success() {
        bail!("{desc} failed ({status}):\n{}", tail(&stderr, 2000));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| {
            format!(
                "{desc} printed no JSON line; stderr:\n{}",
                tail(&stderr, 2000)
            )
        })?;
    serde_json::from_str(line).with_context(|| format!("parsing the output of {desc}: {line}"))
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
