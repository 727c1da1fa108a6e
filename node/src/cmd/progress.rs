//! Progress display of the commands that wait: one spinner per testnet node (starting,
//! loading, serving, then its one-line status) and a byte bar while a model is written.
//! indicatif draws to stderr only when it is a terminal, so piped output and CI logs get
//! the plain lines the commands print anyway.

use std::io::{Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lamina_testnet::{NodeState, Observer, UpEvent};

/// The one-line status of a node, as `up` prints it.
pub fn node_line(n: &NodeState) -> String {
    format!(
        "{} layers {} api {} pid {} log {}",
        n.id,
        n.layers,
        n.api.as_deref().unwrap_or("-"),
        n.pid,
        n.log.display()
    )
}

/// An [`Observer`] that shows each node of a starting testnet as a spinner.
pub fn testnet_observer() -> Observer {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let bars: Arc<Mutex<Vec<ProgressBar>>> = Arc::default();
    let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    Observer::new(move |e| {
        let Ok(mut bars) = bars.lock() else { return };
        let index = match e {
            UpEvent::Started { index, .. }
            | UpEvent::Ready { index, .. }
            | UpEvent::Serving { index, .. } => *index,
        };
        while bars.len() <= index {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bars.push(bar);
        }
        let bar = &bars[index];
        match e {
            UpEvent::Started {
                id, layers, log, ..
            } => bar.set_message(format!(
                "{id} loading layers {layers} (log {})",
                log.display()
            )),
            UpEvent::Ready { node, .. } => bar.set_message(format!(
                "{} ready, layers {}, api {}: waiting until the mesh covers the model",
                node.id,
                node.layers,
                node.api.as_deref().unwrap_or("-")
            )),
            UpEvent::Serving { node, .. } => {
                bar.set_style(
                    ProgressStyle::with_template("✔ {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.finish_with_message(format!("serving: {}", node_line(node)));
            }
        }
    })
}

/// A writer that advances a byte bar as it writes (seeks pass through: the GGUF writer
/// seeks to check its offsets).
pub struct ProgressWriter<W> {
    inner: W,
    bar: ProgressBar,
}

impl<W> ProgressWriter<W> {
    pub fn new(inner: W, total: u64, label: &str) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        Self { inner, bar }
    }

    /// Clears the bar and returns the writer.
    pub fn finish(self) -> W {
        self.bar.finish_and_clear();
        self.inner
    }
}

impl<W: Write> Write for ProgressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Seek> Seek for ProgressWriter<W> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}
