//! Loads a model as two shards, chains them by hand (hidden states from the first shard
//! are the input of the second, as they would cross the network between two nodes) and
//! generates greedily.
//!
//! `cargo run --release -p lamina-examples --example local_split -- MODEL.gguf "Once upon a time"`

use anyhow::Context;
use candle_core::Device;
use lamina_sharding::executor::{LogitRows, Shard, ShardInput, ShardOutput};
use lamina_sharding::sampling::argmax;
use lamina_sharding::source::ModelFile;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .context("usage: local_split MODEL.gguf [PROMPT]")?;
    let prompt = args.next().unwrap_or_else(|| "Once upon a time".into());
    let model = ModelFile::open(&path)?;
    let cfg = model.config()?;
    let tok = model.tokenizer()?;
    let mid = cfg.n_layers / 2;
    let front = Shard::load(
        &model,
        lamina_sharding::layers::range(0, mid.max(1))?,
        &Device::Cpu,
    )?;
    let back = Shard::load(
        &model,
        lamina_sharding::layers::range(mid.max(1), cfg.n_layers)?,
        &Device::Cpu,
    )?;
    let ids = tok.encode(&prompt, tok.add_bos_default(), false)?;
    let max_len = ids.len() + 32;
    let (mut c1, mut c2) = (front.new_cache(max_len)?, back.new_cache(max_len)?);
    let mut input = ids.clone();
    let mut out = Vec::new();
    for _ in 0..32 {
        let ShardOutput::Hidden(h) =
            front.forward(&mut c1, ShardInput::Tokens(input), LogitRows::Last)?
        else {
            anyhow::bail!("the front shard should return hidden states");
        };
        let ShardOutput::Logits(l) =
            back.forward(&mut c2, ShardInput::Hidden(h), LogitRows::Last)?
        else {
            anyhow::bail!("the back shard should return logits");
        };
        let next = argmax(&l.get(0)?.to_vec1::<f32>()?);
        if tok.eog_ids().contains(&next) {
            break;
        }
        out.push(next);
        input = vec![next];
    }
    println!("{prompt}{}", tok.decode(&out)?);
    Ok(())
}
