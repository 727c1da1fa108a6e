//! `up --netns`: every node in a network namespace of its own (`lamina-<tag>-<i>`), its
//! `eth0` one end of a veth pair whose other end is a port of a bridge (`lt<tag>`) in the
//! root namespace. The testnet gets a /24 of 10.213.0.0/16 that no route of the machine
//! uses: node `i` is `.i+1`, the bridge `.254` (so `up`, `status` and clients on this
//! machine reach the nodes' APIs). The namespaces have no default route and the machine
//! does not forward for them, so all traffic stays inside the machine.
//!
//! `partition` cuts node pairs with blackhole routes in both nodes' namespaces (a
//! blackhole route makes the sender's `sendmsg` fail, which QUIC treats as a lost
//! datagram; it needs neither tc nor netfilter); `heal` removes them.
//! `down` removes every namespace and the bridge, which takes the veths with them.
//!
//! `--nat node-1=cone,node-2=symmetric` puts a named node behind a NAT of its own: its
//! bridge port goes to a gateway namespace (`lamina-<tag>-<i>g`, interface `wan`, the
//! node's public address), whose `lan` veth leads to the node (`eth0`, `192.168.<i>.2`,
//! default route via `.1`). nftables in the gateway masquerades what leaves `wan`
//! (port-preserving for `cone`, `fully-random` for `symmetric`: a new port per remote
//! endpoint), forwards only replies inward (a port-restricted NAT), and forwards one TCP
//! port, the node's API ([`NAT_API_PORT`]), so `up`, `status` and clients reach it at the
//! public address. A `forwarded` NAT is symmetric but also forwards the mesh port
//! ([`NAT_MESH_PORT`], UDP), as an operator who opened a port on a router would. Nothing
//! is routed out of the machine.
//!
//! The plan (names, addresses, which routes a cut needs, the NAT rules) is pure;
//! [`Netns`] runs `ip` and `nft`.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The first two octets of every testnet subnet.
const PREFIX: [u8; 2] = [10, 213];
/// The bridge's host number in the /24.
const BRIDGE_HOST: u8 = 254;
/// Nodes a /24 holds besides the bridge.
pub const MAX_NODES: usize = 253;

/// The port a node behind a NAT serves its API on, forwarded by its gateway.
pub const NAT_API_PORT: u16 = 8080;
/// The mesh (libp2p QUIC) port a `forwarded` NAT forwards to its node.
pub const NAT_MESH_PORT: u16 = 4001;

/// The kind of NAT in front of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nat {
    /// Endpoint-independent mapping (the source port is kept where it can be): what hole
    /// punching needs.
    Cone,
    /// A new mapping (random port) for every remote endpoint: hole punching fails, only a
    /// relay or the node's own outbound connections reach it.
    Symmetric,
    /// A symmetric NAT whose operator forwarded the mesh port ([`NAT_MESH_PORT`], UDP)
    /// to the node, which says so (`lamina node --external-addr`): peers dial it directly.
    Forwarded,
}

impl std::str::FromStr for Nat {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "cone" => Ok(Self::Cone),
            "symmetric" => Ok(Self::Symmetric),
            "forwarded" => Ok(Self::Forwarded),
            _ => bail!("unknown NAT {s:?}: cone, symmetric or forwarded"),
        }
    }
}

/// A node's NAT: its gateway namespace and its private address behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatGateway {
    pub kind: Nat,
    /// The gateway namespace (its `wan` holds the node's public address).
    pub netns: String,
    /// The node's own address on the LAN (`192.168.<i>.2`).
    pub lan_addr: Ipv4Addr,
    /// The gateway's LAN address (`192.168.<i>.1`), the node's default route.
    pub gateway_addr: Ipv4Addr,
}

impl NatGateway {
    /// The gateway's nftables ruleset (pure): masquerade out of `wan`, replies and the
    /// API port in, nothing else. Unsolicited packets to the gateway itself are dropped
    /// in `input`, before conntrack confirms an entry for them: a peer's hole-punching
    /// packet that arrives before this side's own would otherwise claim the mapping's
    /// tuple, and the masquerade would pick another port for the outbound packet (the
    /// punch then fails even through a cone NAT).
    pub fn ruleset(&self) -> String {
        let masquerade = match self.kind {
            Nat::Cone => "masquerade",
            Nat::Symmetric | Nat::Forwarded => "masquerade fully-random",
        };
        let lan = self.lan_addr;
        let port = NAT_API_PORT;
        let (forward_in, forward_ok) = match self.kind {
            Nat::Forwarded => (
                format!("\t\tiifname \"wan\" udp dport {NAT_MESH_PORT} dnat to {lan}:{NAT_MESH_PORT}\n"),
                format!("\t\tiifname \"wan\" oifname \"lan\" ip daddr {lan} udp dport {NAT_MESH_PORT} ct status dnat accept\n"),
            ),
            Nat::Cone | Nat::Symmetric => (String::new(), String::new()),
        };
        format!(
            "table ip lamina_nat {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tiifname \"wan\" tcp dport {port} dnat to {lan}:{port}\n\
             {forward_in}\
             \t}}\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"wan\" {masquerade}\n\
             \t}}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy drop;\n\
             \t\tiifname \"lo\" accept\n\
             \t\tiifname \"lan\" accept\n\
             \t\tct state established,related accept\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy drop;\n\
             \t\tct state established,related accept\n\
             \t\tiifname \"lan\" oifname \"wan\" accept\n\
             \t\tiifname \"wan\" oifname \"lan\" ip daddr {lan} tcp dport {port} ct status dnat accept\n\
             {forward_ok}\
             \t}}\n\
             }}\n"
        )
    }
}

/// One node's namespace and address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsNode {
    pub id: String,
    pub netns: String,
    /// Its public address: its own, or its NAT gateway's.
    pub addr: Ipv4Addr,
    /// The NAT in front of it, if any.
    #[serde(default)]
    pub nat: Option<NatGateway>,
}

impl NsNode {
    /// The address the node binds (its LAN address behind a NAT).
    pub fn bind_addr(&self) -> Ipv4Addr {
        self.nat.as_ref().map_or(self.addr, |n| n.lan_addr)
    }
}

/// The namespaces of a testnet, as the state file records them for `partition`, `heal`
/// and `down`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsState {
    /// The bridge in the root namespace.
    pub bridge: String,
    /// The bridge's address (the nodes' /24).
    pub bridge_addr: Ipv4Addr,
    pub nodes: Vec<NsNode>,
}

impl NetnsState {
    /// The plan for `nodes` nodes named `node-<i>`: names from `tag` (a few hex digits),
    /// addresses in `10.213.<subnet>.0/24`.
    pub fn plan(tag: &str, subnet: u8, nodes: usize) -> anyhow::Result<Self> {
        Self::plan_with_nats(tag, subnet, nodes, &[])
    }

    /// [`plan`](Self::plan) with node `i` behind a NAT of kind `k` for each `(i, k)` of
    /// `nats`. Node 0 is everyone's bootstrap: it stays public.
    pub fn plan_with_nats(
        tag: &str,
        subnet: u8,
        nodes: usize,
        nats: &[(usize, Nat)],
    ) -> anyhow::Result<Self> {
        if nodes == 0 || nodes > MAX_NODES {
            bail!("--netns holds 1 to {MAX_NODES} nodes, not {nodes}");
        }
        for (i, _) in nats {
            if *i >= nodes {
                bail!("--nat names node-{i}, but the testnet has {nodes} nodes");
            }
            if *i == 0 {
                bail!("--nat node-0: node-0 is every node's bootstrap and stays public");
            }
            if nats.iter().filter(|(j, _)| j == i).count() > 1 {
                bail!("--nat names node-{i} twice");
            }
        }
        // Interface names have at most 15 bytes: `lt` + tag + `n` + up to 3 digits.
        if tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
            bail!("bad namespace tag {tag:?}");
        }
        let addr = |host: u8| Ipv4Addr::new(PREFIX[0], PREFIX[1], subnet, host);
        Ok(Self {
            bridge: format!("lt{tag}"),
            bridge_addr: addr(BRIDGE_HOST),
            nodes: (0..nodes)
                .map(|i| NsNode {
                    id: format!("node-{i}"),
                    netns: format!("lamina-{tag}-{i}"),
                    addr: addr(i as u8 + 1),
                    nat: nats
                        .iter()
                        .find(|(j, _)| *j == i)
                        .map(|(_, kind)| NatGateway {
                            kind: *kind,
                            netns: format!("lamina-{tag}-{i}g"),
                            lan_addr: Ipv4Addr::new(192, 168, i as u8, 2),
                            gateway_addr: Ipv4Addr::new(192, 168, i as u8, 1),
                        }),
                })
                .collect(),
        })
    }

    /// The root-namespace end of node `i`'s veth pair.
    fn veth(&self, i: usize) -> String {
        format!("{}n{i}", self.bridge)
    }

    fn node(&self, id: &str) -> anyhow::Result<&NsNode> {
        self.nodes.iter().find(|n| n.id == id).with_context(|| {
            let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
            format!("no node {id} in the testnet (nodes: {})", ids.join(", "))
        })
    }

    /// The blackhole routes that cut every link between a node of `side` and a node of
    /// `other` (default: every node not in `side`): `(namespace, address it cannot reach)`,
    /// both directions.
    pub fn cuts(
        &self,
        side: &[String],
        other: &[String],
    ) -> anyhow::Result<Vec<(String, Ipv4Addr)>> {
        let side: Vec<&NsNode> = side
            .iter()
            .map(|id| self.node(id))
            .collect::<Result<_, _>>()?;
        let other: Vec<&NsNode> = if other.is_empty() {
            self.nodes
                .iter()
                .filter(|n| !side.iter().any(|s| s.id == n.id))
                .collect()
        } else {
            other
                .iter()
                .map(|id| self.node(id))
                .collect::<Result<_, _>>()?
        };
        if side.is_empty() || other.is_empty() {
            bail!("a partition needs nodes on both sides");
        }
        if let Some(n) = side.iter().find(|s| other.iter().any(|o| o.id == s.id)) {
            bail!("{} is on both sides of the partition", n.id);
        }
        let mut out = Vec::new();
        for a in &side {
            for b in &other {
                out.push((a.netns.clone(), b.addr));
                out.push((b.netns.clone(), a.addr));
            }
        }
        Ok(out)
    }
}

/// Whether two IPv4 prefixes share an address.
fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1).min(32);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// The destinations of `ip -4 route show table all` lines (`default` is left out: it is
/// where traffic goes when nothing more specific matches, not an address in use).
fn route_prefixes(routes: &str) -> Vec<(Ipv4Addr, u8)> {
    routes
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let mut dst = words.next()?;
            // A route type may come before the destination.
            if dst.starts_with(|c: char| c.is_ascii_lowercase()) && dst != "default" {
                dst = words.next()?;
            }
            let (ip, len) = dst.split_once('/').unwrap_or((dst, "32"));
            Some((ip.parse().ok()?, len.parse().ok()?))
        })
        .collect()
}

/// The first third octet from `start` (wrapping) whose `10.213.<o>.0/24` overlaps none of
/// `used`.
fn free_subnet(used: &[(Ipv4Addr, u8)], start: u8) -> Option<u8> {
    (0..=255u8).map(|k| start.wrapping_add(k)).find(|&o| {
        let net = (Ipv4Addr::new(PREFIX[0], PREFIX[1], o, 0), 24);
        !used.iter().any(|&u| overlaps(u, net))
    })
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A testnet's namespaces while `up` sets them up: removed on drop unless
/// [`Netns::keep`] handed them to the state file.
pub struct Netns {
    pub state: NetnsState,
    keep: bool,
}

impl Netns {
    /// Creates the bridge and `nodes` namespaces with their veths and addresses.
    pub fn create(nodes: usize) -> anyhow::Result<Self> {
        Self::create_with_nats(nodes, &[])
    }

    /// [`create`](Self::create) with the nodes of `nats` behind NATs (needs `nft`).
    pub fn create_with_nats(nodes: usize, nats: &[(usize, Nat)]) -> anyhow::Result<Self> {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let used = route_prefixes(&ip(&["-4", "route", "show", "table", "all"])?);
        let subnet = free_subnet(&used, rand::random::<u8>())
            .context("every /24 of 10.213.0.0/16 is in use on this machine")?;
        let state = NetnsState::plan_with_nats(&tag, subnet, nodes, nats)?;
        // From here on a failure removes what was made.
        let net = Self { state, keep: false };
        let s = &net.state;
        let bridge_cidr = format!("{}/24", s.bridge_addr);
        ip(&["link", "add", &s.bridge, "type", "bridge"])
            .context("--netns needs root (CAP_NET_ADMIN) and iproute2")?;
        ip(&["addr", "add", &bridge_cidr, "dev", &s.bridge])?;
        ip(&["link", "set", &s.bridge, "up"])?;
        for (i, n) in s.nodes.iter().enumerate() {
            let veth = s.veth(i);
            let cidr = format!("{}/24", n.addr);
            ip(&["netns", "add", &n.netns])?;
            let Some(nat) = &n.nat else {
                ip(&[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &n.netns,
                ])?;
                ip(&["link", "set", &veth, "master", &s.bridge, "up"])?;
                ip(&["-n", &n.netns, "addr", "add", &cidr, "dev", "eth0"])?;
                ip(&["-n", &n.netns, "link", "set", "eth0", "up"])?;
                ip(&["-n", &n.netns, "link", "set", "lo", "up"])?;
                continue;
            };
            // Bridge -> gateway (`wan`, the public address) -> `lan` -> the node (`eth0`).
            let gw = &nat.netns;
            ip(&["netns", "add", gw])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "wan", "netns", gw,
            ])?;
            ip(&["link", "set", &veth, "master", &s.bridge, "up"])?;
            ip(&["-n", gw, "addr", "add", &cidr, "dev", "wan"])?;
            ip(&[
                "-n", gw, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns",
                &n.netns,
            ])?;
            ip(&[
                "-n",
                gw,
                "addr",
                "add",
                &format!("{}/24", nat.gateway_addr),
                "dev",
                "lan",
            ])?;
            for dev in ["wan", "lan", "lo"] {
                ip(&["-n", gw, "link", "set", dev, "up"])?;
            }
            ip(&[
                "-n",
                &n.netns,
                "addr",
                "add",
                &format!("{}/24", nat.lan_addr),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &n.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &n.netns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &n.netns,
                "route",
                "add",
                "default",
                "via",
                &nat.gateway_addr.to_string(),
            ])?;
            // Forwarding is per namespace (and off in a new one); no sysctl binary needed.
            run_in(
                gw,
                "sh",
                &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
                None,
            )?;
            run_in(gw, &sbin_tool("nft"), &["-f", "-"], Some(&nat.ruleset()))
                .context("--nat needs nftables (`apt-get install nftables`)")?;
        }
        Ok(net)
    }

    /// Shapes every node's uplink like `spec`: a shaper process in each node's namespace
    /// (`exe testnet shape-uplink`, see [`crate::uplink`]) holds every packet leaving its
    /// `eth0`, so a datagram between two nodes is delayed once per machine it leaves and
    /// a relayed one (node, relay, node) twice. Returns once every shaper is in place;
    /// they live until their namespace is removed.
    pub fn shape(
        &self,
        exe: &std::path::Path,
        spec: &crate::relay::LinkSpec,
    ) -> anyhow::Result<()> {
        use std::io::BufRead;
        for (i, n) in self.state.nodes.iter().enumerate() {
            let mut child = command_in(&n.netns, exe)
                .args(shaper_args(spec, i as u64))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot start the uplink shaper in {}", n.netns))?;
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                std::io::BufReader::new(out).read_line(&mut line)?;
            }
            if line.trim() != "ready" {
                let _ = child.kill();
                let out = child.wait_with_output()?;
                bail!(
                    "the uplink shaper in {} failed: {}",
                    n.netns,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// Leaves the namespaces in place (the state file names them; `down` removes them).
    pub fn keep(mut self) -> NetnsState {
        self.keep = true;
        self.state.clone()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep {
            let _ = remove(&self.state);
        }
    }
}

/// The arguments of `lamina testnet shape-uplink` for `spec` (pure), in units its
/// parsers read back exactly.
pub fn shaper_args(spec: &crate::relay::LinkSpec, seed: u64) -> Vec<String> {
    let mut a = vec![
        "testnet".to_string(),
        "shape-uplink".to_string(),
        "--latency".to_string(),
        format!("{}us", spec.latency.as_micros()),
        "--seed".to_string(),
        seed.to_string(),
    ];
    if !spec.jitter.is_zero() {
        a.push("--jitter".to_string());
        a.push(format!("{}us", spec.jitter.as_micros()));
    }
    if spec.loss > 0.0 {
        a.push("--loss".to_string());
        a.push(spec.loss.to_string());
    }
    if let Some(bps) = spec.bandwidth_bps {
        a.push("--bandwidth".to_string());
        a.push(format!("{bps}bit"));
    }
    a
}

/// Removes the testnet's namespaces (SIGKILLing any process still in one: only the
/// testnet's nodes run there) and its bridge. Missing ones are not an error.
pub fn remove(state: &NetnsState) -> anyhow::Result<()> {
    let existing = ip(&["netns", "list"]).unwrap_or_default();
    let exists = |ns: &str| {
        existing
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns))
    };
    let mut failed = Vec::new();
    let gateways = state.nodes.iter().filter_map(|n| n.nat.as_ref());
    for ns in state
        .nodes
        .iter()
        .map(|n| &n.netns)
        .chain(gateways.map(|g| &g.netns))
        .filter(|ns| exists(ns))
    {
        for pid in ip(&["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Ok(pid) = pid.parse::<u32>() {
                crate::signal(pid, "KILL");
            }
        }
        if let Err(e) = ip(&["netns", "del", ns]) {
            failed.push(e.to_string());
        }
    }
    if ip(&["link", "show", &state.bridge]).is_ok() {
        if let Err(e) = ip(&["link", "del", &state.bridge]) {
            failed.push(e.to_string());
        }
    }
    if !failed.is_empty() {
        bail!(
            "cannot remove the testnet's namespaces: {}",
            failed.join("; ")
        );
    }
    Ok(())
}

/// Cuts every link between the nodes of `side` and those of `other` (all the rest when
/// empty). Returns how many routes were added.
pub fn partition(state: &NetnsState, side: &[String], other: &[String]) -> anyhow::Result<usize> {
    let cuts = state.cuts(side, other)?;
    for (ns, addr) in &cuts {
        ip(&[
            "-n",
            ns,
            "route",
            "replace",
            "blackhole",
            &format!("{addr}/32"),
        ])?;
    }
    Ok(cuts.len())
}

/// Removes every cut.
pub fn heal(state: &NetnsState) -> anyhow::Result<()> {
    for n in &state.nodes {
        ip(&["-n", &n.netns, "route", "flush", "type", "blackhole"])?;
    }
    Ok(())
}

/// `name` from the PATH, else from the system directories a root shell would search
/// (a minimal PATH often lacks `/usr/sbin`, where nftables installs `nft`).
pub(crate) fn sbin_tool(name: &str) -> String {
    let in_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if in_path {
        return name.to_string();
    }
    ["/usr/sbin", "/sbin", "/usr/local/sbin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
        .map_or_else(|| name.to_string(), |p| p.display().to_string())
}

/// Runs `prog args` in namespace `netns`, feeding it `stdin`.
fn run_in(netns: &str, prog: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, prog])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {prog} in {netns}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` in {netns} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The command that runs `exe` in `netns`.
pub fn command_in(netns: &str, exe: &std::path::Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns]).arg(exe);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_shaper_gets_every_part_of_a_link_spec_in_units_it_reads_back() {
        use crate::relay::{parse_bandwidth, parse_duration, parse_loss, LinkSpec};
        use std::time::Duration;
        let plain = LinkSpec::latency(Duration::from_millis(20));
        assert_eq!(
            shaper_args(&plain, 3).join(" "),
            "testnet shape-uplink --latency 20000us --seed 3"
        );
        let full = LinkSpec {
            latency: Duration::from_micros(2500),
            jitter: Duration::from_micros(500),
            loss: 0.001,
            bandwidth_bps: Some(100_000_000),
        };
        let a = shaper_args(&full, 0);
        let value = |flag: &str| a[a.iter().position(|x| x == flag).unwrap() + 1].clone();
        assert_eq!(parse_duration(&value("--latency")).unwrap(), full.latency);
        assert_eq!(parse_duration(&value("--jitter")).unwrap(), full.jitter);
        assert_eq!(parse_loss(&value("--loss")).unwrap(), full.loss);
        assert_eq!(parse_bandwidth(&value("--bandwidth")).unwrap(), 100_000_000);
    }

    #[test]
    fn the_plan_names_and_numbers_every_node() {
        let p = NetnsState::plan("a1b2c3", 7, 3).unwrap();
        assert_eq!(p.bridge, "lta1b2c3");
        assert_eq!(p.bridge_addr, Ipv4Addr::new(10, 213, 7, 254));
        assert_eq!(p.nodes[2].netns, "lamina-a1b2c3-2");
        assert_eq!(p.nodes[2].addr, Ipv4Addr::new(10, 213, 7, 3));
        assert!(p.veth(252).len() <= 15, "interface names fit IFNAMSIZ");
        assert!(NetnsState::plan("a1b2c3", 7, 0).is_err());
        assert!(NetnsState::plan("a1b2c3", 7, MAX_NODES + 1).is_err());
        assert!(NetnsState::plan("a/b", 7, 1).is_err());
    }

    #[test]
    fn nat_plans_put_named_nodes_behind_gateways_and_keep_node_0_public() {
        let p =
            NetnsState::plan_with_nats("t", 1, 4, &[(1, Nat::Cone), (3, Nat::Symmetric)]).unwrap();
        assert_eq!(p.nodes[0].nat, None);
        assert_eq!(p.nodes[0].bind_addr(), Ipv4Addr::new(10, 213, 1, 1));
        let g = p.nodes[1].nat.as_ref().expect("node-1 is behind a NAT");
        assert_eq!(g.netns, "lamina-t-1g");
        assert_eq!(p.nodes[1].addr, Ipv4Addr::new(10, 213, 1, 2), "public");
        assert_eq!(p.nodes[1].bind_addr(), Ipv4Addr::new(192, 168, 1, 2));
        assert!(g.ruleset().contains("oifname \"wan\" masquerade\n"));
        let sym = p.nodes[3].nat.as_ref().unwrap().ruleset();
        assert!(sym.contains("masquerade fully-random"), "{sym}");
        assert!(
            sym.contains(&format!("dnat to 192.168.3.2:{NAT_API_PORT}")),
            "{sym}"
        );
        assert!(
            sym.contains("policy drop"),
            "inbound only for replies and the API"
        );
        assert!(NetnsState::plan_with_nats("t", 1, 4, &[(0, Nat::Cone)]).is_err());
        assert!(NetnsState::plan_with_nats("t", 1, 4, &[(4, Nat::Cone)]).is_err());
        assert!(NetnsState::plan_with_nats("t", 1, 4, &[(2, Nat::Cone), (2, Nat::Cone)]).is_err());
        assert_eq!("symmetric".parse::<Nat>().unwrap(), Nat::Symmetric);
        assert!("full-cone".parse::<Nat>().is_err());
        assert!(
            !sym.contains(&format!("udp dport {NAT_MESH_PORT}")),
            "only a forwarded NAT forwards the mesh port"
        );
        let f = NetnsState::plan_with_nats("t", 1, 3, &[(2, Nat::Forwarded)]).unwrap();
        let fwd = f.nodes[2].nat.as_ref().unwrap().ruleset();
        assert!(fwd.contains("masquerade fully-random"), "{fwd}");
        assert!(
            fwd.contains(&format!(
                "udp dport {NAT_MESH_PORT} dnat to 192.168.2.2:{NAT_MESH_PORT}"
            )),
            "{fwd}"
        );
        assert!(
            fwd.contains(&format!(
                "ip daddr 192.168.2.2 udp dport {NAT_MESH_PORT} ct status dnat accept"
            )),
            "{fwd}"
        );
    }

    #[test]
    fn cuts_go_both_ways_between_the_sides_only() {
        let p = NetnsState::plan("t", 1, 4).unwrap();
        let cuts = p.cuts(&ids(&["node-0", "node-1"]), &[]).unwrap();
        assert_eq!(cuts.len(), 8, "2 x 2 links, both directions");
        assert!(cuts.contains(&("lamina-t-0".into(), Ipv4Addr::new(10, 213, 1, 3))));
        assert!(cuts.contains(&("lamina-t-2".into(), Ipv4Addr::new(10, 213, 1, 1))));
        assert!(!cuts.contains(&("lamina-t-0".into(), Ipv4Addr::new(10, 213, 1, 2))));
        let one = p.cuts(&ids(&["node-0"]), &ids(&["node-3"])).unwrap();
        assert_eq!(
            one,
            [
                ("lamina-t-0".to_string(), Ipv4Addr::new(10, 213, 1, 4)),
                ("lamina-t-3".to_string(), Ipv4Addr::new(10, 213, 1, 1))
            ]
        );
        assert!(p.cuts(&ids(&["node-9"]), &[]).is_err());
        assert!(p.cuts(&ids(&["node-0"]), &ids(&["node-0"])).is_err());
        let all = ids(&["node-0", "node-1", "node-2", "node-3"]);
        assert!(p.cuts(&all, &[]).is_err(), "nobody on the other side");
    }

    #[test]
    fn subnets_in_use_are_avoided() {
        let routes = "default via 172.16.0.1 dev eth0\n\
                      10.213.5.0/24 dev lt1 proto kernel scope link src 10.213.5.254\n\
                      local 10.213.6.1 dev lo table local proto kernel\n\
                      172.16.0.0/24 dev eth0\n";
        let used = route_prefixes(routes);
        assert_eq!(used.len(), 3, "{used:?}");
        assert_eq!(free_subnet(&used, 5), Some(7));
        assert_eq!(free_subnet(&used, 255), Some(255));
        let everything = route_prefixes("10.0.0.0/8 dev eth1\n");
        assert_eq!(free_subnet(&everything, 0), None);
        assert!(overlaps(
            (Ipv4Addr::new(10, 213, 9, 0), 24),
            (Ipv4Addr::new(10, 213, 9, 77), 32)
        ));
        assert!(!overlaps(
            (Ipv4Addr::new(10, 213, 9, 0), 24),
            (Ipv4Addr::new(10, 213, 10, 0), 24)
        ));
    }
}
