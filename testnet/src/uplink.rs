//! Link emulation inside a namespace testnet, where the userspace UDP relays of loopback
//! testnets cannot sit: sessions there ride the mesh's own libp2p connections, relayed or
//! hole-punched, whose addresses the relays would have to rewrite.
//!
//! Each node's namespace gets one shaper process (`lamina testnet shape-uplink`, started
//! by `up`) that binds an NFQUEUE and then queues every packet leaving the node's `eth0`
//! to itself (`iptables -t mangle -A POSTROUTING -o eth0 -j NFQUEUE`). The kernel holds
//! each packet until the shaper's verdict; the shaper gives it at the time the pure
//! [`Shaper`] decides (latency, jitter without reordering, loss, a token bucket), so a
//! datagram is delayed once per machine it leaves, as on real access links, and a relayed
//! one (node, relay, node) twice. Why not netem: the kernels this runs on may lack
//! `sch_netem` (the Firecracker VMs of this project's CI do), while NFQUEUE is common.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::relay::{LinkSpec, Shaper, Verdict};

/// The NFQUEUE number the shaper binds in its namespace.
pub const QUEUE: u16 = 0;

/// How long the shaper sleeps when it has nothing due: the granularity of its delays.
const TICK: Duration = Duration::from_micros(500);

/// The iptables rule that sends the node's outbound packets to the shaper (`--queue-bypass`:
/// without a shaper bound, packets pass unshaped instead of being dropped).
pub fn rule_args(queue: u16) -> Vec<String> {
    [
        "-t",
        "mangle",
        "-A",
        "POSTROUTING",
        "-o",
        "eth0",
        "-j",
        "NFQUEUE",
        "--queue-num",
        &queue.to_string(),
        "--queue-bypass",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs the shaper of the namespace it is started in until killed: binds the queue,
/// installs the rule, prints `ready`, then releases every packet when `spec` says.
pub fn run(spec: LinkSpec, seed: u64) -> anyhow::Result<()> {
    let mut q =
        nfq::Queue::open().context("cannot open an NFQUEUE socket (root, nfnetlink_queue)")?;
    q.bind(QUEUE).context("cannot bind NFQUEUE 0")?;
    q.set_queue_max_len(QUEUE, 65_536)?;
    q.set_fail_open(QUEUE, false)?;
    q.set_nonblocking(true);
    let out = std::process::Command::new(crate::netns::sbin_tool("iptables"))
        .args(rule_args(QUEUE))
        .output()
        .context("shaping needs iptables (`apt-get install iptables`)")?;
    if !out.status.success() {
        anyhow::bail!("iptables: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    println!("ready");
    let mut shaper = Shaper::new(spec, StdRng::seed_from_u64(seed));
    let start = Instant::now();
    let mut held: VecDeque<(Duration, nfq::Message)> = VecDeque::new();
    loop {
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    let now = start.elapsed();
                    match shaper.offer(now, msg.get_original_len()) {
                        Verdict::Lost => {
                            msg.set_verdict(nfq::Verdict::Drop);
                            q.verdict(msg)?;
                        }
                        Verdict::Release(at) => held.push_back((at, msg)),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("NFQUEUE receive"),
            }
        }
        let now = start.elapsed();
        // Release times never decrease (the shaper keeps arrival order).
        while held.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, mut msg)) = held.pop_front() {
                msg.set_verdict(nfq::Verdict::Accept);
                q.verdict(msg)?;
            }
        }
        let wait = held
            .front()
            .map_or(TICK, |(at, _)| at.saturating_sub(now).min(TICK));
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_queues_what_leaves_eth0_and_bypasses_without_a_shaper() {
        assert_eq!(
            rule_args(0).join(" "),
            "-t mangle -A POSTROUTING -o eth0 -j NFQUEUE --queue-num 0 --queue-bypass"
        );
    }
}
