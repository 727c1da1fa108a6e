//! Bounded fuzzer for the frame decoder, built on proptest's generators and shrinker.
//!
//! Each execution builds one byte stream (random bytes, random bodies behind a correct
//! length prefix, or a stream of valid frames put through a series of mutations), then
//! decodes it one-shot with `decode_frame` and streamed through a `FrameDecoder` in random
//! chunks, under default or tiny limits. It checks that nothing panics, that the decoder
//! always makes progress, and that every message it accepts is valid and re-encodes to
//! itself. A failure is shrunk to a minimal input and reported with the seed.
//!
//! Environment:
//! * `LAMINA_FUZZ_CASES`: executions to run (default 20000: about 2 s in a debug build).
//! * `LAMINA_FUZZ_SECONDS`: optional wall-clock budget; stops early when reached.
//! * `LAMINA_FUZZ_SEED`: fixes the RNG seed (default: a fresh seed, printed).
//! * `LAMINA_FUZZ_WRITE_CORPUS=DIR`: also write valid frames there as a seed corpus for the
//!   coverage-guided `frame_decode` target of `fuzz/` (`fuzz/run.sh`, docs/SECURITY.md).
//!
//! Long run: `LAMINA_FUZZ_CASES=1000000000 LAMINA_FUZZ_SECONDS=600 cargo test -p
//! lamina-protocol --release --test fuzz_decode -- --nocapture`

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::*;
use lamina_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

/// One edit of a byte stream.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    /// Overwrite 4 bytes with a value that often sits on a boundary.
    SetU32(Index, u32),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Truncate(Index),
    Extend(Vec<u8>),
    /// Copy a slice of the stream elsewhere (splices frames into each other).
    Duplicate(Index, usize, Index),
    /// Rewrite the first length prefix to match the stream (reaches past the prefix check).
    FixPrefix,
    /// Rewrite the first header length to fill the first frame (reaches the header decoder).
    FixHeaderLen,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        Just(0u32),
        Just(1),
        Just(8),
        Just(9),
        Just(250),
        Just(251),
        Just(252),
        Just(253),
        Just(254),
        Just(255),
        Just(0xffff),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(u32::MAX),
        any::<u32>(),
    ];
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Set(i, x)),
        (any::<Index>(), interesting).prop_map(|(i, x)| Mutation::SetU32(i, x)),
        (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        vec(any::<u8>(), 1..16).prop_map(Mutation::Extend),
        (any::<Index>(), 1usize..64, any::<Index>())
            .prop_map(|(a, n, b)| Mutation::Duplicate(a, n, b)),
        Just(Mutation::FixPrefix),
        Just(Mutation::FixHeaderLen),
    ]
}

fn apply(stream: &mut Vec<u8>, m: &Mutation) {
    let len = stream.len();
    match m {
        Mutation::Flip(i, x) if len > 0 => stream[i.index(len)] ^= x,
        Mutation::Set(i, x) if len > 0 => stream[i.index(len)] = *x,
        Mutation::SetU32(i, x) if len >= 4 => {
            let at = i.index(len - 3);
            stream[at..at + 4].copy_from_slice(&x.to_le_bytes());
        }
        Mutation::Insert(i, b) => {
            let at = i.index(len + 1);
            stream.splice(at..at, b.iter().copied());
        }
        Mutation::Remove(i, n) if len > 0 => {
            let at = i.index(len);
            stream.drain(at..(at + n).min(len));
        }
        Mutation::Truncate(i) => stream.truncate(i.index(len + 1)),
        Mutation::Extend(b) => stream.extend_from_slice(b),
        Mutation::Duplicate(a, n, b) if len > 0 => {
            let from = a.index(len);
            let piece = stream[from..(from + n).min(len)].to_vec();
            let to = b.index(len + 1);
            stream.splice(to..to, piece);
        }
        Mutation::FixPrefix if len >= 4 => {
            let body = (len - 4) as u32;
            stream[..4].copy_from_slice(&body.to_le_bytes());
        }
        Mutation::FixHeaderLen if len >= 9 => {
            let body = u32::from_le_bytes([stream[0], stream[1], stream[2], stream[3]]) as usize;
            let frame_end = (4 + body).min(len);
            let header = frame_end.saturating_sub(9) as u32;
            stream[5..9].copy_from_slice(&header.to_le_bytes());
        }
        _ => {}
    }
}

/// One fuzz input: the stream, how it is chunked, and which limits apply.
#[derive(Clone, Debug)]
struct Case {
    stream: Vec<u8>,
    chunk_sizes: Vec<usize>,
    tiny_limits: bool,
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Raw noise.
        1 => vec(any::<u8>(), 0..600),
        // Noise behind a correct prefix, often with a known tag.
        2 => (prop_oneof![0u8..9, any::<u8>()], vec(any::<u8>(), 0..300), vec(any::<u8>(), 0..64))
            .prop_map(|(tag, header, payload)| raw_frame(tag, &header, &payload)),
        // Tensor-carrying frames with arbitrary descriptors (reaches the shape checks).
        2 => tensor_frame(),
        // Valid frames, mutated.
        6 => (vec(message(), 1..4), vec(mutation(), 0..6)).prop_map(|(msgs, muts)| {
            let mut s = Vec::new();
            for m in &msgs {
                s.extend_from_slice(&encode_frame(m).expect("valid messages encode"));
            }
            for m in &muts {
                apply(&mut s, m);
            }
            s
        }),
    ]
}

/// A `Forward` or `StepResult` frame whose tensor descriptor (shape, dtype, byte_len) and
/// payload length are drawn independently, laid out field by field as the frame module's
/// derives do.
fn tensor_frame() -> impl Strategy<Value = Vec<u8>> {
    let dim = prop_oneof![0u32..5, 1u32..5000, Just(u32::MAX), any::<u32>()];
    (
        any::<[u8; 16]>(),
        any::<u64>(),
        any::<u32>(),
        vec(dim, 0..11),
        prop_oneof![0u32..3, 0u32..300],
        any::<Option<u64>>(),
        0u8..3,
        -4i64..5,
    )
        .prop_map(|(sid, step, n, shape, dtype, byte_len, variant, delta)| {
            let size = [4u64, 2, 2].get(dtype as usize).copied().unwrap_or(1);
            let expected = shape
                .iter()
                .try_fold(size, |acc, &d| acc.checked_mul(u64::from(d)))
                .unwrap_or(u64::MAX);
            let byte_len = byte_len.unwrap_or(expected);
            let desc = (shape, dtype, byte_len);
            let (tag, header) = match variant {
                0 => (5u8, bincode_bytes((sid, step, n, 1u32, desc))),
                1 => (6, bincode_bytes((sid, step, 0u32, n, 1u8, desc))),
                _ => (6, bincode_bytes((sid, step, 1u32, desc))),
            };
            let payload_len = (expected.min(4096) as i64 + delta).max(0) as usize;
            raw_frame(tag, &header, &vec![0x3c; payload_len])
        })
}

fn case() -> impl Strategy<Value = Case> {
    (stream(), vec(1usize..80, 1..5), prop::bool::weighted(0.2)).prop_map(
        |(stream, chunk_sizes, tiny_limits)| Case {
            stream,
            chunk_sizes,
            tiny_limits,
        },
    )
}

static EXECUTIONS: AtomicU64 = AtomicU64::new(0);
static ACCEPTED: AtomicU64 = AtomicU64::new(0);
/// How often each error variant came up: shows which checks the inputs reach.
static ERRORS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// The property: no panic, progress, and accepted messages are valid fixed points.
fn run(case: &Case) {
    EXECUTIONS.fetch_add(1, Ordering::Relaxed);
    let limits = if case.tiny_limits {
        FrameLimits {
            max_frame_bytes: 200,
            max_header_bytes: 100,
        }
    } else {
        FrameLimits::default()
    };
    check(decode_frame(&case.stream, &limits));
    // `drain` loops on next_frame until Ok(None) or a fatal error; every Ok/Err before that
    // consumed a whole frame, so the number of results is bounded by the stream length.
    let results = drain(&case.stream, &case.chunk_sizes, limits);
    assert!(results.len() <= case.stream.len() / 4 + 2);
    for r in results {
        check(r);
    }
}

fn check(r: Result<Message, ProtocolError>) {
    match r {
        Ok(m) => {
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
            m.validate().expect("accepted message is valid");
            let frame = encode_frame(&m).expect("accepted message re-encodes");
            let again = decode_frame(&frame, &FrameLimits::default()).expect("and decodes");
            assert_eq!(again, m);
        }
        Err(e) => {
            let reply = ErrorMessage::from(&e);
            assert!(reply.message.len() <= MAX_ERROR_MESSAGE_BYTES);
            let debug = format!("{e:?}");
            let variant: String = debug
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            if let Ok(mut map) = ERRORS.lock() {
                *map.entry(variant).or_default() += 1;
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn fuzz_decode() {
    let cases = env_u64("LAMINA_FUZZ_CASES").unwrap_or(20_000);
    let budget = env_u64("LAMINA_FUZZ_SECONDS").map(Duration::from_secs);
    let seed = env_u64("LAMINA_FUZZ_SEED").unwrap_or_else(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        h.finish()
    });
    let config = Config {
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 10_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    if let Ok(dir) = std::env::var("LAMINA_FUZZ_WRITE_CORPUS") {
        write_corpus(&mut runner, std::path::Path::new(&dir));
    }
    let strategy = case();
    let start = Instant::now();
    let mut done = 0u64;
    while done < cases {
        if budget.is_some_and(|b| start.elapsed() >= b) {
            break;
        }
        let tree = strategy
            .new_tree(&mut runner)
            .expect("strategy never rejects");
        if let Err(e) = runner.run_one(tree, |c| {
            run(&c);
            Ok(())
        }) {
            panic!("fuzz_decode failed (LAMINA_FUZZ_SEED={seed}): {e}");
        }
        done += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fuzz_decode: {} executions ({} cases, {} messages accepted) in {:.1} s, {:.0}/s, seed {}",
        EXECUTIONS.load(Ordering::Relaxed),
        done,
        ACCEPTED.load(Ordering::Relaxed),
        secs,
        done as f64 / secs.max(1e-9),
        seed
    );
    if let Ok(map) = ERRORS.lock() {
        println!("fuzz_decode: errors by variant: {map:?}");
    }
}

/// Writes 200 valid single frames (prefixed by a control byte 0) as a libFuzzer seed corpus.
fn write_corpus(runner: &mut TestRunner, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let strategy = message();
    for i in 0..200 {
        let msg = strategy.new_tree(runner).unwrap().current();
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&encode_frame(&msg).unwrap());
        std::fs::write(dir.join(format!("seed-{i:03}")), bytes).unwrap();
    }
    println!("fuzz_decode: wrote 200 seed frames to {}", dir.display());
}
