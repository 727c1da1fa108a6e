//! The UDP relay on loopback: a transparent relay echoes everything, latency delays the
//! round trip, 100% loss drops everything, clients get their own replies, and a real QUIC
//! connection works through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lamina_testnet::relay::{LinkSpec, Relay, RelayHandle};
use tokio::net::UdpSocket;

const LOCAL: &str = "127.0.0.1:0";

/// A UDP echo server; returns its address.
async fn echo_server() -> SocketAddr {
    let sock = UdpSocket::bind(LOCAL).await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

fn relay(upstream: SocketAddr, spec: LinkSpec) -> RelayHandle {
    Relay::spawn(LOCAL.parse().unwrap(), upstream, spec, spec).unwrap()
}

async fn client(to: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(LOCAL).await.unwrap();
    s.connect(to).await.unwrap();
    s
}

async fn recv_timeout(s: &UdpSocket, buf: &mut [u8], t: Duration) -> Option<usize> {
    tokio::time::timeout(t, s.recv(buf))
        .await
        .ok()
        .map(|r| r.unwrap())
}

#[tokio::test]
async fn transparent_relay_echoes_everything() {
    let echo = echo_server().await;
    let r = relay(echo, LinkSpec::default());
    let c = client(r.local_addr()).await;
    let mut buf = vec![0u8; 2000];
    for i in 0..200u32 {
        let msg = [i.to_le_bytes().as_slice(), &[7u8; 1196]].concat();
        c.send(&msg).await.unwrap();
        let n = recv_timeout(&c, &mut buf, Duration::from_secs(5))
            .await
            .expect("echo");
        assert_eq!(&buf[..n], &msg[..]);
    }
    let st = r.stats();
    assert_eq!(st.inbound.forwarded, 200);
    assert_eq!(st.outbound.forwarded, 200);
    assert_eq!(st.inbound.bytes, 200 * 1200);
    assert_eq!(st.clients, 1);
}

#[tokio::test]
async fn latency_delays_the_round_trip() {
    let echo = echo_server().await;
    let r = relay(echo, LinkSpec::latency(Duration::from_millis(20)));
    let c = client(r.local_addr()).await;
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        let t = Instant::now();
        c.send(b"ping").await.unwrap();
        recv_timeout(&c, &mut buf, Duration::from_secs(5))
            .await
            .expect("echo");
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(40), "rtt {rtt:?}");
        assert!(rtt < Duration::from_secs(2), "rtt {rtt:?}");
    }
    // Back-to-back datagrams keep their order through the delay queue.
    for i in 0..50u8 {
        c.send(&[i]).await.unwrap();
    }
    for i in 0..50u8 {
        let n = recv_timeout(&c, &mut buf, Duration::from_secs(5))
            .await
            .expect("echo");
        assert_eq!(&buf[..n], &[i]);
    }
}

#[tokio::test]
async fn full_loss_drops_everything() {
    let echo = echo_server().await;
    let spec = LinkSpec {
        loss: 1.0,
        ..LinkSpec::default()
    };
    let r = relay(echo, spec);
    let c = client(r.local_addr()).await;
    for _ in 0..100 {
        c.send(b"x").await.unwrap();
    }
    let mut buf = [0u8; 8];
    assert!(recv_timeout(&c, &mut buf, Duration::from_millis(300))
        .await
        .is_none());
    let st = r.stats();
    assert_eq!(st.inbound.dropped_loss, 100);
    assert_eq!(st.inbound.forwarded, 0);
}

#[tokio::test]
async fn overflow_is_bounded_and_counted() {
    let echo = echo_server().await;
    let spec = LinkSpec::latency(Duration::from_millis(500));
    let r = Relay::spawn_with(
        LOCAL.parse().unwrap(),
        echo,
        spec,
        LinkSpec::default(),
        lamina_testnet::relay::RelayConfig {
            max_queued_bytes: 10_000,
            ..Default::default()
        },
    )
    .unwrap();
    let c = client(r.local_addr()).await;
    for _ in 0..20 {
        c.send(&[0u8; 1000]).await.unwrap();
    }
    // Let the relay read them all.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = r.stats();
    assert_eq!(st.inbound.dropped_overflow, 10, "{st:?}");
}

#[tokio::test]
async fn clients_get_their_own_replies_and_idle_ones_expire() {
    let echo = echo_server().await;
    let r = Relay::spawn_with(
        LOCAL.parse().unwrap(),
        echo,
        LinkSpec::latency(Duration::from_millis(5)),
        LinkSpec::default(),
        lamina_testnet::relay::RelayConfig {
            idle_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .unwrap();
    let a = client(r.local_addr()).await;
    let b = client(r.local_addr()).await;
    let mut buf = [0u8; 64];
    for i in 0..20u8 {
        a.send(&[b'a', i]).await.unwrap();
        b.send(&[b'b', i]).await.unwrap();
    }
    for i in 0..20u8 {
        let n = recv_timeout(&a, &mut buf, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(&buf[..n], &[b'a', i]);
        let n = recv_timeout(&b, &mut buf, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(&buf[..n], &[b'b', i]);
    }
    assert_eq!(r.stats().clients, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.stats().clients > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = r.stats();
    assert_eq!((st.clients, st.clients_expired), (0, 2));
    // A client that comes back gets a new mapping and is served.
    a.send(b"again").await.unwrap();
    let n = recv_timeout(&a, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"again");
}

#[tokio::test]
async fn shutdown_closes_the_relay() {
    let echo = echo_server().await;
    let r = relay(echo, LinkSpec::default());
    let addr = r.local_addr();
    r.shutdown();
    // The port is free again once the tasks have dropped the socket.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if std::net::UdpSocket::bind(addr).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "relay socket still bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- QUIC through the relay -------------------------------------------------------------

/// Accepts any server certificate (the test pins nothing; it checks the relay, not TLS).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn quic_server() -> quinn::Endpoint {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["relay-test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let cfg = quinn::ServerConfig::with_single_cert(vec![cert], key).unwrap();
    quinn::Endpoint::server(cfg, LOCAL.parse().unwrap()).unwrap()
}

fn quic_client() -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(LOCAL.parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    ep
}

/// Echoes every bidirectional stream of every connection.
fn serve_echo(server: quinn::Endpoint) {
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let data = recv.read_to_end(16 << 20).await.unwrap();
                        send.write_all(&data).await.unwrap();
                        send.finish().unwrap();
                    });
                }
            });
        }
    });
}

async fn quic_echo(conn: &quinn::Connection, data: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(data).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(16 << 20).await.unwrap()
}

#[tokio::test]
async fn quic_works_through_the_relay() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = quic_server();
    let server_addr = server.local_addr().unwrap();
    serve_echo(server);
    let spec = LinkSpec {
        latency: Duration::from_millis(10),
        jitter: Duration::from_millis(1),
        loss: 0.01,
        bandwidth_bps: Some(200_000_000),
    };
    let r = relay(server_addr, spec);
    // Two clients at once: each has its own 4-tuple at the server.
    let (c1, c2) = (quic_client(), quic_client());
    let t = Instant::now();
    let conn1 = tokio::time::timeout(
        Duration::from_secs(20),
        c1.connect(r.local_addr(), "relay-test").unwrap(),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    // A handshake takes at least one round trip (2 x 10 ms, minus jitter).
    assert!(
        t.elapsed() >= Duration::from_millis(18),
        "{:?}",
        t.elapsed()
    );
    let conn2 = c2
        .connect(r.local_addr(), "relay-test")
        .unwrap()
        .await
        .expect("second handshake");
    let small = b"hello through the relay".to_vec();
    assert_eq!(quic_echo(&conn1, &small).await, small);
    // 2 MB with 1% loss: QUIC retransmits what the relay drops.
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let (a, b) = tokio::join!(quic_echo(&conn1, &big), quic_echo(&conn2, &small));
    assert_eq!(a, big);
    assert_eq!(b, small);
    let st = r.stats();
    assert_eq!(st.clients, 2);
    assert!(st.inbound.forwarded > 1000, "{st:?}");
    conn1.close(0u32.into(), b"done");
    conn2.close(0u32.into(), b"done");
}
