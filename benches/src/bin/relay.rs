//! The link-emulation relay's own added time (issue 6): ping-pong of 1200-byte UDP
//! datagrams to an echo server on loopback, direct and through a zero-spec relay
//! (`lamina_testnet::relay`), interleaved in blocks. A round trip crosses the relay twice,
//! so the per-datagram figure is half the round-trip difference
//! ([`lamina_benches::relay_cost`]; the `e2e` bench reports the same figure).
//!
//! `cargo run --release -p lamina-benches --bin relay -- [ROUND_TRIPS]` (default 20000).

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let total: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .with_context(|| format!("ROUND_TRIPS is a number, not `{a}`"))?,
        None => 20_000,
    };
    let cost = lamina_benches::relay_cost::measure(total)?;
    println!("{}", cost.text());
    Ok(())
}
