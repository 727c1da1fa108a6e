//! [`Message`]s over a stream of either data-plane transport (a quinn stream of the
//! node's own endpoint, or a libp2p stream on the mesh's connection): frames are written
//! as header + tensor chunks (no concatenation) and read through a [`FrameDecoder`],
//! which enforces the size limits before buffering.
//!
//! Why an enum and not a boxed `AsyncWrite`: quinn's streams take the frame's chunks
//! without a copy (`write_all_chunks`) and can be reset when a send times out; a libp2p
//! stream is written chunk by chunk and can only be closed (a reader sees a truncated
//! frame, which [`FrameDecoder::finish`] reports).

use std::time::Duration;

use lamina_protocol::{encode_frame_parts, FrameDecoder, FrameLimits, Message, ProtocolError};
use sync_wrapper::SyncWrapper;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use super::DataPlaneError;

/// A libp2p stream with tokio's I/O traits.
type P2pStream = Compat<libp2p::Stream>;

/// Bytes read from a libp2p stream at a time.
const P2P_READ_CHUNK: usize = 64 * 1024;

/// Splits a libp2p stream (one session) into framed halves.
pub fn p2p_framed(stream: libp2p::Stream, limits: FrameLimits) -> (FramedSend, FramedRecv) {
    let (r, w) = tokio::io::split(stream.compat());
    (
        FramedSend {
            inner: Writer::P2p(Some(SyncWrapper::new(w))),
            limits,
            within: crate::limits::PeerBounds::default().send_within,
        },
        FramedRecv {
            inner: Reader::P2p(SyncWrapper::new(r), vec![0u8; P2P_READ_CHUNK]),
            decoder: FrameDecoder::new(limits),
            ended: false,
        },
    )
}

/// Why [`FramedRecv::recv`] produced no message.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// One frame failed to decode. Unless [`ProtocolError::is_fatal`], the stream is still
    /// usable and the next call reads the next frame.
    #[error("bad frame: {0}")]
    Protocol(#[from] ProtocolError),
    /// The stream itself failed (reset, connection lost).
    #[error("stream failed: {0}")]
    Stream(String),
}

/// A libp2p stream is `Send` but not `Sync`; the halves are only ever used through
/// `&mut`, which [`SyncWrapper`] makes `Sync` soundly (sessions are shared by reference
/// across awaits).
enum Writer {
    Quic(quinn::SendStream),
    /// `None` once finished.
    P2p(Option<SyncWrapper<WriteHalf<P2pStream>>>),
}

enum Reader {
    Quic(quinn::RecvStream),
    P2p(SyncWrapper<ReadHalf<P2pStream>>, Vec<u8>),
}

/// The sending half of a framed stream.
pub struct FramedSend {
    inner: Writer,
    limits: FrameLimits,
    /// How long one send may wait for the peer's flow control.
    within: Duration,
}

impl FramedSend {
    /// Wraps a quinn send stream; each send must be taken by the peer within
    /// [`PeerBounds::send_within`](crate::limits::PeerBounds::send_within)'s default.
    pub fn new(inner: quinn::SendStream, limits: FrameLimits) -> Self {
        let within = crate::limits::PeerBounds::default().send_within;
        Self {
            inner: Writer::Quic(inner),
            limits,
            within,
        }
    }

    /// This stream with sends bounded by `within` instead.
    pub fn with_send_within(mut self, within: Duration) -> Self {
        self.within = within;
        self
    }

    /// Encodes and writes one message. Fails with [`DataPlaneError::SendTimeout`] when
    /// the peer does not take it in time: a peer that stops reading (its receive window
    /// full) must not hold this task and the session's slot forever.
    pub async fn send(&mut self, msg: &Message) -> Result<(), DataPlaneError> {
        let parts = encode_frame_parts(msg, &self.limits)?;
        let mut chunks = parts.into_chunks();
        let within = self.within;
        match &mut self.inner {
            Writer::Quic(w) => {
                match tokio::time::timeout(within, w.write_all_chunks(&mut chunks)).await {
                    Ok(r) => r.map_err(|e| DataPlaneError::Stream(e.to_string())),
                    Err(_) => {
                        // The frame is half written: nothing more can be sent on this stream.
                        let _ = w.reset(0u32.into());
                        Err(DataPlaneError::SendTimeout(within))
                    }
                }
            }
            Writer::P2p(slot) => {
                let Some(w) = slot.as_mut().map(SyncWrapper::get_mut) else {
                    return Err(DataPlaneError::Stream("the stream was finished".into()));
                };
                let write = async {
                    for c in chunks.iter() {
                        w.write_all(c).await?;
                    }
                    w.flush().await
                };
                match tokio::time::timeout(within, write).await {
                    Ok(r) => r.map_err(|e| DataPlaneError::Stream(e.to_string())),
                    Err(_) => {
                        // Half written: close it (the reader sees a truncated frame).
                        *slot = None;
                        Err(DataPlaneError::SendTimeout(within))
                    }
                }
            }
        }
    }

    /// Writes raw bytes (tests of malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), DataPlaneError> {
        let r = match &mut self.inner {
            Writer::Quic(w) => w.write_all(bytes).await.map_err(|e| e.to_string()),
            Writer::P2p(Some(w)) => {
                let w = w.get_mut();
                match w.write_all(bytes).await {
                    Ok(()) => w.flush().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Writer::P2p(None) => Err("the stream was finished".into()),
        };
        r.map_err(DataPlaneError::Stream)
    }

    /// Ends the stream gracefully (the peer reads end-of-stream after the last frame).
    pub fn finish(&mut self) {
        match &mut self.inner {
            // Finishing an already finished or reset stream is not an error worth
            // reporting.
            Writer::Quic(w) => {
                let _ = w.finish();
            }
            Writer::P2p(slot) => {
                if let Some(w) = slot.take() {
                    let mut w = w.into_inner();
                    // Closing a libp2p stream is asynchronous; bounded by the send deadline.
                    let within = self.within;
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(within, w.shutdown()).await;
                    });
                }
            }
        }
    }
}

/// The receiving half of a framed stream.
pub struct FramedRecv {
    inner: Reader,
    decoder: FrameDecoder,
    ended: bool,
}

impl FramedRecv {
    /// Wraps a quinn receive stream.
    pub fn new(inner: quinn::RecvStream, limits: FrameLimits) -> Self {
        Self {
            inner: Reader::Quic(inner),
            decoder: FrameDecoder::new(limits),
            ended: false,
        }
    }

    /// Enforces `limits` from the next frame on (see [`FrameDecoder::set_limits`]).
    pub fn set_limits(&mut self, limits: FrameLimits) {
        self.decoder.set_limits(limits);
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    pub async fn recv(&mut self) -> Result<Option<Message>, RecvError> {
        loop {
            if let Some(msg) = self.decoder.next_frame()? {
                return Ok(Some(msg));
            }
            if self.ended {
                // finish() reports a stream that stopped inside a frame, once.
                let r = self.decoder.finish();
                self.decoder = FrameDecoder::new(*self.decoder.limits());
                r?;
                return Ok(None);
            }
            match &mut self.inner {
                Reader::Quic(r) => match r.read_chunk(usize::MAX, true).await {
                    Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                    Ok(None) => self.ended = true,
                    Err(e) => return Err(RecvError::Stream(e.to_string())),
                },
                Reader::P2p(r, buf) => match r.get_mut().read(buf).await {
                    Ok(0) => self.ended = true,
                    Ok(n) => self.decoder.push(&buf[..n]),
                    Err(e) => return Err(RecvError::Stream(e.to_string())),
                },
            }
        }
    }
}
