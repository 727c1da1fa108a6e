//! Issue 16's bounds, one test each, against in-process session servers on the synthetic
//! tiny model (and the HTTP server on a trivial router): the limit is reached, the
//! refusal is typed (an error code, a close code, a status) and counted, and nothing else
//! is disturbed (the node goes on serving).

use std::io::{Read, Write};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use lamina_node::dataplane::{client_endpoint, DataPlaneError, Dialer};
use lamina_node::limits::{kv_bytes, Bound, HttpBounds, Refusals};
use lamina_protocol::{
    ErrorCode, Forward, ForwardInput, FrameLimits, Hello, LayerRange, Message, SessionId,
    WireDType, WireTensor,
};
use libp2p::identity::Keypair;

use crate::common::hops::{spawn_fake, tiny_model};
use crate::dataplane_bad_input::{
    client, expect_error, hidden_forward, open_msg, opts, recv, start_hop, still_serving, stream,
    DIM, LIMIT,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Hello + OpenSession of `session` on a fresh stream; the stream, open.
async fn open_session(
    d: &Dialer,
    hop: &crate::dataplane_bad_input::Hop,
    id: lamina_protocol::ModelId,
    session: u128,
) -> (
    lamina_node::dataplane::FramedSend,
    lamina_node::dataplane::FramedRecv,
) {
    let (mut tx, mut rx) = stream(d, hop).await;
    tx.send(&Message::Hello(Hello::new(id, "t"))).await.unwrap();
    tx.send(&open_msg(id, session, hop.server.host().layers))
        .await
        .unwrap();
    assert!(matches!(recv(&mut rx).await, Some(Message::HelloAck(_))));
    (tx, rx)
}

#[test]
fn the_kv_budget_refuses_a_session_that_does_not_fit_as_busy_and_frees_on_close() {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let (model, id) = tiny_model();
            let cfg = model.config().expect("config");
            // open_msg asks for 16 positions on all 4 layers: room for one such session.
            let one = kv_bytes(cfg.n_layers, cfg.kv_floats_per_position(), 16);
            let mut o = opts();
            o.peers.kv_budget_bytes = one + one / 2;
            let hop = start_hop(&model, id, 0, 4, o);
            let d = client();
            let (mut tx1, mut rx1) = open_session(&d, &hop, id, 1).await;
            assert!(matches!(
                recv(&mut rx1).await,
                Some(Message::SessionOpened(_))
            ));
            assert_eq!(hop.server.kv_budget().used(), one);

            let (_tx2, mut rx2) = open_session(&d, &hop, id, 2).await;
            expect_error(&mut rx2, ErrorCode::Busy).await;
            assert_eq!(hop.server.refusals().get(Bound::KvBudget), 1);
            assert_eq!(
                hop.server.kv_budget().used(),
                one,
                "a refusal holds nothing"
            );
            assert_eq!(hop.server.active_sessions(), 1);

            tx1.send(&Message::Close(lamina_protocol::Close {
                session_id: SessionId::from(1u128),
            }))
            .await
            .unwrap();
            assert!(matches!(recv(&mut rx1).await, Some(Message::Closed(_))));
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(hop.server.kv_budget().used(), 0, "closing gave it back");
            let (_tx3, mut rx3) = open_session(&d, &hop, id, 3).await;
            assert!(matches!(
                recv(&mut rx3).await,
                Some(Message::SessionOpened(_))
            ));
        })
        .await
        .expect("test finished in time");
    });
}

#[test]
fn a_step_over_the_row_limit_is_refused_and_the_session_goes_on() {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let (model, id) = tiny_model();
            let mut o = opts();
            o.peers.max_step_rows = 4;
            // A hop that takes hidden states, so the rows are whatever the test sends.
            let hop = start_hop(&model, id, 2, 4, o);
            let d = client();
            let (mut tx, mut rx) = open_session(&d, &hop, id, 1).await;
            assert!(matches!(
                recv(&mut rx).await,
                Some(Message::SessionOpened(_))
            ));
            let rows = 5u32;
            let v = vec![0.25f32; (rows * DIM) as usize];
            let five = Message::Forward(Forward {
                session_id: SessionId::from(1u128),
                step: 0,
                start_pos: 0,
                input: ForwardInput::Hidden(
                    WireTensor::from_f32(&[rows, DIM], &v, WireDType::F16).unwrap(),
                ),
            });
            tx.send(&five).await.unwrap();
            expect_error(&mut rx, ErrorCode::OverLimit).await;
            assert_eq!(hop.server.refusals().get(Bound::StepRows), 1);
            // Nothing of the refused step stuck: step 0 at position 0 runs.
            tx.send(&hidden_forward(1, 0, 0, DIM)).await.unwrap();
            assert!(matches!(recv(&mut rx).await, Some(Message::StepResult(_))));
        })
        .await
        .expect("test finished in time");
    });
}

#[test]
fn a_stream_that_does_not_open_its_session_in_time_is_closed() {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let (model, id) = tiny_model();
            let mut o = opts();
            o.peers.open_within = Duration::from_millis(300);
            let hop = start_hop(&model, id, 0, 4, o);
            let d = client();
            let (mut tx, mut rx) = stream(&d, &hop).await;
            tx.send(&Message::Hello(Hello::new(id, "slow")))
                .await
                .unwrap();
            assert!(matches!(recv(&mut rx).await, Some(Message::HelloAck(_))));
            expect_error(&mut rx, ErrorCode::OverLimit).await;
            assert!(recv(&mut rx).await.is_none(), "then the stream ends");
            assert_eq!(hop.server.refusals().get(Bound::OpenDeadline), 1);
            still_serving(&d, &[hop.chain_hop()], id).await;
        })
        .await
        .expect("test finished in time");
    });
}

#[test]
fn frames_before_the_session_opens_are_small() {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let (model, id) = tiny_model();
            let mut o = opts();
            o.peers.pre_open_frame_bytes = 4096;
            let hop = start_hop(&model, id, 0, 4, o);
            let d = client();
            let (mut tx, mut rx) = stream(&d, &hop).await;
            // 8 KiB of name: under the open stream's 1 MiB, over the 4 KiB before open.
            let big = Hello::new(id, "x".repeat(8192));
            tx.send(&Message::Hello(big)).await.unwrap();
            expect_error(&mut rx, ErrorCode::FrameTooLarge).await;
            assert_eq!(hop.server.refusals().get(Bound::FrameSize), 1);
            // An opened session takes frames up to the stream's limit: 2000 token ids
            // (a header over 4 KiB) reach the state machine, which judges them.
            let (mut tx2, mut rx2) = open_session(&d, &hop, id, 2).await;
            assert!(matches!(
                recv(&mut rx2).await,
                Some(Message::SessionOpened(_))
            ));
            tx2.send(&Message::Forward(Forward {
                session_id: SessionId::from(2u128),
                step: 0,
                start_pos: 0,
                input: ForwardInput::Tokens(vec![1; 2000]),
            }))
            .await
            .unwrap();
            expect_error(&mut rx2, ErrorCode::ContextOverflow).await;
            still_serving(&d, &[hop.chain_hop()], id).await;
        })
        .await
        .expect("test finished in time");
    });
}

#[test]
fn refused_requests_do_not_keep_a_session_alive() {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let (model, id) = tiny_model();
            let mut o = opts();
            o.idle_timeout = Duration::from_millis(800);
            let hop = start_hop(&model, id, 2, 4, o);
            let d = client();
            let (mut tx, mut rx) = open_session(&d, &hop, id, 1).await;
            assert!(matches!(
                recv(&mut rx).await,
                Some(Message::SessionOpened(_))
            ));
            // A step at the wrong position every 200 ms: each is refused, and none may
            // buy the session more time, so it is closed 800 ms after it opened.
            let mut refused = 0;
            let closed = loop {
                // Once the server ended the stream, sends fail: its Closed is then
                // waiting to be read.
                let _ = tx.send(&hidden_forward(1, 0, 7, DIM)).await;
                match recv(&mut rx).await {
                    Some(Message::Error(e)) => {
                        assert_eq!(e.code, ErrorCode::StepOutOfOrder);
                        refused += 1;
                    }
                    Some(Message::Closed(c)) => break c,
                    other => panic!("expected a refusal or Closed, got {other:?}"),
                }
                assert!(refused < 50, "the session outlived 50 refused requests");
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_eq!(closed.session_id, SessionId::from(1u128));
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(hop.server.active_sessions(), 0);
        })
        .await
        .expect("test finished in time");
    });
}

#[test]
fn connections_beyond_the_per_peer_limit_are_closed_with_a_typed_code() {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let (model, id) = tiny_model();
            let mut o = opts();
            o.peers.max_connections_per_peer = 1;
            let hop = start_hop(&model, id, 0, 4, o);
            let key = Keypair::generate_ed25519();
            let dialer = || {
                Dialer::new(
                    client_endpoint(None).expect("endpoint"),
                    FrameLimits::with_max_frame_bytes(LIMIT),
                    key.clone(),
                )
            };
            let (d1, d2) = (dialer(), dialer());
            let (_tx1, mut rx1) = open_session(&d1, &hop, id, 1).await;
            assert!(matches!(
                recv(&mut rx1).await,
                Some(Message::SessionOpened(_))
            ));
            // The same identity's second connection is closed at once.
            let conn = d2
                .connection(&hop.addr.to_string(), hop.peer)
                .await
                .expect("the handshake itself succeeds");
            let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
                .await
                .expect("closed by the server");
            match reason {
                quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(
                    c.error_code,
                    lamina_node::session::CLOSE_OVER_LIMIT.into(),
                    "{c:?}"
                ),
                other => panic!("expected an application close, got {other:?}"),
            }
            assert_eq!(hop.server.refusals().get(Bound::PeerConnections), 1);
            // Another peer is not affected.
            still_serving(&client(), &[hop.chain_hop()], id).await;
        })
        .await
        .expect("test finished in time");
    });
}

#[test]
fn connections_beyond_the_node_limit_are_closed_and_streams_per_connection_are_capped() {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let (model, id) = tiny_model();
            let mut o = opts();
            o.peers.max_connections = 1;
            o.peers.max_streams_per_connection = 2;
            let hop = start_hop(&model, id, 0, 4, o);
            let bounds = lamina_node::limits::PeerBounds {
                connect_within: Duration::from_millis(500),
                ..Default::default()
            };
            let d1 = client().with_bounds(bounds);
            let (_a, mut ra) = open_session(&d1, &hop, id, 1).await;
            assert!(matches!(
                recv(&mut ra).await,
                Some(Message::SessionOpened(_))
            ));
            let (_b, mut rb) = open_session(&d1, &hop, id, 2).await;
            assert!(matches!(
                recv(&mut rb).await,
                Some(Message::SessionOpened(_))
            ));
            // A third stream on the connection waits for credit the server never gives:
            // the dialer's deadline ends the wait with a typed error.
            match d1.open_stream(&hop.addr.to_string(), hop.peer).await {
                Err(DataPlaneError::ConnectTimeout { .. }) => {}
                Err(e) => panic!("expected ConnectTimeout, got {e}"),
                Ok(_) => panic!("a third stream opened on a connection allowed two"),
            }
            // Another peer's connection is over the node's limit of one.
            let d2 = client();
            let conn = d2
                .connection(&hop.addr.to_string(), hop.peer)
                .await
                .expect("the handshake itself succeeds");
            let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
                .await
                .expect("closed by the server");
            assert!(
                matches!(&reason, quinn::ConnectionError::ApplicationClosed(c)
                    if c.error_code == lamina_node::session::CLOSE_OVER_LIMIT.into()),
                "{reason:?}"
            );
            assert_eq!(hop.server.refusals().get(Bound::Connections), 1);
            assert_eq!(hop.server.connections().counts(), (1, 1));
        })
        .await
        .expect("test finished in time");
    });
}

#[test]
fn a_peer_that_stops_reading_does_not_hold_a_send() {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let layers = LayerRange::new(0, 4).unwrap();
            // A hop that accepts the stream and never reads from it.
            let (hop, _key) = spawn_fake(layers, FrameLimits::default(), |_tx, rx| async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(rx);
            });
            let d = client_dialer_with_big_frames();
            let (tx, _rx) = d.open_stream(&hop.addr, hop.peer).await.expect("stream");
            let mut tx = tx.with_send_within(Duration::from_millis(300));
            let frame = Message::Forward(Forward {
                session_id: SessionId::from(1u128),
                step: 0,
                start_pos: 0,
                input: ForwardInput::Tokens(vec![7; 200_000]),
            });
            let mut sent = 0;
            let err = loop {
                match tx.send(&frame).await {
                    Ok(()) => sent += 1,
                    Err(e) => break e,
                }
                assert!(sent < 200, "200 frames went into a peer that reads nothing");
            };
            assert!(matches!(err, DataPlaneError::SendTimeout(_)), "{err}");
        })
        .await
        .expect("test finished in time");
    });
}

fn client_dialer_with_big_frames() -> Dialer {
    crate::common::hops::client_dialer(FrameLimits::default())
}

// ----- HTTP ------------------------------------------------------------------------------

struct Http {
    addr: std::net::SocketAddr,
    refusals: Refusals,
    stop: tokio_util::sync::CancellationToken,
}

/// The API's server loop and body bound on a trivial router: `GET /` answers at once,
/// `POST /echo` answers the body's length.
async fn http(bounds: HttpBounds) -> Http {
    let refusals = Refusals::default();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/echo",
            post(|b: axum::body::Bytes| async move { b.len().to_string() }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            (bounds, refusals.clone()),
            lamina_node::api::server::bounded_body,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(lamina_node::api::server::serve(
        listener,
        app,
        bounds,
        refusals.clone(),
        stop.clone(),
    ));
    Http {
        addr,
        refusals,
        stop,
    }
}

/// Writes `req` on a fresh connection and reads until the server closes it or 10 s pass.
fn exchange(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn http_bounds_hold_headers_bodies_and_connections() {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let bounds = HttpBounds {
                max_connections: 3,
                max_connections_per_ip: 2,
                header_within: Duration::from_millis(300),
                body_within: Duration::from_millis(300),
                max_body_bytes: 1024,
            };
            let h = http(bounds).await;
            let addr = h.addr;
            let ok = tokio::task::spawn_blocking(move || {
                exchange(
                    addr,
                    b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                )
            });
            assert!(ok.await.unwrap().starts_with("HTTP/1.1 200"));

            // Headers that never end: the connection is dropped after 300 ms.
            let slow = tokio::task::spawn_blocking(move || exchange(addr, b"GET / HTTP/1.1\r\nhost"));
            let r = slow.await.unwrap();
            assert!(!r.contains("200 OK"), "{r}");
            // A body that never comes: 408.
            let trickle = tokio::task::spawn_blocking(move || {
                exchange(
                    addr,
                    b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nconnection: close\r\n\r\nabc",
                )
            });
            let r = trickle.await.unwrap();
            assert!(r.starts_with("HTTP/1.1 408"), "{r}");
            // A body over the cap: 413.
            let big = format!(
                "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2000\r\nconnection: close\r\n\r\n{}",
                "a".repeat(2000)
            );
            let r = tokio::task::spawn_blocking(move || exchange(addr, big.as_bytes()))
                .await
                .unwrap();
            assert!(r.starts_with("HTTP/1.1 413"), "{r}");
            assert!(h.refusals.get(Bound::HttpDeadline) >= 2, "header and body");
            assert_eq!(h.refusals.get(Bound::HttpBody), 1);

            // Two idle connections from 127.0.0.1 take its share; its third is closed
            // unanswered, while another address is still served.
            let hold: Vec<_> = (0..2)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let third = tokio::task::spawn_blocking(move || {
                exchange(addr, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            });
            assert_eq!(third.await.unwrap(), "", "closed without an answer");
            assert_eq!(h.refusals.get(Bound::HttpIpConnections), 1);
            let other = from_address([127, 0, 0, 2], addr).await;
            assert!(other.starts_with("HTTP/1.1 200"), "{other}");
            // Held from .2 as well, the node is at its cap of three: .3 is refused too.
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let _held2 = sock.connect(addr).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let refused = from_address([127, 0, 0, 3], addr).await;
            assert_eq!(refused, "", "closed without an answer");
            assert_eq!(h.refusals.get(Bound::HttpConnections), 1);
            drop(hold);
            // The held connections time out on their headers and free their slots.
            tokio::time::sleep(Duration::from_millis(600)).await;
            let again = tokio::task::spawn_blocking(move || {
                exchange(addr, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            });
            assert!(again.await.unwrap().starts_with("HTTP/1.1 200"));
            h.stop.cancel();
        })
        .await
        .expect("test finished in time");
    });
}

/// `GET /` from the loopback address `ip`; what came back before the server closed.
async fn from_address(ip: [u8; 4], addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((ip, 0).into()).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
