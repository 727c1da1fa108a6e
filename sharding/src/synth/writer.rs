//! The streaming GGUF v3 writer.
//!
//! candle's `gguf_file::write` needs every tensor in memory at once, which for an 8B-shape
//! model is tens of GiB. Here the header is computed from the plan alone (every tensor's byte
//! size follows from its shape and type), and then each tensor is generated, encoded and
//! written a few rows at a time. Layout details match `gguf_file::write`: dims stored
//! innermost first, offsets relative to the start of the data section, every tensor padded to
//! the 32-byte alignment.

use std::io::{Seek, Write};
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::weights::{fill_row, tensor_key, Init};
use super::PlannedTensor;
use crate::{Error, Result};

pub const GGUF_MAGIC: u32 = 0x4655_4747; // "GGUF" read as a little-endian u32
pub const GGUF_VERSION: u32 = 3;
pub const ALIGNMENT: u64 = 32;

/// How weight generation is spread over threads. The bytes written never depend on it.
#[derive(Clone, Copy, Debug)]
pub struct Workers {
    pub threads: usize,
    /// f32 values one thread generates per step. The default (4 Mi values, 16 MiB) bounds
    /// memory per thread whatever the tensor size while keeping per-step overhead negligible.
    pub elems_per_task: usize,
}

impl Default for Workers {
    fn default() -> Self {
        Workers {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
            elems_per_task: 1 << 22,
        }
    }
}

/// One metadata value, borrowing the big token arrays instead of copying them.
pub enum Meta<'a> {
    U32(u32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    StrArray(&'a [String]),
    F32Array(&'a [f32]),
    I32Array(&'a [i32]),
}

// GGUF metadata value type codes (gguf spec, `gguf_metadata_value_type`).
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;

/// The `ggml_type` codes of the tensor types synth writes. candle keeps its own mapping
/// crate-private, so it is repeated here (values from ggml.h).
pub fn ggml_type_code(dtype: GgmlDType) -> Result<u32> {
    Ok(match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 8,
        other => {
            return Err(Error::Synth(format!(
                "tensor type {other:?} is not written by synth"
            )))
        }
    })
}

/// Byte size of a tensor of `n_elems` values, which must be whole blocks.
pub fn tensor_bytes(dtype: GgmlDType, n_elems: usize) -> Result<u64> {
    let block = dtype.block_size();
    if !n_elems.is_multiple_of(block) {
        return Err(Error::Synth(format!(
            "{n_elems} values are not a whole number of {dtype:?} blocks of {block}"
        )));
    }
    Ok((n_elems / block * dtype.type_size()) as u64)
}

pub fn padding(pos: u64) -> u64 {
    (ALIGNMENT - pos % ALIGNMENT) % ALIGNMENT
}

/// Counts bytes and maps I/O errors to [`Error::Io`] with the destination's name.
struct Out<'w, W> {
    w: &'w mut W,
    written: u64,
    label: &'w Path,
}

impl<W: Write> Out<'_, W> {
    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(|e| Error::io(self.label, e))?;
        self.written += b.len() as u64;
        Ok(())
    }
    fn u32(&mut self, v: u32) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    fn string(&mut self, s: &str) -> Result<()> {
        self.u64(s.len() as u64)?;
        self.bytes(s.as_bytes())
    }
    fn pad(&mut self) -> Result<()> {
        const ZEROS: [u8; ALIGNMENT as usize] = [0; ALIGNMENT as usize];
        let n = padding(self.written) as usize;
        self.bytes(&ZEROS[..n])
    }
    fn meta(&mut self, key: &str, value: &Meta<'_>) -> Result<()> {
        self.string(key)?;
        match value {
            Meta::U32(v) => {
                self.u32(T_U32)?;
                self.u32(*v)
            }
            Meta::U64(v) => {
                self.u32(T_U64)?;
                self.u64(*v)
            }
            Meta::F32(v) => {
                self.u32(T_F32)?;
                self.bytes(&v.to_le_bytes())
            }
            Meta::Bool(v) => {
                self.u32(T_BOOL)?;
                self.bytes(&[u8::from(*v)])
            }
            Meta::Str(s) => {
                self.u32(T_STRING)?;
                self.string(s)
            }
            Meta::StrArray(items) => {
                self.u32(T_ARRAY)?;
                self.u32(T_STRING)?;
                self.u64(items.len() as u64)?;
                items.iter().try_for_each(|s| self.string(s))
            }
            Meta::F32Array(items) => {
                self.u32(T_ARRAY)?;
                self.u32(T_F32)?;
                self.u64(items.len() as u64)?;
                items.iter().try_for_each(|v| self.bytes(&v.to_le_bytes()))
            }
            Meta::I32Array(items) => {
                self.u32(T_ARRAY)?;
                self.u32(T_I32)?;
                self.u64(items.len() as u64)?;
                items.iter().try_for_each(|v| self.bytes(&v.to_le_bytes()))
            }
        }
    }
}

/// Writes the header: metadata, tensor infos, and padding up to the data section.
fn write_header<W: Write>(
    out: &mut Out<'_, W>,
    metadata: &[(&str, Meta<'_>)],
    tensors: &[PlannedTensor],
) -> Result<()> {
    out.u32(GGUF_MAGIC)?;
    out.u32(GGUF_VERSION)?;
    out.u64(tensors.len() as u64)?;
    out.u64(metadata.len() as u64)?;
    for (key, value) in metadata {
        out.meta(key, value)?;
    }
    for t in tensors {
        out.string(&t.name)?;
        out.u32(t.shape.len() as u32)?;
        for &d in t.shape.iter().rev() {
            out.u64(d as u64)?;
        }
        out.u32(ggml_type_code(t.dtype)?)?;
        out.u64(t.offset)?;
    }
    out.pad()
}

/// Length of the header (with its trailing padding) without writing anything.
pub fn header_len(metadata: &[(&str, Meta<'_>)], tensors: &[PlannedTensor]) -> Result<u64> {
    let mut sink = std::io::sink();
    let mut out = Out {
        w: &mut sink,
        written: 0,
        label: Path::new("<sink>"),
    };
    write_header(&mut out, metadata, tensors)?;
    Ok(out.written)
}

/// Writes a whole GGUF file: header, then every tensor generated from `seed`.
pub fn write_all<W: Write + Seek>(
    w: &mut W,
    label: &Path,
    metadata: &[(&str, Meta<'_>)],
    tensors: &[PlannedTensor],
    seed: u64,
    workers: Workers,
) -> Result<u64> {
    let start = w.stream_position().map_err(|e| Error::io(label, e))?;
    let mut out = Out {
        w,
        written: 0,
        label,
    };
    write_header(&mut out, metadata, tensors)?;
    let data_start = out.written;
    for t in tensors {
        if out.written != data_start + t.offset {
            return Err(Error::Synth(format!(
                "internal error: tensor `{}` planned at data offset {} but writer is at {}",
                t.name,
                t.offset,
                out.written - data_start
            )));
        }
        let before = out.written;
        write_tensor(&mut out, t, seed, workers)?;
        if out.written - before != t.bytes {
            return Err(Error::Synth(format!(
                "internal error: tensor `{}` planned as {} bytes but encoded as {}",
                t.name,
                t.bytes,
                out.written - before
            )));
        }
        out.pad()?;
    }
    let written = out.written;
    let end = w.stream_position().map_err(|e| Error::io(label, e))?;
    if end.checked_sub(start) != Some(written) {
        return Err(Error::Synth(format!(
            "writer moved from position {start} to {end}, but {written} bytes were written"
        )));
    }
    Ok(written)
}

/// Rows-by-cols view of a tensor: 1-D norms are a single row.
fn rows_cols(t: &PlannedTensor) -> (usize, usize) {
    match t.shape.as_slice() {
        [n] => (1, *n),
        [rows, cols] => (*rows, *cols),
        other => (other.iter().product(), 1),
    }
}

fn write_tensor<W: Write>(
    out: &mut Out<'_, W>,
    t: &PlannedTensor,
    seed: u64,
    workers: Workers,
) -> Result<()> {
    let key = tensor_key(seed, &t.name);
    let init = Init::for_tensor(&t.name);
    let (rows, cols) = rows_cols(t);
    let rows_per_task = (workers.elems_per_task / cols.max(1)).max(1);
    if rows <= rows_per_task {
        // Norms and small matrices: not worth a thread.
        return out.bytes(&encode_rows(&key, init, 0..rows, cols, t.dtype)?);
    }
    let threads = workers.threads.max(1);
    let mut next_row = 0;
    // Each step hands up to `threads` consecutive row ranges to worker threads; while they
    // run, the main thread writes the previous step's bytes in order, so I/O overlaps with
    // generation and at most two steps are in memory.
    std::thread::scope(|s| {
        let mut in_flight = Vec::new();
        loop {
            let mut step = Vec::with_capacity(threads);
            while step.len() < threads && next_row < rows {
                let range = next_row..(next_row + rows_per_task).min(rows);
                next_row = range.end;
                let key = &key;
                step.push(s.spawn(move || encode_rows(key, init, range, cols, t.dtype)));
            }
            for handle in in_flight.drain(..) {
                let bytes = join(handle)?;
                out.bytes(&bytes)?;
            }
            if step.is_empty() {
                return Ok(());
            }
            in_flight = step;
        }
    })
}

fn join(handle: std::thread::ScopedJoinHandle<'_, Result<Vec<u8>>>) -> Result<Vec<u8>> {
    handle
        .join()
        .unwrap_or_else(|_| Err(Error::Synth("weight generation thread panicked".into())))
}

/// Generates rows `rows` of a tensor and encodes them in `dtype`. Whole rows are whole
/// quantization blocks (the plan guarantees it), so encoding row ranges separately and
/// concatenating gives exactly the bytes of encoding the whole tensor at once.
fn encode_rows(
    key: &[u8; 32],
    init: Init,
    rows: std::ops::Range<usize>,
    cols: usize,
    dtype: GgmlDType,
) -> Result<Vec<u8>> {
    let n_rows = rows.len();
    let mut values = vec![0f32; n_rows * cols];
    for (chunk, r) in values.chunks_exact_mut(cols.max(1)).zip(rows) {
        fill_row(key, r as u64, init, chunk);
    }
    match dtype {
        GgmlDType::F32 => {
            let mut bytes = Vec::with_capacity(values.len() * 4);
            for v in &values {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            Ok(bytes)
        }
        GgmlDType::F16 => {
            let mut bytes = Vec::with_capacity(values.len() * 2);
            for &v in &values {
                bytes.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
            Ok(bytes)
        }
        _ => {
            let t = Tensor::from_vec(values, (n_rows, cols), &Device::Cpu)?;
            let q = QTensor::quantize(&t, dtype)?;
            Ok(q.data()?.into_owned())
        }
    }
}
