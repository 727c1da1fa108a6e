//! What a running generation reports to the handler that answers it.

use lamina_sharding::generate::GenerationOutput;

use super::errors::ApiError;

/// What a running generation reports to the HTTP side.
#[derive(Debug)]
pub enum Event {
    /// The prefill went through: the session is open and the first token drawn.
    Started,
    Text(String),
    Done(Result<GenerationOutput, ApiError>),
}
