//! The entry's own ends (`lamina node --private-ends`): it embeds the token ids and runs
//! the final norm, head and sampling itself, as Petals' clients do, so the hops of its
//! sessions see hidden states only, never a token id, a logit or the text.
//!
//! The embedding goes to the first hop in f32 and the last hop returns its last row in f32
//! ([`lamina_protocol::EndsAt::Entry`]): exactly the values the hops' own ends would have
//! used, so the tokens equal those of a default session. The ends run on tokio's blocking
//! pool: the head is a vocabulary-wide matmul per step, too long for an async worker.

use std::sync::Arc;

use lamina_protocol::{ForwardInput, WireDType, WireTensor};
use lamina_sharding::executor::Ends;

use super::{PipelineError, StepReply};
use crate::failure::Failure;

/// The model's embedding and head, shared by every session of the entry.
#[derive(Clone, Debug)]
pub struct EntryEnds(Arc<Ends>);

impl EntryEnds {
    pub fn new(ends: Ends) -> Self {
        Self(Arc::new(ends))
    }

    fn dim(&self) -> usize {
        self.0.config().dim
    }

    /// The first hop's input for `tokens`: their embeddings, f32.
    pub async fn input(&self, tokens: &[u32]) -> Result<ForwardInput, PipelineError> {
        let (ends, ids) = (self.0.clone(), tokens.to_vec());
        let rows = u32::try_from(ids.len())
            .map_err(|_| PipelineError::InvalidChain("more than u32::MAX tokens".into()))?;
        let v = tokio::task::spawn_blocking(move || ends.embed(&ids))
            .await
            .map_err(|e| {
                PipelineError::InvalidChain(format!("the embedding task failed: {e}"))
            })??;
        let dim = u32::try_from(self.dim())
            .map_err(|_| PipelineError::InvalidChain("model width over u32".into()))?;
        let t = WireTensor::from_f32(&[rows, dim], &v, WireDType::F32)
            .map_err(|e| PipelineError::InvalidChain(e.to_string()))?;
        Ok(ForwardInput::Hidden(t))
    }

    /// The last hop's answer (one row of hidden states) turned into logits and the greedy
    /// token; the caller's generation machine samples from the logits.
    pub async fn reply(&self, h: WireTensor) -> Result<StepReply, PipelineError> {
        let bad = |what: String| PipelineError::hop(Failure::BadAnswer, what);
        if h.shape() != [1, self.dim() as u32] {
            return Err(bad(format!(
                "the last hop returned hidden states of shape {:?}, not [1, {}]",
                h.shape(),
                self.dim()
            )));
        }
        let row = h.to_f32().map_err(|e| bad(e.to_string()))?;
        if row.iter().any(|x| !x.is_finite()) {
            return Err(bad("the last hop returned non-finite hidden states".into()));
        }
        let ends = self.0.clone();
        let logits = tokio::task::spawn_blocking(move || ends.logits(&row))
            .await
            .map_err(|e| PipelineError::InvalidChain(format!("the head task failed: {e}")))??;
        let token = argmax(&logits);
        Ok(StepReply {
            token,
            logits: Some(logits),
            proof: Default::default(),
        })
    }
}

/// The first index of the largest value (what greedy sampling draws).
fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}
