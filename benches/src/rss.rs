//! `lamina-bench rss`: how much memory a shard holds, by layer range.
//!
//! Each measurement is a fresh child process (`rss-worker`) that loads one shard with
//! `Shard::load`, drops the `ModelFile` (so the file's memory map, and the page-cache pages
//! it had touched, no longer count), and reports `VmRSS` and `VmHWM` from
//! `/proc/self/status`. A baseline child of the same binary loads nothing. "Held" is the
//! shard process's `VmRSS` minus the baseline's.

use crate::child::run_json;
use crate::report::{markdown_table, median};
use crate::sys;
use anyhow::{Context, Result};
use candle_core::Device;
use candle_core::{DType, Tensor};
use lamina_sharding::executor::{LogitRows, Shard, ShardInput};
use lamina_sharding::layers::LayerRange;
use lamina_sharding::source::ModelFile;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What one `rss-worker` process reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RssSample {
    /// `None` for the baseline process.
    pub range: Option<LayerRange>,
    /// `VmRSS` when `main` started, before anything was read.
    pub rss_start_kib: u64,
    /// `VmRSS` with the shard loaded, the model file closed and one step run.
    pub rss_kib: u64,
    /// Peak `VmRSS` of the process (`VmHWM`), loading included.
    pub hwm_kib: u64,
    /// Bytes of the tensors the range reads from the file.
    pub weight_bytes: u64,
}

/// Bytes of the tensors a shard of `range` reads (the embedding for the first shard, or for
/// the last one when the head is tied to it; the blocks; the final norm and head).
pub fn range_weight_bytes(model: &ModelFile, range: LayerRange) -> Result<u64> {
    let cfg = model.config()?;
    let is_last = range.is_last(cfg.n_layers);
    let mut sum = 0;
    for t in model.tensor_list() {
        let wanted = if let Some(rest) = t.name.strip_prefix("blk.") {
            rest.split('.')
                .next()
                .and_then(|l| l.parse::<u32>().ok())
                .is_some_and(|l| range.contains(l))
        } else {
            match t.name.as_str() {
                "token_embd.weight" => range.is_first() || (is_last && cfg.tied_embeddings),
                "output_norm.weight" | "output.weight" => is_last,
                _ => false,
            }
        };
        if wanted {
            sum += t.bytes.unwrap_or(0);
        }
    }
    Ok(sum)
}

/// The body of `rss-worker`: load `range` of `path` (or nothing) and report.
pub fn worker(path: &Path, range: Option<LayerRange>) -> Result<RssSample> {
    let rss_start_kib = sys::status_kib("VmRSS").context("no /proc/self/status")?;
    let mut weight_bytes = 0;
    let shard = match range {
        Some(r) => {
            let model = ModelFile::open(path)?;
            weight_bytes = range_weight_bytes(&model, r)?;
            let shard = Shard::load(&model, r, &Device::Cpu)?;
            drop(model);
            // Weights the kernels read in place are only paged in when used: one forward
            // step touches every weight, so the figure is what a serving node holds.
            touch_every_weight(&shard)?;
            Some(shard)
        }
        None => None,
    };
    let rss_kib = sys::status_kib("VmRSS").context("no VmRSS")?;
    let hwm_kib = sys::status_kib("VmHWM").context("no VmHWM")?;
    std::hint::black_box(&shard);
    drop(shard);
    Ok(RssSample {
        range,
        rss_start_kib,
        rss_kib,
        hwm_kib,
        weight_bytes,
    })
}

/// Runs one 4-row step through `shard` (token ids for a first shard, zero hidden states
/// otherwise) with a throwaway 8-position cache.
fn touch_every_weight(shard: &Shard) -> Result<()> {
    let mut cache = shard.new_cache(8)?;
    let input = if shard.is_first() {
        ShardInput::Tokens(vec![1, 2, 3, 4])
    } else {
        ShardInput::Hidden(Tensor::zeros(
            (4, shard.config().dim),
            DType::F32,
            &Device::Cpu,
        )?)
    };
    shard.forward(&mut cache, input, LogitRows::Last)?;
    Ok(())
}

/// The result of `rss` over several ranges.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RssReport {
    pub date: String,
    pub command: String,
    pub tree: String,
    pub model: PathBuf,
    pub repeats: usize,
    pub baseline: Vec<RssSample>,
    pub ranges: Vec<(LayerRange, Vec<RssSample>)>,
    /// Held(first range) / held(last range), the acceptance number.
    pub held_ratio: f64,
    pub target: f64,
}

fn spawn(path: &Path, range: Option<LayerRange>) -> Result<RssSample> {
    let mut cmd = Command::new(crate::child::worker_exe()?);
    cmd.args(["rss-worker", "--model"]).arg(path);
    if let Some(r) = range {
        cmd.args(["--range", &r.to_string()]);
    }
    run_json(cmd, Duration::from_secs(300))
}

const MIB: f64 = 1024.0;

fn med(v: &[RssSample], f: fn(&RssSample) -> u64) -> f64 {
    median(&v.iter().map(|s| f(s) as f64).collect::<Vec<_>>())
}

/// Measures the baseline and every range `repeats` times (interleaved).
pub fn run(path: &Path, ranges: &[LayerRange], repeats: usize, command: &str) -> Result<RssReport> {
    let tree = sys::tree_state(&crate::compare::workspace_dir());
    let mut baseline = Vec::new();
    let mut per: Vec<(LayerRange, Vec<RssSample>)> =
        ranges.iter().map(|&r| (r, Vec::new())).collect();
    for _ in 0..repeats.max(1) {
        baseline.push(spawn(path, None)?);
        for (r, v) in per.iter_mut() {
            v.push(spawn(path, Some(*r))?);
        }
    }
    let base = med(&baseline, |s| s.rss_kib);
    let held = |v: &[RssSample]| med(v, |s| s.rss_kib) - base;
    let held_ratio = match (per.first(), per.last()) {
        (Some(a), Some(b)) => held(&a.1) / held(&b.1),
        _ => f64::NAN,
    };
    Ok(RssReport {
        date: sys::utc_now(),
        command: command.to_string(),
        tree,
        model: path.to_path_buf(),
        repeats,
        baseline,
        ranges: per,
        held_ratio,
        target: 0.6,
    })
}

impl RssReport {
    pub fn table(&self) -> String {
        let base = med(&self.baseline, |s| s.rss_kib);
        let mut rows = vec![vec![
            "baseline (loads nothing)".to_string(),
            "-".into(),
            format!("{:.1}", base / MIB),
            format!("{:.1}", med(&self.baseline, |s| s.hwm_kib) / MIB),
            "0.0".into(),
        ]];
        for (r, v) in &self.ranges {
            rows.push(vec![
                format!("shard {r}"),
                format!("{:.1}", med(v, |s| s.weight_bytes) / MIB / MIB),
                format!("{:.1}", med(v, |s| s.rss_kib) / MIB),
                format!("{:.1}", med(v, |s| s.hwm_kib) / MIB),
                format!("{:.1}", (med(v, |s| s.rss_kib) - base) / MIB),
            ]);
        }
        markdown_table(
            &[
                "process",
                "tensor bytes read (MiB)",
                "VmRSS after load (MiB)",
                "VmHWM (MiB)",
                "held = VmRSS - baseline (MiB)",
            ],
            &rows,
        )
    }

    pub fn summary(&self) -> String {
        let (Some(a), Some(b)) = (self.ranges.first(), self.ranges.last()) else {
            return String::new();
        };
        let rss = |v: &[RssSample]| med(v, |s| s.rss_kib);
        let w = |v: &[RssSample]| med(v, |s| s.weight_bytes);
        format!(
            "held({}) / held({}) = **{:.3}** (target <= about {:.2}: {}); raw VmRSS ratio {:.3}; \
             ratio of tensor bytes read {:.3}.",
            a.0,
            b.0,
            self.held_ratio,
            self.target,
            if self.held_ratio <= self.target + 0.005 {
                "met"
            } else if self.held_ratio <= self.target + 0.1 {
                "not met, close"
            } else {
                "not met"
            },
            rss(&a.1) / rss(&b.1),
            w(&a.1) / w(&b.1),
        )
    }

    pub fn markdown(&self) -> String {
        format!(
            "## Memory held by a shard (RSS)\n\n\
             Command: `{}`  \n\
             Date: {}  \n\
             Source tree: {}  \n\
             Model: `{}`\n\n\
             Method: every row is a fresh process (`lamina-bench rss-worker`); it loads the shard \
             with `Shard::load(&model, range, &Device::Cpu)`, drops the `ModelFile`, runs one \
             4-token forward step (so every weight page the shard reads in place is resident), \
             then reads `VmRSS` and `VmHWM` from `/proc/self/status`. The baseline \
             process is the same binary loading nothing. Medians of {} repetitions.\n\n\
             {}\n\
             {}\n",
            self.command,
            self.date,
            self.tree,
            self.model.display(),
            self.repeats,
            self.table(),
            self.summary()
        )
    }
}
