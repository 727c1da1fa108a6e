//! The sharding crate's integration tests, one binary. Real models where the behaviour is
//! about models (`parity`, `tokenizer_parity`, `split`, `generate_cancel`), synthetic ones
//! for shapes and kernels (`synth`, `kernels`, `safetensors`, `bad_input`, `bad_files`), and the pure
//! parts (`planner`, `sampling`).

mod common;

mod bad_files;
mod bad_input;
mod generate_cancel;
mod kernels;
mod parity;
mod planner;
mod safetensors;
mod sampling;
mod split;
mod synth;
mod tokenizer_parity;
