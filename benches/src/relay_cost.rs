//! The link-emulation relay's own added time (issue 6): ping-pong of 1200-byte UDP
//! datagrams to an echo server on loopback, direct and through a zero-spec relay
//! (`lamina_testnet::relay`) on a 1-worker tokio runtime, interleaved in blocks. A round
//! trip crosses the relay twice, so the per-datagram figure is half the round-trip
//! difference. Used by the `relay` and `e2e` binaries.

use anyhow::{bail, Context, Result};
use lamina_testnet::relay::{LinkSpec, Relay};
use serde::Serialize;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Datagram size of the ping-pong.
pub const LEN: usize = 1200;
const BLOCK: usize = 500;

/// What [`measure`] found (microseconds).
#[derive(Clone, Debug, Serialize)]
pub struct RelayCost {
    pub round_trips: usize,
    pub direct_median_us: f64,
    pub direct_p99_us: f64,
    pub relayed_median_us: f64,
    pub relayed_p99_us: f64,
    /// Added per datagram (one relay crossing), median and p99.
    pub added_median_us: f64,
    pub added_p99_us: f64,
    pub forwarded_in: u64,
    pub forwarded_out: u64,
    pub dropped: u64,
}

impl RelayCost {
    /// The lines the `relay` binary prints.
    pub fn text(&self) -> String {
        format!(
            "relay overhead, {} round trips of {LEN}-byte datagrams on loopback (zero spec)\n\
             \x20 direct  rtt: median {:8.1} us  p99 {:8.1} us\n\
             \x20 relayed rtt: median {:8.1} us  p99 {:8.1} us\n\
             \x20 added per round trip: median {:6.1} us  p99 {:6.1} us\n\
             \x20 added per datagram (one relay crossing): median {:6.1} us  p99 {:6.1} us\n\
             \x20 relay counters: in {} out {} dropped {}",
            self.round_trips,
            self.direct_median_us,
            self.direct_p99_us,
            self.relayed_median_us,
            self.relayed_p99_us,
            2.0 * self.added_median_us,
            2.0 * self.added_p99_us,
            self.added_median_us,
            self.added_p99_us,
            self.forwarded_in,
            self.forwarded_out,
            self.dropped,
        )
    }
}

/// An echo server on a thread; it ends when its socket's read times out (the
/// measurement is over).
fn echo_server() -> Result<SocketAddr> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let addr = sock.local_addr()?;
    std::thread::Builder::new()
        .name("udp-echo".into())
        .spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        })?;
    Ok(addr)
}

fn client(to: SocketAddr) -> Result<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.connect(to)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Round-trip times (µs) of `n` ping-pongs.
fn ping_pong(s: &UdpSocket, n: usize, out: &mut Vec<f64>) -> Result<()> {
    let msg = [0x5au8; LEN];
    let mut buf = [0u8; 2048];
    for _ in 0..n {
        let t = Instant::now();
        s.send(&msg)?;
        let got = s
            .recv(&mut buf)
            .context("no echo within 2 s (a datagram lost on loopback?)")?;
        if got != LEN {
            bail!("echo of {got} bytes, sent {LEN}");
        }
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Measures `total` round trips each way (after 1000 warm-up round trips each).
pub fn measure(total: usize) -> Result<RelayCost> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let echo = echo_server()?;
    let relay = {
        let _g = rt.enter();
        Relay::spawn(
            "127.0.0.1:0".parse()?,
            echo,
            LinkSpec::default(),
            LinkSpec::default(),
        )?
    };
    let result = (|| {
        let direct = client(echo)?;
        let via = client(relay.local_addr())?;
        // Warm up both paths (the relay makes its client mapping on the first datagram).
        let mut sink = Vec::new();
        ping_pong(&direct, 1000, &mut sink)?;
        ping_pong(&via, 1000, &mut sink)?;
        let (mut d, mut r) = (Vec::with_capacity(total), Vec::with_capacity(total));
        let mut done = 0;
        while done < total {
            crate::mesh::check_stop()?;
            let n = BLOCK.min(total - done);
            ping_pong(&direct, n, &mut d)?;
            ping_pong(&via, n, &mut r)?;
            done += n;
        }
        d.sort_by(f64::total_cmp);
        r.sort_by(f64::total_cmp);
        let st = relay.stats();
        let (dm, d99) = (pct(&d, 0.5), pct(&d, 0.99));
        let (rm, r99) = (pct(&r, 0.5), pct(&r, 0.99));
        Ok(RelayCost {
            round_trips: total,
            direct_median_us: dm,
            direct_p99_us: d99,
            relayed_median_us: rm,
            relayed_p99_us: r99,
            added_median_us: (rm - dm) / 2.0,
            added_p99_us: (r99 - d99) / 2.0,
            forwarded_in: st.inbound.forwarded,
            forwarded_out: st.outbound.forwarded,
            dropped: st.inbound.dropped_loss
                + st.outbound.dropped_loss
                + st.inbound.dropped_overflow
                + st.outbound.dropped_overflow,
        })
    })();
    {
        let _g = rt.enter();
        drop(relay);
    }
    rt.shutdown_background();
    result
}
