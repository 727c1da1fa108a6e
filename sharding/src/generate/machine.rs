//! The generation state machine: what to feed the model next, which text became final,
//! and when to stop, given what each step answered. Pure: no model, no clock, no I/O.
//!
//! Why a machine rather than a loop over a callback: the same rules drive an in-process
//! chain of shards (a synchronous loop, [`super::generate_until`]) and a pipeline of remote
//! hops (an async loop in the node, which awaits the network between steps). Each driver
//! only moves data: it feeds [`Generation::prompt`], reports every step's answer to
//! [`Generation::on_step`], runs the step it is told to, and passes on the text. Stop
//! rules, sampling on this side, detokenization and context limits live here, once.

use crate::sampling::{Sampler, StopChecker};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};

use super::{session_length, FinishReason, GenerateRequest, GenerationOutput, Timings};

/// What the model answered for one step.
#[derive(Clone, Copy, Debug)]
pub enum StepOutcome<'a> {
    /// The last position's logits: this side samples, with the request's settings.
    Logits(&'a [f32]),
    /// The token the last hop already drew with the request's settings.
    Token(u32),
}

/// What the driver does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run one step on this token.
    Step(u32),
    /// The generation is over; call [`Generation::end`], then [`Generation::finish`].
    Done,
}

/// One generation's state between steps.
pub struct Generation<'t> {
    sampler: Sampler,
    stop: StopChecker,
    decoder: StreamDecoder<'t>,
    eog: Vec<u32>,
    vocab_size: usize,
    prompt: Vec<u32>,
    history: Vec<u32>,
    generated: Vec<u32>,
    text: String,
    /// Text that became final and was not taken yet.
    pending: String,
    max_tokens: usize,
    limit: usize,
    context_length: usize,
    /// Positions the model has consumed (the prompt, then one per decode step).
    position: usize,
    decode_steps: usize,
    finish: Option<FinishReason>,
    /// Whether the decoder's and the stop checker's held-back text is dropped at the end
    /// (a stop string matched, or the reader went away).
    skip_tail: bool,
}

impl<'t> Generation<'t> {
    /// Checks `req` against `context_length` (an empty prompt, or one that leaves no room,
    /// fails here, before any compute) and sets up the stop rules.
    pub fn new(
        tokenizer: &'t Tokenizer,
        req: &GenerateRequest,
        context_length: usize,
    ) -> Result<Self> {
        let limit = session_length(req, context_length)?;
        let mut g = Self {
            sampler: Sampler::new(req.sampling.clone())?,
            stop: StopChecker::new(req.stop.clone()),
            decoder: StreamDecoder::new(tokenizer),
            eog: tokenizer.eog_ids().to_vec(),
            vocab_size: tokenizer.vocab_size(),
            prompt: req.prompt_ids.clone(),
            history: req.prompt_ids.clone(),
            generated: Vec::new(),
            text: String::new(),
            pending: String::new(),
            max_tokens: req.max_tokens,
            limit,
            context_length,
            position: 0,
            decode_steps: 0,
            finish: None,
            skip_tail: false,
        };
        if req.max_tokens == 0 {
            g.finish = Some(FinishReason::Length);
        }
        Ok(g)
    }

    /// The first step's input, or `None` when there is nothing to generate.
    pub fn prompt(&self) -> Option<&[u32]> {
        (self.finish.is_none() && self.position == 0).then_some(self.prompt.as_slice())
    }

    /// Positions the model has consumed.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Whether the generation is over.
    pub fn is_done(&self) -> bool {
        self.finish.is_some()
    }

    /// Records the answer to the step just run (the prompt first, then each token the
    /// machine asked for) and decides the next one.
    pub fn on_step(&mut self, outcome: StepOutcome<'_>) -> Result<Next> {
        if self.finish.is_some() {
            return Err(Error::InvalidInput(
                "a step answered after the generation ended".into(),
            ));
        }
        self.position += if self.position == 0 {
            self.prompt.len()
        } else {
            self.decode_steps += 1;
            1
        };
        let tok = match outcome {
            StepOutcome::Logits(logits) => self.sampler.sample(logits, &self.history)?,
            StepOutcome::Token(t) => t,
        };
        // A remote hop's token is input: an id outside the vocabulary is refused here,
        // before it indexes anything.
        if tok as usize >= self.vocab_size {
            return Err(Error::InvalidInput(format!(
                "the model drew token {tok}, outside the vocabulary of {}",
                self.vocab_size
            )));
        }
        if self.eog.contains(&tok) {
            return Ok(self.done(FinishReason::Stop));
        }
        self.generated.push(tok);
        self.history.push(tok);
        let piece = self.decoder.push(tok)?;
        let (emit, stopped) = self.stop.push(&piece);
        self.text.push_str(&emit);
        self.pending.push_str(&emit);
        if stopped {
            self.skip_tail = true;
            return Ok(self.done(FinishReason::Stop));
        }
        if self.generated.len() >= self.max_tokens {
            return Ok(self.done(FinishReason::Length));
        }
        if self.position + 1 > self.limit || self.position >= self.context_length {
            return Ok(self.done(FinishReason::ContextLength));
        }
        Ok(Next::Step(tok))
    }

    fn done(&mut self, reason: FinishReason) -> Next {
        self.finish = Some(reason);
        Next::Done
    }

    /// The text that became final since the last call (possibly empty).
    pub fn take_text(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// The reader went away: the generation ends now, without its held-back tail, and
    /// says [`FinishReason::Cancelled`].
    pub fn cancel(&mut self) {
        self.finish = Some(FinishReason::Cancelled);
        self.skip_tail = true;
        self.pending.clear();
    }

    /// Ends the generation (if it was not over) and returns the held-back tail: the
    /// decoder's incomplete bytes and text a stop string might still have matched, unless
    /// a stop string matched or the reader went away. Part of the output's text already.
    pub fn end(&mut self) -> String {
        if self.finish.is_none() {
            self.finish = Some(FinishReason::Length);
        }
        if self.skip_tail {
            return String::new();
        }
        self.skip_tail = true;
        let rest = self.decoder.finish();
        let (mut tail, _) = self.stop.push(&rest);
        tail.push_str(&self.stop.flush());
        self.text.push_str(&tail);
        tail
    }

    /// The output, with the driver's measured phase times (milliseconds).
    pub fn finish(mut self, prefill_ms: f64, decode_ms: f64) -> GenerationOutput {
        let _ = self.end();
        let prefill_tokens = if self.position > 0 {
            self.prompt.len()
        } else {
            0
        };
        let timings = Timings {
            prefill_tokens,
            prefill_ms,
            prefill_tokens_per_s: rate(prefill_tokens, prefill_ms),
            decode_tokens: self.decode_steps,
            decode_ms,
            decode_tokens_per_s: rate(self.decode_steps, decode_ms),
        };
        GenerationOutput {
            prompt_token_ids: self.prompt,
            generated_token_ids: self.generated,
            text: self.text,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            timings,
        }
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 / (ms / 1e3)
    } else {
        0.0
    }
}
