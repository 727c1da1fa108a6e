//! Loading a shard and measuring it: the throughput a node announces is what it measured
//! of its own layers, one sequence, one token at a time.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use lamina_protocol::LayerRange;
use lamina_sharding::executor::{LogitRows, Shard, ShardInput};
use lamina_sharding::source::ModelFile;

/// Loads `range` and times decode steps through it, off the async workers.
pub async fn load_and_measure(
    model: Arc<ModelFile>,
    range: LayerRange,
) -> Result<(Arc<Shard>, f64), lamina_sharding::Error> {
    let joined = tokio::task::spawn_blocking(move || {
        let shard = Arc::new(Shard::load(&model, range, &Device::Cpu)?);
        let tps = measure_tokens_per_sec(&shard)?;
        Ok((shard, tps))
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => Err(lamina_sharding::Error::InvalidInput(format!(
            "loading layers {range} failed: {e}"
        ))),
    }
}

/// Decode tokens per second for one sequence through the whole shard: the median of a
/// few one-token steps after a warm-up (the first steps pay page faults and pool start).
fn measure_tokens_per_sec(shard: &Shard) -> Result<f64, lamina_sharding::Error> {
    const STEPS: usize = 8;
    let mut cache = shard.new_cache(STEPS + 2)?;
    let dim = shard.config().dim;
    let input = || -> Result<ShardInput, lamina_sharding::Error> {
        Ok(if shard.is_first() {
            ShardInput::Tokens(vec![1])
        } else {
            ShardInput::Hidden(Tensor::zeros(
                (1, dim),
                candle_core::DType::F32,
                &Device::Cpu,
            )?)
        })
    };
    shard.forward(&mut cache, input()?, LogitRows::Last)?;
    let mut times = Vec::with_capacity(STEPS);
    for _ in 0..STEPS {
        let t = Instant::now();
        shard.forward(&mut cache, input()?, LogitRows::Last)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[STEPS / 2].max(1e-6);
    Ok(1.0 / median)
}
