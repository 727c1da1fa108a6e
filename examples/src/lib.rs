//! Small programs a user copies from; run them with `cargo run -p lamina-examples --example NAME`.
//!
//! - `local_split`: load a model as two shards and chain them by hand, the way two nodes
//!   of a mesh would, printing the generated text.
