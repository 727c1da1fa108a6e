//! OpenAI's request and response shapes, and the validation that turns a request into
//! lamina's generation settings.
//!
//! A body is parsed twice from one JSON value: once into the fields both endpoints share
//! ([`CommonParams`]) and once into the endpoint's own ([`CompletionFields`],
//! [`ChatFields`]). Unknown fields are ignored (clients send extras), wrong types are 400s
//! naming the field, and settings lamina cannot honour are refused rather than dropped,
//! so a client never gets an answer to a different question than it asked.
//!
//! - [`request`]: the request shapes and their validation into [`Settings`];
//! - [`response`]: the response and chunk shapes.

mod request;
mod response;
#[cfg(test)]
mod tests;

pub use request::*;
pub use response::*;
