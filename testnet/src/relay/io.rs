//! The UDP relay: a socket in front of an upstream endpoint that forwards datagrams both
//! ways through a [`Shaper`] per direction and a delay queue.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::shaper::{LinkSpec, Shaper, Verdict};
use super::RelayError;

/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;

/// Relay settings beyond the link specs.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// A client mapping (and its upstream socket) is dropped after this long without
    /// traffic either way.
    pub idle_timeout: Duration,
    /// Datagrams are dropped (and counted) while a direction's delay queue holds more
    /// bytes than this.
    pub max_queued_bytes: usize,
    /// Seed of the shapers' RNG (the two directions use `seed` and `seed + 1`).
    pub seed: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            max_queued_bytes: 4 << 20,
            seed: 0x6c61_6d69_6e61,
        }
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
struct DirCounters {
    forwarded: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    overflow: AtomicU64,
    send_errors: AtomicU64,
}

impl DirCounters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped_loss: self.lost.load(Ordering::Relaxed),
            dropped_overflow: self.overflow.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }
}

/// Counters of one direction, as of [`RelayHandle::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams sent on.
    pub forwarded: u64,
    /// Bytes sent on.
    pub bytes: u64,
    /// Datagrams dropped by the loss model.
    pub dropped_loss: u64,
    /// Datagrams dropped because the delay queue was full.
    pub dropped_overflow: u64,
    /// Datagrams the OS refused to send.
    pub send_errors: u64,
}

/// A relay's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Client -> upstream.
    pub inbound: DirectionStats,
    /// Upstream -> client.
    pub outbound: DirectionStats,
    /// Client mappings now.
    pub clients: usize,
    /// Client mappings dropped for idleness.
    pub clients_expired: u64,
}

/// A datagram waiting in a delay queue.
struct Queued {
    release: Instant,
    data: Vec<u8>,
    /// Where to send from; `to` is `None` for a connected socket.
    via: Arc<UdpSocket>,
    to: Option<SocketAddr>,
}

/// One direction: its shaper, queue and counters.
struct Direction {
    shaper: Mutex<Shaper<StdRng>>,
    transparent: bool,
    queue: mpsc::UnboundedSender<Queued>,
    queued_bytes: AtomicUsize,
    max_queued: usize,
    counters: DirCounters,
    epoch: Instant,
}

impl Direction {
    /// Shapes and sends (now, or through the delay queue) one datagram.
    async fn submit(&self, data: &[u8], via: &Arc<UdpSocket>, to: Option<SocketAddr>) {
        let now = Instant::now();
        let release = if self.transparent {
            now
        } else {
            let verdict = self
                .shaper
                .lock()
                .expect("shaper lock")
                .offer(now - self.epoch, data.len());
            match verdict {
                Verdict::Lost => {
                    self.counters.lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Verdict::Release(at) => self.epoch + at,
            }
        };
        let queued = self.queued_bytes.load(Ordering::Acquire);
        // Due now with nothing queued ahead of it: send from here (no queue hop).
        if queued == 0 && release <= now {
            send(&self.counters, via, to, data).await;
            return;
        }
        if queued + data.len() > self.max_queued {
            self.counters.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.queued_bytes.fetch_add(data.len(), Ordering::AcqRel);
        let item = Queued {
            release,
            data: data.to_vec(),
            via: via.clone(),
            to,
        };
        if self.queue.send(item).is_err() {
            self.queued_bytes.fetch_sub(data.len(), Ordering::AcqRel);
        }
    }
}

async fn send(counters: &DirCounters, via: &UdpSocket, to: Option<SocketAddr>, data: &[u8]) {
    let r = match to {
        Some(to) => via.send_to(data, to).await,
        None => via.send(data).await,
    };
    match r {
        Ok(_) => {
            counters.forwarded.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Err(_) => {
            counters.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Releases a direction's datagrams at their times. Release times never decrease (the
/// shaper keeps FIFO order), so a FIFO channel is the delay queue. Ends when every sender
/// is gone.
async fn delay_queue(dir: Arc<Direction>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    while let Some(q) = rx.recv().await {
        if q.release > Instant::now() {
            tokio::time::sleep_until(q.release).await;
        }
        send(&dir.counters, &q.via, q.to, &q.data).await;
        dir.queued_bytes.fetch_sub(q.data.len(), Ordering::AcqRel);
    }
}

struct Client {
    socket: Arc<UdpSocket>,
    /// Milliseconds since the epoch of the last datagram either way.
    last_seen: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

struct Shared {
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    inbound: Arc<Direction>,
    outbound: Arc<Direction>,
    clients: Mutex<HashMap<SocketAddr, Client>>,
    expired: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A userspace link emulator in front of one UDP endpoint.
pub struct Relay;

impl Relay {
    /// Binds `listen` and relays to `upstream`: client -> upstream shaped by `spec_in`,
    /// upstream -> client by `spec_out`. Each client (source address) gets its own upstream
    /// socket, so the upstream sees one stable 4-tuple per client (as QUIC needs) and its
    /// replies go back to the right client. Must be called inside a tokio runtime; the
    /// relay runs on it until the handle is dropped or shut down.
    pub fn spawn(
        listen: SocketAddr,
        upstream: SocketAddr,
        spec_in: LinkSpec,
        spec_out: LinkSpec,
    ) -> Result<RelayHandle, RelayError> {
        Self::spawn_with(listen, upstream, spec_in, spec_out, RelayConfig::default())
    }

    /// [`Relay::spawn`] with settings.
    pub fn spawn_with(
        listen: SocketAddr,
        upstream: SocketAddr,
        spec_in: LinkSpec,
        spec_out: LinkSpec,
        config: RelayConfig,
    ) -> Result<RelayHandle, RelayError> {
        spec_in.validate()?;
        spec_out.validate()?;
        let std_sock = std::net::UdpSocket::bind(listen)?;
        std_sock.set_nonblocking(true)?;
        let front = Arc::new(UdpSocket::from_std(std_sock)?);
        let local = front.local_addr()?;
        let epoch = Instant::now();
        let mut tasks = Vec::new();
        let mut direction = |spec: LinkSpec, seed: u64| {
            let (tx, rx) = mpsc::unbounded_channel();
            let dir = Arc::new(Direction {
                shaper: Mutex::new(Shaper::new(spec, StdRng::seed_from_u64(seed))),
                transparent: spec.is_transparent(),
                queue: tx,
                queued_bytes: AtomicUsize::new(0),
                max_queued: config.max_queued_bytes,
                counters: DirCounters::default(),
                epoch,
            });
            tasks.push(tokio::spawn(delay_queue(dir.clone(), rx)));
            dir
        };
        let inbound = direction(spec_in, config.seed);
        let outbound = direction(spec_out, config.seed.wrapping_add(1));
        let shared = Arc::new(Shared {
            front,
            upstream,
            inbound,
            outbound,
            clients: Mutex::new(HashMap::new()),
            expired: AtomicU64::new(0),
            epoch,
        });
        tasks.push(tokio::spawn(front_loop(shared.clone())));
        tasks.push(tokio::spawn(expire_loop(
            Arc::downgrade(&shared),
            config.idle_timeout,
        )));
        Ok(RelayHandle {
            local,
            upstream,
            shared,
            tasks,
        })
    }
}

/// Client -> upstream: receives on the listen socket, maps the client, shapes, forwards.
async fn front_loop(shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match shared.front.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors of earlier sends surface here on some systems: not fatal.
            Err(e) if transient(&e) => continue,
            Err(_) => return,
        };
        let Some(socket) = client_socket(&shared, from) else {
            shared
                .inbound
                .counters
                .send_errors
                .fetch_add(1, Ordering::Relaxed);
            continue;
        };
        shared.inbound.submit(&buf[..n], &socket, None).await;
    }
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

/// The upstream socket of client `from`, made (with its reply task) on first contact.
fn client_socket(shared: &Arc<Shared>, from: SocketAddr) -> Option<Arc<UdpSocket>> {
    let now = shared.millis();
    let mut clients = shared.clients.lock().expect("clients lock");
    if let Some(c) = clients.get(&from) {
        c.last_seen.store(now, Ordering::Relaxed);
        return Some(c.socket.clone());
    }
    let bind: SocketAddr = match shared.upstream {
        SocketAddr::V4(a) if a.ip().is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(a) if a.ip().is_loopback() => (Ipv6Addr::LOCALHOST, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(shared.upstream).ok()?;
    sock.set_nonblocking(true).ok()?;
    let socket = Arc::new(UdpSocket::from_std(sock).ok()?);
    let last_seen = Arc::new(AtomicU64::new(now));
    let task = tokio::spawn(back_loop(
        Arc::downgrade(shared),
        socket.clone(),
        from,
        last_seen.clone(),
    ));
    clients.insert(
        from,
        Client {
            socket: socket.clone(),
            last_seen,
            task,
        },
    );
    Some(socket)
}

/// Upstream -> client for one client. Ends when the relay is gone, on a socket error, or
/// when the expiry task aborts it.
async fn back_loop(
    shared: std::sync::Weak<Shared>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    last_seen: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            // The upstream is not (yet) listening: an ICMP error per earlier datagram.
            Err(e) if transient(&e) => continue,
            Err(_) => return,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        last_seen.store(shared.millis(), Ordering::Relaxed);
        let front = shared.front.clone();
        shared
            .outbound
            .submit(&buf[..n], &front, Some(client))
            .await;
    }
}

/// Drops client mappings idle for `idle`. Ends when the relay is gone.
async fn expire_loop(shared: std::sync::Weak<Shared>, idle: Duration) {
    let period = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = shared.millis();
        let idle_ms = idle.as_millis() as u64;
        let mut clients = shared.clients.lock().expect("clients lock");
        clients.retain(|_, c| {
            let keep = now.saturating_sub(c.last_seen.load(Ordering::Relaxed)) < idle_ms;
            if !keep {
                c.task.abort();
                shared.expired.fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
    }
}

/// A running relay. Dropping it (or [`RelayHandle::shutdown`]) stops its tasks and closes
/// its sockets; datagrams still in a delay queue are discarded.
pub struct RelayHandle {
    local: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("local", &self.local)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl RelayHandle {
    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Where datagrams go.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The link specs (client -> upstream, upstream -> client).
    pub fn specs(&self) -> (LinkSpec, LinkSpec) {
        let spec = |d: &Direction| *d.shaper.lock().expect("shaper lock").spec();
        (spec(&self.shared.inbound), spec(&self.shared.outbound))
    }

    pub fn stats(&self) -> RelayStats {
        RelayStats {
            inbound: self.shared.inbound.counters.snapshot(),
            outbound: self.shared.outbound.counters.snapshot(),
            clients: self.shared.clients.lock().expect("clients lock").len(),
            clients_expired: self.shared.expired.load(Ordering::Relaxed),
        }
    }

    /// Stops the relay (as dropping the handle does).
    pub fn shutdown(self) {}

    fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let mut clients = self.shared.clients.lock().expect("clients lock");
        for (_, c) in clients.drain() {
            c.task.abort();
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
