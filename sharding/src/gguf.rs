//! GGUF files: memory-mapped, header parsed by lamina itself, tensors read one by one.
//!
//! lamina parses the header instead of using candle's `gguf_file::Content::read` so that
//! every limit is explicit and every failure names its cause (a wrong magic, a truncated
//! table, an unsupported tensor type *and which tensor*), and so that a file whose
//! unsupported tensors lie outside a shard's range can still serve that shard. The
//! metadata values reuse candle's [`Value`] type, which the rest of the crate reads.

use crate::file_limits::*;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Metadata arrays of arrays are allowed, deeper nesting is not (no real file has any).
const MAX_ARRAY_DEPTH: usize = 2;
const DEFAULT_ALIGNMENT: u64 = 32;

/// The bytes of a model file: mapped from disk, or held in memory (synthetic models).
pub enum FileBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

/// The stored bytes of one tensor, borrowed from the file in place.
///
/// The kernels read quantized weights straight from the mapping (as llama.cpp does with
/// mmap), so a node holds each weight once: as page-cache pages it shares with every other
/// process mapping the file, not as a private copy. The view keeps the mapping alive.
#[derive(Clone)]
pub struct TensorView {
    bytes: Arc<FileBytes>,
    start: usize,
    len: usize,
}

impl TensorView {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tells the kernel this process no longer needs the tensor's file pages resident
    /// (`MADV_DONTNEED`), for a weight that was repacked into memory of its own, so the
    /// process does not hold it twice.
    pub fn release(&self) {
        self.release_range(0..self.len);
    }

    /// [`TensorView::release`] for the bytes `range` of the tensor: whole 4 KiB pages
    /// inside it only; a no-op for a file read into memory, and best effort (an error
    /// leaves the pages in).
    pub fn release_range(&self, range: std::ops::Range<usize>) {
        const PAGE: usize = 4096;
        let FileBytes::Mapped(map) = &*self.bytes else {
            return;
        };
        let end = range.end.min(self.len);
        let start = (self.start + range.start).next_multiple_of(PAGE);
        let end = (self.start + end) / PAGE * PAGE;
        if start >= end {
            return;
        }
        // SAFETY: the map is a read-only mapping of the model file, which lamina never
        // writes; dropping its pages only makes the next read fault them in again from
        // the file, with the same contents, so references into it stay valid.
        let res = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
        if let Err(e) = res {
            tracing::debug!("madvise(DONTNEED) on a repacked tensor failed: {e}");
        }
    }
}

impl std::fmt::Debug for TensorView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorView")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

/// One tensor's entry in the header.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Candle's shape order: outermost first (rows, then columns).
    pub shape: Vec<usize>,
    /// The raw ggml type id, kept even when candle cannot load the type.
    pub type_id: u32,
    pub dtype: Option<GgmlDType>,
    /// Offset from the start of the tensor data section.
    pub offset: u64,
    /// Byte size, when the type is known.
    pub size: Option<u64>,
}

impl TensorInfo {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// A readable type name, also for the types lamina cannot load.
    pub fn type_name(&self) -> String {
        ggml_type_name(self.type_id)
    }
}

/// A parsed GGUF file.
pub struct GgufFile {
    path: PathBuf,
    bytes: Arc<FileBytes>,
    version: u32,
    metadata: HashMap<String, Value>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses a file. The mapping is read-only and private. Tensors the kernels
    /// run on are read in place ([`GgufFile::tensor_view`]); tensors copied out for candle
    /// have their pages released from this process right after the copy.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; lamina never writes model files while serving
        // them. A file truncated by another process under a live map is the one case
        // mmap cannot protect against, the same trade-off llama.cpp makes.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Self::parse(path, FileBytes::Mapped(map))
    }

    /// Parses a file held in memory; `name` stands in for the path in messages.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(name.into(), FileBytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: FileBytes) -> Result<Self> {
        let header = parse_header(&path, &bytes)?;
        let Header {
            version,
            metadata,
            tensors,
            index,
            data_offset,
        } = header;
        Ok(Self {
            path,
            bytes: Arc::new(bytes),
            version,
            metadata,
            tensors,
            index,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Where one tensor's bytes lie in the file (bounds were checked at parse time).
    fn tensor_span(&self, name: &str) -> Result<(usize, usize)> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let size = info.size.ok_or_else(|| Error::UnsupportedTensorType {
            name: name.to_string(),
            dtype: info.type_name(),
        })?;
        Ok(((self.data_offset + info.offset) as usize, size as usize))
    }

    /// The raw bytes of one tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let (start, len) = self.tensor_span(name)?;
        Ok(&self.bytes[start..start + len])
    }

    /// One tensor's bytes in place, kept alive independently of this `GgufFile`.
    pub fn tensor_view(&self, name: &str) -> Result<TensorView> {
        let (start, len) = self.tensor_span(name)?;
        Ok(TensorView {
            bytes: self.bytes.clone(),
            start,
            len,
        })
    }

    /// Drops this process's resident pages of one tensor's bytes (the page cache keeps
    /// them; a later read faults them back in). Called once a tensor has been copied or
    /// hashed, so that RSS counts each weight once. Best effort: a failure only leaves
    /// pages resident.
    pub fn release_pages(&self, name: &str) {
        let Ok((start, len)) = self.tensor_span(name) else {
            return;
        };
        if let FileBytes::Mapped(map) = &*self.bytes {
            const PAGE: usize = 4096;
            let lo = start / PAGE * PAGE;
            let hi = (start + len).next_multiple_of(PAGE).min(map.len());
            if hi > lo {
                // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED only
                // drops page-table entries; the next access reads the same file bytes
                // again. Pages shared with a neighbouring tensor are re-read on demand.
                let _ = unsafe {
                    map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo)
                };
            }
        }
    }

    /// Copies one tensor out of the file into a candle `QTensor`.
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let dtype = info.dtype.ok_or_else(|| Error::UnsupportedTensorType {
            name: name.to_string(),
            dtype: info.type_name(),
        })?;
        let bytes = self.tensor_bytes(name)?;
        let storage = if (bytes.as_ptr() as usize).is_multiple_of(8) {
            QStorage::from_data(Cow::Borrowed(bytes), device, dtype)?
        } else {
            // candle reinterprets the bytes as blocks and needs them aligned.
            let aligned = aligned_copy(bytes);
            let view = &bytemuck_bytes(&aligned)[..bytes.len()];
            QStorage::from_data(Cow::Borrowed(view), device, dtype)?
        };
        self.release_pages(name);
        Ok(QTensor::new(storage, info.shape.clone())?)
    }
}

/// What [`parse_header`] reads: everything but the tensor bytes.
pub struct Header {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub index: HashMap<String, usize>,
    /// Where the tensor data section starts in the file.
    pub data_offset: u64,
}

/// Parses and checks a GGUF header (magic, version, metadata, tensor table) from the file's
/// bytes; `path` names the file in errors. Every count and size is checked against
/// [`crate::file_limits`] and against the bytes actually present before anything is
/// allocated from it, and every tensor of a known type must lie inside the file, so a
/// header that parses can be read without further bounds checks. Also the entry point of
/// the `gguf_header` fuzz target.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let mut r = Reader {
        buf: bytes,
        pos: 0,
        path,
        values: 0,
    };
    let magic = r.take(4).map_err(|_| Error::BadMagic {
        path: path.to_path_buf(),
        magic: bytes.iter().take(4).copied().collect(),
    })?;
    if magic != b"GGUF" {
        return Err(Error::BadMagic {
            path: path.to_path_buf(),
            magic: magic.to_vec(),
        });
    }
    let version = r.u32()?;
    if !(1..=3).contains(&version) {
        return Err(r.malformed(format!("unsupported GGUF version {version}")));
    }
    let v1 = version == 1;
    let tensor_count = r.len_field(v1)?;
    let kv_count = r.len_field(v1)?;
    if tensor_count > GGUF_MAX_TENSORS {
        return Err(Error::limit(
            path,
            "tensor count",
            tensor_count,
            GGUF_MAX_TENSORS,
        ));
    }
    if kv_count > GGUF_MAX_METADATA_ENTRIES {
        return Err(Error::limit(
            path,
            "metadata entry count",
            kv_count,
            GGUF_MAX_METADATA_ENTRIES,
        ));
    }
    // Each entry takes at least a dozen bytes; counts beyond that cannot be honest.
    if tensor_count.saturating_add(kv_count) > r.remaining() / 12 {
        return Err(r.malformed(format!(
            "header declares {tensor_count} tensors and {kv_count} metadata entries, more than the file can hold"
        )));
    }
    // Both counts are capped above, so these capacities are bounded.
    let mut metadata = HashMap::with_capacity(kv_count as usize);
    for _ in 0..kv_count {
        let key = r.string(v1, GGUF_MAX_STRING_BYTES, "metadata key length")?;
        let ty = r.u32()?;
        let value = r.value(ty, v1, 0, &key)?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut index = HashMap::with_capacity(tensor_count as usize);
    for _ in 0..tensor_count {
        let name = r.string(v1, GGUF_MAX_TENSOR_NAME_BYTES, "tensor name length")?;
        let n_dims = r.u32()?;
        if n_dims == 0 {
            return Err(r.malformed(format!("tensor `{name}` has no dimensions")));
        }
        if u64::from(n_dims) > GGUF_MAX_TENSOR_DIMS {
            return Err(Error::limit(
                path,
                format!("tensor `{name}` dimension count"),
                n_dims.into(),
                GGUF_MAX_TENSOR_DIMS,
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = r.len_field(v1)?;
            // ggml stores dimensions as int64.
            if d > i64::MAX as u64 {
                return Err(r.malformed(format!("tensor `{name}` has a dimension of {d}")));
            }
            dims.push(
                usize::try_from(d)
                    .map_err(|_| r.malformed(format!("tensor `{name}`: dimension overflow")))?,
            );
        }
        // GGUF lists the innermost dimension first; candle wants it last.
        dims.reverse();
        let type_id = r.u32()?;
        let offset = r.u64()?;
        let dtype = ggml_dtype(type_id);
        let too_large = || r.malformed(format!("tensor `{name}` is too large ({dims:?})"));
        let elems = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(too_large)?;
        let size = match dtype {
            Some(dt) => {
                let bs = dt.block_size() as u64;
                let inner = *dims.last().unwrap_or(&0) as u64;
                if !inner.is_multiple_of(bs) {
                    return Err(r.malformed(format!(
                        "tensor `{name}`: row length {inner} is not a multiple of the {} block size {bs}",
                        ggml_type_name(type_id)
                    )));
                }
                Some(
                    (elems / bs)
                        .checked_mul(dt.type_size() as u64)
                        .ok_or_else(too_large)?,
                )
            }
            None => None,
        };
        if index.insert(name.clone(), tensors.len()).is_some() {
            return Err(r.malformed(format!("tensor `{name}` appears twice")));
        }
        tensors.push(TensorInfo {
            name,
            shape: dims,
            type_id,
            dtype,
            offset,
            size,
        });
    }
    let alignment = match metadata.get("general.alignment") {
        Some(Value::U32(a)) => u64::from(*a),
        Some(Value::U64(a)) => *a,
        Some(_) => return Err(r.malformed("general.alignment must be an unsigned integer".into())),
        None => DEFAULT_ALIGNMENT,
    };
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(r.malformed(format!(
            "general.alignment must be a power of two, not {alignment}"
        )));
    }
    if alignment > GGUF_MAX_ALIGNMENT {
        return Err(Error::limit(
            path,
            "general.alignment",
            alignment,
            GGUF_MAX_ALIGNMENT,
        ));
    }
    // pos is at most the file length and alignment at most 64 KiB: no overflow.
    let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    for t in &tensors {
        if !t.offset.is_multiple_of(alignment) {
            return Err(Error::Malformed {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor `{}` starts at offset {}, not a multiple of the alignment {alignment}",
                    t.name, t.offset
                ),
            });
        }
        if let Some(size) = t.size {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(size));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(Error::Malformed {
                        path: path.to_path_buf(),
                        reason: format!(
                            "tensor `{}` ({} bytes at offset {}) extends past the end of the file ({} bytes): the file is truncated",
                            t.name,
                            size,
                            data_offset.saturating_add(t.offset),
                            file_len
                        ),
                    });
                }
            }
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        index,
        data_offset,
    })
}

fn aligned_copy(bytes: &[u8]) -> Vec<u64> {
    let mut out = vec![0u64; bytes.len().div_ceil(8)];
    for (chunk, dst) in bytes.chunks(8).zip(out.iter_mut()) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *dst = u64::from_ne_bytes(b);
    }
    out
}

fn bytemuck_bytes(v: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 8) }
}

/// The candle type of a ggml type id, if candle can load it.
pub fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// ggml's name for a type id, including the ones candle cannot load.
pub fn ggml_type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        other => return format!("unknown ggml type {other}"),
    };
    name.to_string()
}

/// The ggml name of a candle type.
pub fn dtype_name(dt: GgmlDType) -> &'static str {
    match dt {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// A bounds-checked little-endian cursor over the header.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Metadata array elements read so far, against [`GGUF_MAX_METADATA_VALUES`].
    values: u64,
}

impl<'a> Reader<'a> {
    fn malformed(&self, reason: String) -> Error {
        Error::Malformed {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(self.malformed(format!(
                "the header ends early: {n} bytes needed at offset {}, the file has {} (truncated file?)",
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Lengths are u32 in GGUF v1 and u64 later.
    fn len_field(&mut self, v1: bool) -> Result<u64> {
        if v1 {
            Ok(self.u32()? as u64)
        } else {
            self.u64()
        }
    }

    /// A length-prefixed string of at most `limit` bytes; `field` names the length in the
    /// error.
    fn string(&mut self, v1: bool, limit: u64, field: &str) -> Result<String> {
        let at = self.pos;
        let len = self.len_field(v1)?;
        if len > limit {
            return Err(Error::limit(
                self.path,
                format!("{field} at offset {at}"),
                len,
                limit,
            ));
        }
        if len > self.remaining() {
            return Err(self.malformed(format!(
                "a string of {len} bytes at offset {} runs past the end of the file",
                self.pos
            )));
        }
        let mut bytes = self.take(len as usize)?;
        // Some converters NUL-terminate strings; GGUF says they are not.
        while let Some((0, rest)) = bytes.split_last() {
            bytes = rest;
        }
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// The fewest bytes a value of type `ty` takes, to check an array's length against the
    /// bytes left before allocating for it (0 for an unknown type, refused when read).
    fn min_value_size(ty: u32, v1: bool) -> u64 {
        let len_field = if v1 { 4 } else { 8 };
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => len_field,
            9 => 4 + len_field,
            _ => 0,
        }
    }

    /// One metadata value of type `ty`, of the entry `key` (named in errors).
    fn value(&mut self, ty: u32, v1: bool, depth: usize, key: &str) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string(
                v1,
                GGUF_MAX_STRING_BYTES,
                &format!("metadata `{key}` string length"),
            )?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.malformed(format!("metadata `{key}`: arrays nest too deeply")));
                }
                let elem_ty = self.u32()?;
                let n = self.len_field(v1)?;
                if n > GGUF_MAX_ARRAY_LEN {
                    return Err(Error::limit(
                        self.path,
                        format!("metadata `{key}` array length"),
                        n,
                        GGUF_MAX_ARRAY_LEN,
                    ));
                }
                self.values = self.values.saturating_add(n);
                if self.values > GGUF_MAX_METADATA_VALUES {
                    return Err(Error::limit(
                        self.path,
                        format!("metadata array elements in total (at `{key}`)"),
                        self.values,
                        GGUF_MAX_METADATA_VALUES,
                    ));
                }
                let min = Self::min_value_size(elem_ty, v1).max(1);
                if n.saturating_mul(min) > self.remaining() {
                    return Err(self.malformed(format!(
                        "metadata `{key}`: an array of {n} elements at offset {} runs past the end of the file",
                        self.pos
                    )));
                }
                // n is capped and backed by bytes present, so this capacity is bounded.
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_ty, v1, depth + 1, key)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => {
                return Err(
                    self.malformed(format!("metadata `{key}` has unknown value type {other}"))
                );
            }
        })
    }
}
