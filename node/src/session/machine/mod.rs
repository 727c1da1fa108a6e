//! The per-stream session state machine of a hop: which message is legal when, and every
//! check that needs no model and no socket. Pure (no I/O, no clock): the server
//! ([`super::server`]) drives it and does what it decides.
//!
//! One data-plane stream carries one session: `Hello` -> `OpenSession` -> `Forward`* ->
//! `Close`. Every refusal is an [`ErrorMessage`] with a typed code; a refused message leaves
//! the state unchanged, so the stream (and the session) can go on.

use lamina_protocol::{
    EndsAt, ErrorCode, ErrorMessage, Forward, ForwardInput, Hello, HelloAck, LayerRange, ModelId,
    OpenSession, SessionId,
};

/// What a hop serves: fixed for the life of the node.
#[derive(Clone, Debug)]
pub struct HostInfo {
    pub node_name: String,
    pub model_id: ModelId,
    /// The layers loaded (sessions must ask for exactly these).
    pub layers: LayerRange,
    /// Layers of the whole model.
    pub n_layers: u32,
    /// Width of the hidden states.
    pub hidden_dim: u32,
    /// Vocabulary size (token ids must be below it).
    pub vocab_size: u32,
    /// Most positions a session may ask for.
    pub context_length: u32,
    /// Most rows one `Forward` may carry ([`crate::limits::PeerBounds::max_step_rows`]):
    /// attention's scratch grows with rows times context.
    pub max_step_rows: u32,
}

impl HostInfo {
    /// Whether this hop embeds tokens.
    pub fn is_first(&self) -> bool {
        self.layers.start == 0
    }

    /// Whether this hop runs the output head.
    pub fn is_last(&self) -> bool {
        self.layers.end == self.n_layers
    }
}

/// What a hop does with the output of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends hidden states to the next hop and relays its result upstream.
    Forward,
    /// Runs the head and samples (returning logits when asked).
    Sample { return_logits: bool },
    /// Returns its hidden states upstream (a client running the rest itself).
    ReturnHidden,
    /// Runs the model's last layer for an entry that runs the head itself
    /// ([`EndsAt::Entry`]): returns the step's last row of hidden states, in f32, so the
    /// entry's head sees exactly what this hop's own would have.
    ReturnLast,
}

/// The state of an open session on this stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenState {
    pub session_id: SessionId,
    pub max_length: u32,
    /// Step numbers must increase strictly; the next one must be at least this.
    pub next_step: u64,
    /// Positions held by the KV cache (= the next `start_pos`).
    pub position: u32,
    pub role: Role,
    /// Whether this hop embeds the session's token ids: it runs layer 0 and the entry
    /// does not run the ends itself. Else its input is hidden states.
    pub embeds: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    AwaitOpen,
    Open(OpenState),
    Closed,
}

/// The state machine of one data-plane stream.
#[derive(Clone, Debug)]
pub struct StreamMachine {
    host: HostInfo,
    phase: Phase,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ErrorMessage {
    ErrorMessage::new(code, msg)
}

impl StreamMachine {
    /// A fresh stream, waiting for `Hello`.
    pub fn new(host: HostInfo) -> Self {
        Self {
            host,
            phase: Phase::AwaitHello,
        }
    }

    /// The host this machine checks against.
    pub fn host(&self) -> &HostInfo {
        &self.host
    }

    /// The open session, if any.
    pub fn session(&self) -> Option<&OpenState> {
        match &self.phase {
            Phase::Open(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the stream's session was closed (by request or expiry).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// `Hello`: the protocol version was checked by the decoder; here the model.
    pub fn on_hello(&mut self, h: &Hello) -> Result<HelloAck, ErrorMessage> {
        if self.phase != Phase::AwaitHello {
            return Err(err(
                ErrorCode::UnexpectedMessage,
                "Hello was already received",
            ));
        }
        if h.model_id != self.host.model_id {
            return Err(err(
                ErrorCode::WrongModel,
                format!(
                    "this node serves model {}, not {}",
                    self.host.model_id, h.model_id
                ),
            ));
        }
        self.phase = Phase::AwaitOpen;
        Ok(HelloAck::new(
            self.host.node_name.clone(),
            Some(self.host.layers),
        ))
    }

    /// Checks an `OpenSession` (`slot_free`: whether the node's session limit allows one
    /// more). On success returns the role; call [`opened`](Self::opened) once the session
    /// really is open (after the next hop accepted it, for a forwarding hop).
    pub fn check_open(&self, o: &OpenSession, slot_free: bool) -> Result<Role, ErrorMessage> {
        match self.phase {
            Phase::AwaitHello => {
                return Err(err(
                    ErrorCode::UnexpectedMessage,
                    "OpenSession before Hello",
                ))
            }
            Phase::Open(_) => {
                return Err(err(
                    ErrorCode::SessionExists,
                    "this stream already carries a session (open one stream per session)",
                ))
            }
            Phase::Closed => {
                return Err(err(ErrorCode::UnexpectedMessage, "the session was closed"))
            }
            Phase::AwaitOpen => {}
        }
        if o.model_id != self.host.model_id {
            return Err(err(
                ErrorCode::WrongModel,
                format!(
                    "this node serves model {}, not {}",
                    self.host.model_id, o.model_id
                ),
            ));
        }
        // A hop may run any part of what its node loaded (routes over overlapping ranges).
        if o.layers.start < self.host.layers.start || o.layers.end > self.host.layers.end {
            return Err(err(
                ErrorCode::LayerMismatch,
                format!(
                    "this node runs layers {}, the session asks for {}",
                    self.host.layers, o.layers
                ),
            ));
        }
        if o.max_length > self.host.context_length {
            return Err(err(
                ErrorCode::ContextOverflow,
                format!(
                    "max_length {} exceeds the model's context of {}",
                    o.max_length, self.host.context_length
                ),
            ));
        }
        let is_last = o.layers.end == self.host.n_layers;
        let role = match (is_last, o.next_hops.is_empty(), o.sampling) {
            (true, true, None) if o.ends == EndsAt::Entry => Role::ReturnLast,
            (true, true, Some(_)) => Role::Sample {
                return_logits: o.return_logits,
            },
            (true, true, None) => {
                return Err(err(
                    ErrorCode::InvalidMessage,
                    "the last hop needs sampling settings",
                ))
            }
            (true, false, _) => {
                return Err(err(
                    ErrorCode::LayerMismatch,
                    "next hops after the model's last layer",
                ))
            }
            (false, false, _) => Role::Forward,
            (false, true, _) => Role::ReturnHidden,
        };
        if !slot_free {
            return Err(err(
                ErrorCode::SessionLimit,
                "this node serves its maximum number of sessions; try another node or later",
            ));
        }
        Ok(role)
    }

    /// Records that the session is open.
    pub fn opened(&mut self, o: &OpenSession, role: Role) {
        // From here on the stream is about the session's layers (which input it takes,
        // whether it samples), which may be part of what the node loaded.
        self.host.layers = o.layers;
        self.phase = Phase::Open(OpenState {
            session_id: o.session_id,
            max_length: o.max_length,
            next_step: 0,
            position: 0,
            role,
            embeds: self.host.is_first() && o.ends == EndsAt::Hops,
        });
    }

    /// Checks a `Forward` against the session: id, step order, positions, input kind and
    /// shape. On success returns the number of rows.
    pub fn check_forward(&self, f: &Forward) -> Result<u32, ErrorMessage> {
        let Phase::Open(s) = &self.phase else {
            return Err(err(
                ErrorCode::UnknownSession,
                format!("no open session {} on this stream", f.session_id),
            ));
        };
        if f.session_id != s.session_id {
            return Err(err(
                ErrorCode::UnknownSession,
                format!(
                    "session {} is not open on this stream (it carries {})",
                    f.session_id, s.session_id
                ),
            ));
        }
        // `next_step` saturates, so a step numbered u64::MAX could be accepted again and
        // again: the last usable step number is u64::MAX - 1.
        if f.step == u64::MAX {
            return Err(err(
                ErrorCode::StepOutOfOrder,
                "step u64::MAX: step numbers end at u64::MAX - 1",
            ));
        }
        if f.step < s.next_step {
            return Err(err(
                ErrorCode::StepOutOfOrder,
                format!(
                    "step {} after step {}",
                    f.step,
                    s.next_step.saturating_sub(1)
                ),
            ));
        }
        if f.start_pos != s.position {
            return Err(err(
                ErrorCode::StepOutOfOrder,
                format!(
                    "start_pos {} but the cache holds {} positions",
                    f.start_pos, s.position
                ),
            ));
        }
        let rows = f.rows();
        if u64::from(s.position) + u64::from(rows) > u64::from(s.max_length) {
            return Err(err(
                ErrorCode::ContextOverflow,
                format!(
                    "{} + {rows} positions exceed the session's max_length {}",
                    s.position, s.max_length
                ),
            ));
        }
        if rows > self.host.max_step_rows {
            return Err(err(
                ErrorCode::OverLimit,
                format!(
                    "{rows} rows in one step; this hop takes at most {} (split the prefill)",
                    self.host.max_step_rows
                ),
            ));
        }
        match (&f.input, s.embeds) {
            (ForwardInput::Tokens(t), true) => {
                if let Some(bad) = t.iter().find(|&&id| id >= self.host.vocab_size) {
                    return Err(err(
                        ErrorCode::InvalidMessage,
                        format!(
                            "token id {bad} is outside the vocabulary (size {})",
                            self.host.vocab_size
                        ),
                    ));
                }
            }
            (ForwardInput::Tokens(_), false) => {
                return Err(err(
                    ErrorCode::BadTensor,
                    format!(
                        "this hop runs layers {} and takes hidden states, not token ids",
                        self.host.layers
                    ),
                ))
            }
            (ForwardInput::Hidden(_), true) => {
                return Err(err(
                    ErrorCode::BadTensor,
                    "this hop embeds the session's token ids; it takes no hidden states",
                ))
            }
            (ForwardInput::Hidden(h), false) => {
                if h.shape() != [rows, self.host.hidden_dim] {
                    return Err(err(
                        ErrorCode::BadTensor,
                        format!(
                            "hidden states must have shape [rows, {}], got {:?}",
                            self.host.hidden_dim,
                            h.shape()
                        ),
                    ));
                }
            }
        }
        Ok(rows)
    }

    /// Records that step `step` of `rows` rows ran.
    pub fn forwarded(&mut self, step: u64, rows: u32) {
        if let Phase::Open(s) = &mut self.phase {
            s.next_step = step.saturating_add(1);
            s.position = s.position.saturating_add(rows);
        }
    }

    /// Checks a `Close`.
    pub fn check_close(&self, id: SessionId) -> Result<(), ErrorMessage> {
        match &self.phase {
            Phase::Open(s) if s.session_id == id => Ok(()),
            _ => Err(err(
                ErrorCode::UnknownSession,
                format!("no open session {id} on this stream"),
            )),
        }
    }

    /// Records the end of the session (by `Close` or idle expiry).
    pub fn closed(&mut self) {
        self.phase = Phase::Closed;
    }
}

#[cfg(test)]
mod tests;
