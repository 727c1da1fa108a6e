//! What the fuzz targets share: the fixed keys their records are signed with, the clock
//! they verify at, and the seed-corpus writer.
//!
//! Seeds are written by the targets themselves (`LAMINA_FUZZ_WRITE_SEEDS=DIR` makes a
//! target write its seeds to DIR from libFuzzer's init hook and exit), so the seeds are
//! built with the same encoders the harness decodes with and never drift from the format:
//! `fuzz/run.sh --seeds` rewrites `fuzz/corpus/<target>/`.

use std::path::Path;

pub mod messages;

use lamina_protocol::{MeshKey, ModelId};
use libp2p_identity::{ed25519, Keypair};

/// The environment variable that makes a target write its seeds and exit.
pub const WRITE_SEEDS_ENV: &str = "LAMINA_FUZZ_WRITE_SEEDS";

/// The model every seed and host speaks of.
pub const MODEL: ModelId = ModelId::from_bytes([7; 32]);

/// "Now" for verification, in milliseconds since the epoch; seeds are issued just before.
pub const NOW_MS: u64 = 1_800_000_000_000;

/// The key announcements are signed with (fixed, so a seed's peer id matches the signer).
pub fn node_key() -> Keypair {
    Keypair::ed25519_from_bytes([1u8; 32]).unwrap_or_else(|_| unreachable!("32 bytes"))
}

/// The mesh authority's key (fixed, so seeds carry certificates that verify).
pub fn authority_key() -> ed25519::Keypair {
    let secret =
        ed25519::SecretKey::try_from_bytes([2u8; 32]).unwrap_or_else(|_| unreachable!("32 bytes"));
    ed25519::Keypair::from(secret)
}

/// The mesh named by [`authority_key`].
pub fn mesh_key() -> MeshKey {
    MeshKey::from_bytes(authority_key().public().to_bytes())
}

/// If [`WRITE_SEEDS_ENV`] is set: writes `seeds()` as `DIR/<name>-NN` and exits.
///
/// Call from a target's `init:` block. Panics on an I/O error (a harness tool, not the
/// code under test).
pub fn write_seeds_if_asked(target: &str, seeds: impl FnOnce() -> Vec<(String, Vec<u8>)>) {
    let Ok(dir) = std::env::var(WRITE_SEEDS_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("create the seed directory");
    let seeds = seeds();
    for (i, (name, bytes)) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("{i:02}-{name}")), bytes).expect("write a seed");
    }
    eprintln!("{target}: wrote {} seeds to {}", seeds.len(), dir.display());
    std::process::exit(0);
}
