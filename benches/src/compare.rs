//! `lamina-bench compare`: lamina, candle's `quantized_llama` and llama.cpp side by side.

use crate::child::run_json;
use crate::models::{format_ids, BenchModel};
use crate::report::{markdown_table, median, min_max};
use crate::sys::{self, MachineFacts, Quietness};
use crate::worker::{Impl, RunResult};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How to run the comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareOptions {
    pub threads: Vec<usize>,
    pub rounds: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub impls: Vec<Impl>,
    pub warmup: bool,
    pub python: PathBuf,
    pub script: PathBuf,
    /// Wait before a run while other processes use more than this many cores.
    pub max_busy_cores: f64,
    pub max_wait_s: u64,
    pub timeout_s: u64,
    /// Reruns of a run during which other processes used more than `max_busy_cores`.
    pub retries: usize,
}

/// The workspace root (this crate's parent directory).
pub fn workspace_dir() -> PathBuf {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .map_or(crate_dir.clone(), |p| p.to_path_buf())
}

/// One model of the comparison with the prompt every implementation gets.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelEntry {
    pub label: String,
    pub path: PathBuf,
    pub prompt_ids: Vec<u32>,
}

/// One worker process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub model: String,
    pub threads: usize,
    #[serde(rename = "impl")]
    pub implementation: Impl,
    pub round: usize,
    /// Position within the round (0 = ran first).
    pub order: usize,
    /// The machine just before the run, measured while the bench was idle.
    pub quiet: Quietness,
    pub waited_s: f64,
    /// Retry number (0 = first try) of this round's run of this implementation.
    pub attempt: usize,
    /// Cores' worth of CPU other processes used while this run was going.
    pub others_busy_during: Option<f64>,
    /// Whether the medians use this run (false: disturbed and retried, or failed).
    pub counted: bool,
    pub result: Option<RunResult>,
    pub error: Option<String>,
}

/// Everything one `compare` run produced (saved as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareReport {
    pub date: String,
    pub command: String,
    pub machine: MachineFacts,
    /// The source tree measured (commit, uncommitted changes) and lamina's kernel setting.
    pub tree: String,
    pub options: CompareOptions,
    pub models: Vec<ModelEntry>,
    pub samples: Vec<Sample>,
}

fn worker_command(
    opts: &CompareOptions,
    imp: Impl,
    model: &ModelEntry,
    threads: usize,
) -> Result<Command> {
    let ids = format_ids(&model.prompt_ids);
    let mut cmd = match imp {
        Impl::LlamaCpp => {
            let mut c = Command::new(&opts.python);
            c.arg(&opts.script);
            c
        }
        Impl::Lamina | Impl::Candle => {
            let mut c = Command::new(crate::child::worker_exe()?);
            c.args(["worker", "--impl", imp.name()]);
            c
        }
    };
    cmd.arg("--model")
        .arg(&model.path)
        .args(["--threads", &threads.to_string()])
        .args(["--ids", &ids])
        .args(["--gen", &opts.gen_tokens.to_string()]);
    if !opts.warmup {
        cmd.arg("--no-warmup");
    }
    // The same thread settings for every runtime (llama.cpp takes n_threads explicitly).
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS", "OMP_NUM_THREADS"] {
        cmd.env(var, threads.to_string());
    }
    Ok(cmd)
}

/// Runs every (model, threads) configuration for `rounds` rounds; in each round every
/// implementation runs once, in an order that rotates from round to round.
pub fn run(opts: &CompareOptions, models: &[BenchModel], command: &str) -> Result<CompareReport> {
    let mut entries = Vec::new();
    for m in models {
        let file = lamina_sharding::source::ModelFile::open(&m.path)?;
        let ids = crate::models::prompt_ids(&file, opts.prompt_tokens)?;
        entries.push(ModelEntry {
            label: m.label.clone(),
            path: m.path.clone(),
            prompt_ids: ids,
        });
    }
    // The tree as the run starts (`cargo run` has just built from it); checked again at the
    // end, since others may commit or edit meanwhile.
    let tree_start = sys::tree_state(&workspace_dir());
    let mut samples = Vec::new();
    let total = entries.len() * opts.threads.len() * opts.rounds * opts.impls.len();
    let mut done = 0;
    for model in &entries {
        for &threads in &opts.threads {
            for round in 0..opts.rounds {
                let n = opts.impls.len();
                for order in 0..n {
                    let imp = opts.impls[(order + round) % n];
                    done += 1;
                    for attempt in 0..=opts.retries {
                        let (quiet, waited) = sys::wait_for_quiet(
                            opts.max_busy_cores,
                            Duration::from_secs(opts.max_wait_s),
                        );
                        let window = sys::RunWindow::start();
                        let out = worker_command(opts, imp, model, threads).and_then(|cmd| {
                            run_json::<RunResult>(cmd, Duration::from_secs(opts.timeout_s))
                        });
                        let during = window.others_busy_cores();
                        let disturbed = during.is_some_and(|d| d > opts.max_busy_cores);
                        let last = attempt == opts.retries;
                        let counted = out.is_ok() && (!disturbed || last);
                        let tag = format!(
                            "[{done}/{total}] {} t={threads} round {} {:<9}",
                            model.label,
                            round + 1,
                            imp.name()
                        );
                        let note = format!(
                            "others busy {:.2} cores before, {} during; load avg {:.2}{}",
                            quiet.busy_cores,
                            during.map_or("?".into(), |d| format!("{d:.2}")),
                            quiet.loadavg_1m,
                            match (disturbed, counted) {
                                (true, false) => " -> disturbed, run again",
                                (true, true) => " -> disturbed, kept (out of retries)",
                                _ => "",
                            }
                        );
                        let (result, error) = match out {
                            Ok(r) => {
                                eprintln!(
                                    "{tag} prefill {:>8.1} tok/s  decode {:>7.1} tok/s  (load {:.2} s; {note})",
                                    r.prefill_tok_s, r.decode_tok_s, r.load_s
                                );
                                (Some(r), None)
                            }
                            Err(e) => {
                                eprintln!("{tag} FAILED: {e:#}");
                                (None, Some(format!("{e:#}")))
                            }
                        };
                        let failed = error.is_some();
                        samples.push(Sample {
                            model: model.label.clone(),
                            threads,
                            implementation: imp,
                            round,
                            order,
                            attempt,
                            quiet,
                            waited_s: waited.as_secs_f64(),
                            others_busy_during: during,
                            counted,
                            result,
                            error,
                        });
                        if counted || failed {
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(CompareReport {
        date: sys::utc_now(),
        command: command.to_string(),
        machine: sys::machine_facts(),
        tree: {
            let end = sys::tree_state(&workspace_dir());
            format!(
                "{tree_start}{}; LAMINA_KERNELS={}",
                if end == tree_start {
                    String::new()
                } else {
                    format!(" at the start (at the end: {end}; the binary was built at the start)")
                },
                std::env::var("LAMINA_KERNELS").unwrap_or_else(|_| "(unset)".into())
            )
        },
        options: opts.clone(),
        models: entries,
        samples,
    })
}

/// Medians of one (model, threads, implementation) cell.
#[derive(Clone, Debug)]
pub struct Cell {
    pub model: String,
    pub threads: usize,
    pub implementation: Impl,
    pub runs: usize,
    pub failed: usize,
    pub prefill: f64,
    pub decode: f64,
    pub prefill_range: (f64, f64),
    pub decode_range: (f64, f64),
    pub load_s: f64,
}

impl CompareReport {
    fn results(&self, model: &str, threads: usize, imp: Impl) -> Vec<&RunResult> {
        self.samples
            .iter()
            .filter(|s| s.model == model && s.threads == threads && s.implementation == imp)
            .filter(|s| s.counted)
            .filter_map(|s| s.result.as_ref())
            .collect()
    }

    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for m in &self.models {
            for &t in &self.options.threads {
                for &imp in &self.options.impls {
                    let rs = self.results(&m.label, t, imp);
                    let failed = self
                        .samples
                        .iter()
                        .filter(|s| {
                            s.model == m.label
                                && s.threads == t
                                && s.implementation == imp
                                && s.result.is_none()
                        })
                        .count();
                    let p: Vec<f64> = rs.iter().map(|r| r.prefill_tok_s).collect();
                    let d: Vec<f64> = rs.iter().map(|r| r.decode_tok_s).collect();
                    let l: Vec<f64> = rs.iter().map(|r| r.load_s).collect();
                    cells.push(Cell {
                        model: m.label.clone(),
                        threads: t,
                        implementation: imp,
                        runs: rs.len(),
                        failed,
                        prefill: median(&p),
                        decode: median(&d),
                        prefill_range: min_max(&p),
                        decode_range: min_max(&d),
                        load_s: median(&l),
                    });
                }
            }
        }
        cells
    }

    fn find<'a>(cells: &'a [Cell], c: &Cell, imp: Impl) -> Option<&'a Cell> {
        cells.iter().find(|x| {
            x.model == c.model && x.threads == c.threads && x.implementation == imp && x.runs > 0
        })
    }

    /// The main table: medians over rounds and ratios against the two references.
    pub fn table(&self) -> String {
        let cells = self.cells();
        let ratio = |c: &Cell, base: Option<&Cell>| match base {
            Some(b) if c.runs > 0 => {
                format!("{:.2} / {:.2}", c.prefill / b.prefill, c.decode / b.decode)
            }
            _ => "n/a".into(),
        };
        let rows: Vec<Vec<String>> = cells
            .iter()
            .map(|c| {
                let num = |v: f64| {
                    if c.runs > 0 {
                        format!("{v:.1}")
                    } else {
                        "failed".into()
                    }
                };
                vec![
                    c.model.clone(),
                    c.threads.to_string(),
                    c.implementation.long_name().to_string(),
                    num(c.prefill),
                    num(c.decode),
                    ratio(c, Self::find(&cells, c, Impl::LlamaCpp)),
                    ratio(c, Self::find(&cells, c, Impl::Candle)),
                ]
            })
            .collect();
        markdown_table(
            &[
                "model",
                "threads",
                "impl",
                "prefill tok/s",
                "decode tok/s",
                "ratio vs llama.cpp (prefill / decode)",
                "ratio vs candle (prefill / decode)",
            ],
            &rows,
        )
    }

    /// Every round's numbers, to judge the noise.
    pub fn spread_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .cells()
            .iter()
            .filter(|c| c.runs > 0)
            .map(|c| {
                let rs = self.results(&c.model, c.threads, c.implementation);
                let list = |f: fn(&RunResult) -> f64| {
                    rs.iter()
                        .map(|r| format!("{:.1}", f(r)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                vec![
                    c.model.clone(),
                    c.threads.to_string(),
                    c.implementation.name().to_string(),
                    format!(
                        "{}{}",
                        c.runs,
                        if c.failed > 0 {
                            format!(" (+{} failed)", c.failed)
                        } else {
                            String::new()
                        }
                    ),
                    list(|r| r.prefill_tok_s),
                    list(|r| r.decode_tok_s),
                    format!("{:.2}", c.load_s),
                    format!(
                        "{:.0}",
                        median(&rs.iter().filter_map(|r| r.peak_rss_mib).collect::<Vec<_>>())
                    ),
                ]
            })
            .collect();
        markdown_table(
            &[
                "model",
                "threads",
                "impl",
                "runs",
                "prefill tok/s per round",
                "decode tok/s per round",
                "load s (median)",
                "peak RSS MiB (median)",
            ],
            &rows,
        )
    }

    /// Whether lamina is at least as fast as candle's `quantized_llama` in every cell.
    pub fn verdict(&self) -> String {
        let cells = self.cells();
        let mut lines = Vec::new();
        let mut all_ok = true;
        for c in cells.iter().filter(|c| c.implementation == Impl::Lamina) {
            let Some(cand) = Self::find(&cells, c, Impl::Candle) else {
                lines.push(format!("- {} t={}: no candle result", c.model, c.threads));
                all_ok = false;
                continue;
            };
            if c.runs == 0 {
                lines.push(format!("- {} t={}: no lamina result", c.model, c.threads));
                all_ok = false;
                continue;
            }
            let (p, d) = (c.prefill / cand.prefill, c.decode / cand.decode);
            let mark = |r: f64| if r >= 1.0 { "ok" } else { "SLOWER" };
            all_ok &= p >= 1.0 && d >= 1.0;
            let (mp, md) = (mark(p), mark(d));
            lines.push(format!(
                "- {} t={}: prefill {:.2}x ({mp}), decode {:.2}x ({md})",
                c.model, c.threads, p, d
            ));
        }
        format!(
            "lamina >= candle quantized_llama in every cell (medians): **{}**\n\n{}\n",
            if all_ok { "yes" } else { "no" },
            lines.join("\n")
        )
    }

    /// Whether the greedy tokens of the three runtimes agree, per configuration. Where two
    /// diverge, the top-2 logit margins there tell a near tie (another order of float sums
    /// may flip it) from a real difference.
    pub fn agreement(&self) -> String {
        let show = 8;
        let mut out = String::new();
        for m in &self.models {
            for &t in &self.options.threads {
                let firsts: Vec<(Impl, &RunResult, bool)> = self
                    .options
                    .impls
                    .iter()
                    .filter_map(|&imp| {
                        let rs = self.results(&m.label, t, imp);
                        let first = *rs.first()?;
                        let stable = rs.iter().all(|r| r.tokens == first.tokens);
                        Some((imp, first, stable))
                    })
                    .collect();
                if firsts.is_empty() {
                    continue;
                }
                out.push_str(&format!("- {} t={t}:\n", m.label));
                for (imp, r, stable) in &firsts {
                    out.push_str(&format!(
                        "  - {:<9} {:?}{}\n",
                        imp.name(),
                        &r.tokens[..r.tokens.len().min(show)],
                        if *stable {
                            ""
                        } else {
                            " (differs between rounds)"
                        }
                    ));
                }
                for i in 0..firsts.len() {
                    for j in i + 1..firsts.len() {
                        let (a, b) = (&firsts[i], &firsts[j]);
                        let n = a.1.tokens.len().min(b.1.tokens.len());
                        let same =
                            a.1.tokens
                                .iter()
                                .zip(&b.1.tokens)
                                .take_while(|(x, y)| x == y)
                                .count();
                        let why = if same < n {
                            let mg = |r: &RunResult| {
                                r.margins
                                    .get(same)
                                    .map_or("?".to_string(), |x| format!("{x:.3}"))
                            };
                            format!(
                                "; they part at step {same}, where the top-2 logit margins are \
                                 {} ({}) and {} ({})",
                                mg(a.1),
                                a.0.name(),
                                mg(b.1),
                                b.0.name()
                            )
                        } else {
                            String::new()
                        };
                        out.push_str(&format!(
                            "  - {} vs {}: first {same} of {n} greedy tokens agree{why}\n",
                            a.0.name(),
                            b.0.name(),
                        ));
                    }
                }
            }
        }
        out
    }

    /// How quiet the machine was, before and during the runs.
    pub fn load_note(&self) -> String {
        let counted: Vec<&Sample> = self.samples.iter().filter(|s| s.counted).collect();
        let before: Vec<f64> = counted.iter().map(|s| s.quiet.busy_cores).collect();
        let during: Vec<f64> = counted
            .iter()
            .filter_map(|s| s.others_busy_during)
            .collect();
        let la: Vec<f64> = counted.iter().map(|s| s.quiet.loadavg_1m).collect();
        let (_, bmax) = min_max(&before);
        let (_, dmax) = min_max(&during);
        let (lmin, lmax) = min_max(&la);
        let waited: f64 = self.samples.iter().map(|s| s.waited_s).sum();
        let rerun = self
            .samples
            .iter()
            .filter(|s| !s.counted && s.error.is_none())
            .count();
        let kept_disturbed = counted
            .iter()
            .filter(|s| {
                s.others_busy_during
                    .is_some_and(|d| d > self.options.max_busy_cores)
            })
            .count();
        let procs: BTreeSet<String> = self
            .samples
            .iter()
            .flat_map(|s| s.quiet.busy_processes.iter())
            .map(|p| p.split(" (").next().unwrap_or(p).to_string())
            .collect();
        format!(
            "other processes' CPU use (in cores; 2 = both cores busy), over the {} counted runs: \
             in the 2 s before a run median {:.2}, max {:.2}; during a run median {:.2}, max {:.2}. \
             Before each run the bench waited while others used more than {:.2} cores (at most \
             {} s; {:.0} s waited in total); {rerun} runs were disturbed (others above {:.2} cores \
             during the run) and run again, {kept_disturbed} disturbed runs were kept after {} \
             retries. 1-minute load average before runs {:.2}..{:.2} (it includes the bench's own \
             previous run). Processes seen busy between runs: {}.",
            counted.len(),
            median(&before),
            bmax,
            median(&during),
            dmax,
            self.options.max_busy_cores,
            self.options.max_wait_s,
            waited,
            self.options.max_busy_cores,
            self.options.retries,
            lmin,
            lmax,
            if procs.is_empty() {
                "none".to_string()
            } else {
                procs.into_iter().collect::<Vec<_>>().join(", ")
            }
        )
    }

    pub fn llamacpp_info(&self) -> Option<String> {
        self.samples
            .iter()
            .filter(|s| s.implementation == Impl::LlamaCpp)
            .filter_map(|s| s.result.as_ref())
            .find_map(|r| r.info.clone())
    }

    /// The markdown section for `RESULTS.md`.
    pub fn markdown(&self) -> String {
        let o = &self.options;
        let m = &self.machine;
        let models: Vec<String> = self
            .models
            .iter()
            .map(|e| format!("`{}` = `{}`", e.label, e.path.display()))
            .collect();
        let warmup = if o.warmup {
            "Before the timed part every run does an untimed warm-up (the same prefill and 4 \
             decode steps, then a fresh cache/state), so page faults, lazy weight repacking and \
             thread start-up are not timed. "
        } else {
            "No warm-up (`--no-warmup`). "
        };
        format!(
            "## Single-node throughput: lamina vs candle `quantized_llama` vs llama.cpp\n\n\
             Command: `{}`  \n\
             Date: {}  \n\
             Source tree: {}  \n\
             Machine: {}, {} logical CPUs ({}), {:.1} GiB RAM, Linux {}, no GPU; {}  \n\
             llama.cpp: {}  \n\
             Models: {}\n\n\
             Method: each run is a fresh process, because candle sizes its thread pools once per \
             process. `RAYON_NUM_THREADS`, `CANDLE_NUM_THREADS` and `OMP_NUM_THREADS` are set to \
             the thread count for all three, and llama.cpp gets `n_threads = n_threads_batch` = \
             the thread count. The prompt is exactly {} token ids (a sentence's ids repeated; the \
             same ids for all three; llama.cpp gets them through `llm.eval(ids)`). {}Prefill = \
             one forward over the {} prompt tokens; decode = {} greedy steps of one token each \
             (argmax included). tok/s = tokens / seconds. Medians over {} rounds; in a round the \
             three run one after another, in an order that rotates every round. A run during \
             which other processes used more than {:.2} cores is run again (up to {} times).\n\n\
             {}\n\
             {}\n\
             Per-round values (counted runs):\n\n{}\n\
             Greedy tokens (first 8 of each; the first comes from the prefill logits):\n\n{}\n\
             Machine load: {}\n",
            self.command,
            self.date,
            self.tree,
            m.cpu_model,
            m.logical_cpus,
            m.cpu_flags,
            m.mem_total_gib,
            m.kernel,
            m.rustc,
            self.llamacpp_info().unwrap_or_else(|| "no result".into()),
            models.join(", "),
            o.prompt_tokens,
            warmup,
            o.prompt_tokens,
            o.gen_tokens,
            o.rounds,
            o.max_busy_cores,
            o.retries,
            self.table(),
            self.verdict(),
            self.spread_table(),
            self.agreement(),
            self.load_note(),
        )
    }
}
