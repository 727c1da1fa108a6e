//! [`Message`]s over a quinn stream: frames are written as header + tensor chunks (no
//! concatenation) and read through a [`FrameDecoder`], which enforces the size limits
//! before buffering.

use std::time::Duration;

use lamina_protocol::{encode_frame_parts, FrameDecoder, FrameLimits, Message, ProtocolError};

use super::DataPlaneError;

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

/// The sending half of a framed stream.
pub struct FramedSend {
    inner: quinn::SendStream,
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
            inner,
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
        match tokio::time::timeout(self.within, self.inner.write_all_chunks(&mut chunks)).await {
            Ok(r) => r.map_err(|e| DataPlaneError::Stream(e.to_string())),
            Err(_) => {
                // The frame is half written: nothing more can be sent on this stream.
                let _ = self.inner.reset(0u32.into());
                Err(DataPlaneError::SendTimeout(self.within))
            }
        }
    }

    /// Writes raw bytes (tests of malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), DataPlaneError> {
        self.inner
            .write_all(bytes)
            .await
            .map_err(|e| DataPlaneError::Stream(e.to_string()))
    }

    /// Ends the stream gracefully (the peer reads end-of-stream after the last frame).
    pub fn finish(&mut self) {
        // Finishing an already finished or reset stream is not an error worth reporting.
        let _ = self.inner.finish();
    }
}

/// The receiving half of a framed stream.
pub struct FramedRecv {
    inner: quinn::RecvStream,
    decoder: FrameDecoder,
    ended: bool,
}

impl FramedRecv {
    /// Wraps a quinn receive stream.
    pub fn new(inner: quinn::RecvStream, limits: FrameLimits) -> Self {
        Self {
            inner,
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
            match self.inner.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                Ok(None) => self.ended = true,
                Err(e) => return Err(RecvError::Stream(e.to_string())),
            }
        }
    }
}
