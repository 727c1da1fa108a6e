//! The link-emulation relay's own added time (issue 6): ping-pong of 1200-byte UDP
//! datagrams to an echo server on loopback, direct and through a zero-spec relay
//! (`lamina_testnet::relay`), interleaved in blocks. A round trip crosses the relay twice,
//! so the per-datagram figure is half the round-trip difference.
//!
//! `cargo run --release -p lamina-benches --bin relay -- [ROUND_TRIPS]` (default 20000).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use lamina_testnet::relay::{LinkSpec, Relay};

const LEN: usize = 1200;
const BLOCK: usize = 500;

fn echo_server() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    addr
}

fn client(to: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Round-trip times (µs) of `n` ping-pongs.
fn ping_pong(s: &UdpSocket, n: usize, out: &mut Vec<f64>) {
    let msg = [0x5au8; LEN];
    let mut buf = [0u8; 2048];
    for _ in 0..n {
        let t = Instant::now();
        s.send(&msg).unwrap();
        let got = s
            .recv(&mut buf)
            .expect("echo (a datagram lost on loopback?)");
        assert_eq!(got, LEN);
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let total: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUND_TRIPS is a number"))
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let echo = echo_server();
    let relay = {
        let _g = rt.enter();
        Relay::spawn(
            "127.0.0.1:0".parse().unwrap(),
            echo,
            LinkSpec::default(),
            LinkSpec::default(),
        )
        .unwrap()
    };
    let direct = client(echo);
    let via = client(relay.local_addr());
    // Warm up both paths (the relay makes its client mapping on the first datagram).
    let mut sink = Vec::new();
    ping_pong(&direct, 1000, &mut sink);
    ping_pong(&via, 1000, &mut sink);
    let (mut d, mut r) = (Vec::with_capacity(total), Vec::with_capacity(total));
    let mut done = 0;
    while done < total {
        let n = BLOCK.min(total - done);
        ping_pong(&direct, n, &mut d);
        ping_pong(&via, n, &mut r);
        done += n;
    }
    d.sort_by(f64::total_cmp);
    r.sort_by(f64::total_cmp);
    let (dm, d99) = (pct(&d, 0.5), pct(&d, 0.99));
    let (rm, r99) = (pct(&r, 0.5), pct(&r, 0.99));
    let st = relay.stats();
    println!("relay overhead, {total} round trips of {LEN}-byte datagrams on loopback (zero spec)");
    println!("  direct  rtt: median {dm:8.1} us  p99 {d99:8.1} us");
    println!("  relayed rtt: median {rm:8.1} us  p99 {r99:8.1} us");
    println!(
        "  added per round trip: median {:6.1} us  p99 {:6.1} us",
        rm - dm,
        r99 - d99
    );
    println!(
        "  added per datagram (one relay crossing): median {:6.1} us  p99 {:6.1} us",
        (rm - dm) / 2.0,
        (r99 - d99) / 2.0
    );
    println!(
        "  relay counters: in {} out {} lost {} overflow {}",
        st.inbound.forwarded,
        st.outbound.forwarded,
        st.inbound.dropped_loss + st.outbound.dropped_loss,
        st.inbound.dropped_overflow + st.outbound.dropped_overflow
    );
    drop(relay);
    rt.shutdown_background();
}
