//! Weight files in Core ML blob storage v2 (spec section 3).
//!
//! A file is a 64-byte header followed by chunks. Each chunk is a 64-byte metadata block at a
//! 64-byte-aligned offset, followed at once by its raw little-endian data:
//!
//! ```text
//! 0    header:   u32 count, u32 version = 2, 56 reserved bytes
//! 64   metadata: u32 sentinel 0xDEADBEEF, u32 dtype, u64 sizeInBytes, u64 data offset,
//!                u64 padding_size_in_bits, 4 x u64 reserved
//! 128  data (sizeInBytes bytes), zero padding up to the next multiple of 64
//! ...  next metadata, data, ...
//! ```
//!
//! A MIL `BLOBFILE(path=…, offset=uint64(X))` names the metadata block at `X`, not the data.
//!
//! The writer follows coremltools' `StorageWriter`: the header's count is the real number of
//! chunks, padding goes only *between* chunks (a single-chunk file of `n` data bytes is exactly
//! `128 + n` bytes long) and each metadata block records the absolute data offset.
//!
//! The reader checks everything it can, so that a bad file fails here, with a byte offset, rather
//! than as a silent wrong weight on a device. Where real files differ it is lenient, and says so:
//!
//! * **count**: the original training code writes `count = 1` even in multi-chunk files, and
//!   coremltools' reader never looks at the field. [`BlobFile::parse`] walks the chunks to the end
//!   of the file and accepts `1 <= count <= chunks found`. A count larger than what the file holds
//!   means the file was cut short, and is an error; so is a count of 0 for a non-empty file.
//! * **reserved fields** may be non-zero: before ios18 coremltools left them uninitialised.
//! * **padding_size_in_bits** is checked for sub-byte dtypes only. For byte-sized dtypes it was
//!   called `reserved_0` in older headers and may likewise hold garbage.
//! * **padding bytes** between chunks (and after the last one, up to a 64-byte boundary) are not
//!   inspected: they carry no meaning.
//!
//! It is strict where a mistake would change the weights read: the data offset must be the
//! metadata offset + 64 (the spec's benchmarks wrote garbage there; we read only what we and
//! correct tools write), the data must lie inside the file, and its size must be a whole number
//! of elements.

use crate::ir::DType;
use half::{bf16, f16};
use std::borrow::Cow;
use std::fmt;

// The set of weight files lived here first; its paths under `blob` stay in use.
pub use crate::weights::{F32Source, MatrixFile, MatrixShare, MatrixValues, WeightFiles};

/// Size of the file header and of each chunk's metadata block, and the chunk alignment.
pub(crate) const BLOCK: u64 = 64;
/// The only file format version coremltools' reader accepts.
const VERSION: u32 = 2;
/// Marks the start of every metadata block; a MIL offset must point at one.
const SENTINEL: u32 = 0xDEAD_BEEF;

/// Element types of blob chunks, with coremltools' `BlobDataType` codes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobDType {
    Float16 = 1,
    Float32 = 2,
    UInt8 = 3,
    Int8 = 4,
    BFloat16 = 5,
    Int16 = 6,
    UInt16 = 7,
    Int4 = 8,
    UInt1 = 9,
    UInt2 = 10,
    UInt4 = 11,
    UInt3 = 12,
    UInt6 = 13,
    Int32 = 14,
    UInt32 = 15,
    Float8E4M3FN = 16,
    Float8E5M2 = 17,
}

impl BlobDType {
    /// Every dtype, in code order.
    pub const ALL: [BlobDType; 17] = [
        BlobDType::Float16,
        BlobDType::Float32,
        BlobDType::UInt8,
        BlobDType::Int8,
        BlobDType::BFloat16,
        BlobDType::Int16,
        BlobDType::UInt16,
        BlobDType::Int4,
        BlobDType::UInt1,
        BlobDType::UInt2,
        BlobDType::UInt4,
        BlobDType::UInt3,
        BlobDType::UInt6,
        BlobDType::Int32,
        BlobDType::UInt32,
        BlobDType::Float8E4M3FN,
        BlobDType::Float8E5M2,
    ];

    pub fn from_code(code: u32) -> Option<BlobDType> {
        BlobDType::ALL.into_iter().find(|d| d.code() == code)
    }

    pub fn code(self) -> u32 {
        self as u32
    }

    /// Bits per element; less than 8 for the packed sub-byte types.
    pub fn bits(self) -> u32 {
        match self {
            BlobDType::UInt1 => 1,
            BlobDType::UInt2 => 2,
            BlobDType::UInt3 => 3,
            BlobDType::Int4 | BlobDType::UInt4 => 4,
            BlobDType::UInt6 => 6,
            BlobDType::UInt8 | BlobDType::Int8 => 8,
            BlobDType::Float8E4M3FN | BlobDType::Float8E5M2 => 8,
            BlobDType::Float16 | BlobDType::BFloat16 => 16,
            BlobDType::Int16 | BlobDType::UInt16 => 16,
            BlobDType::Float32 | BlobDType::Int32 | BlobDType::UInt32 => 32,
        }
    }

    /// Whether elements are packed several to a byte, which is when `padding_size_in_bits`
    /// matters.
    pub fn is_sub_byte(self) -> bool {
        self.bits() < 8
    }

    /// The blob dtype that stores a MIL tensor of dtype `d`; `None` for `bool`, `string` and
    /// `uint64`, which have no blob encoding.
    pub fn for_mil(d: DType) -> Option<BlobDType> {
        match d {
            DType::Fp16 => Some(BlobDType::Float16),
            DType::Fp32 => Some(BlobDType::Float32),
            DType::Int32 => Some(BlobDType::Int32),
            DType::Int16 => Some(BlobDType::Int16),
            DType::Int8 => Some(BlobDType::Int8),
            DType::UInt8 => Some(BlobDType::UInt8),
            DType::UInt16 => Some(BlobDType::UInt16),
            DType::UInt32 => Some(BlobDType::UInt32),
            DType::UInt64 | DType::Bool | DType::String => None,
        }
    }

    /// The MIL dtype of this blob dtype; `None` where the IR has no such type (bf16, fp8,
    /// sub-byte types).
    pub fn mil_dtype(self) -> Option<DType> {
        DType::ALL
            .into_iter()
            .find(|&d| BlobDType::for_mil(d) == Some(self))
    }
}

impl fmt::Display for BlobDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} (code {})", self.code())
    }
}

/// What is wrong with a blob file or a weight reference, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BlobError {
    #[error("blob file is {len} bytes long, shorter than the 64-byte file header")]
    FileTooShort { len: u64 },

    #[error("blob file header, byte 4: version is {found}, expected 2")]
    BadVersion { found: u32 },

    #[error(
        "blob file header, byte 0: count is {declared} but the file holds {found} chunk(s) \
         (accepted: 1 <= count <= chunks, or 0 for an empty file)"
    )]
    CountMismatch { declared: u32, found: u64 },

    #[error("MIL offset {offset} points into the 64-byte file header; chunks start at byte 64")]
    OffsetInHeader { offset: u64 },

    #[error("MIL offset {offset} is not a multiple of 64, where chunk metadata must start")]
    MisalignedOffset { offset: u64 },

    #[error(
        "{field} at byte {offset} needs {needed} bytes, but the file is only {len} bytes long"
    )]
    Truncated {
        field: &'static str,
        offset: u64,
        needed: u64,
        len: u64,
    },

    #[error("chunk metadata at byte {offset}: sentinel is {found:#010x}, expected 0xdeadbeef")]
    BadSentinel { offset: u64, found: u32 },

    #[error("chunk metadata at byte {offset}: dtype code {code} (byte {offset}+4) is unknown")]
    UnknownDType { offset: u64, code: u32 },

    #[error(
        "chunk metadata at byte {offset}: data offset field (byte {offset}+16) is {found}, \
         expected {expected} (the metadata offset + 64)"
    )]
    BadDataOffset {
        offset: u64,
        expected: u64,
        found: u64,
    },

    #[error(
        "chunk metadata at byte {offset}: data at byte {data_offset} of {size} bytes \
         (sizeInBytes, byte {offset}+8) runs past the end of the {len}-byte file"
    )]
    DataOutOfBounds {
        offset: u64,
        data_offset: u64,
        size: u64,
        len: u64,
    },

    #[error(
        "chunk metadata at byte {offset}: sizeInBytes {size} with padding_size_in_bits \
         {padding_bits} is not a whole number of {dtype} elements"
    )]
    BadSize {
        offset: u64,
        dtype: BlobDType,
        size: u64,
        padding_bits: u64,
    },

    #[error("chunk {index}: {error}")]
    InChunk { index: u64, error: Box<BlobError> },

    #[error(
        "in-memory chunk of {dtype}: {size} bytes with padding_size_in_bits {padding_bits} \
         is not a whole number of elements"
    )]
    InconsistentChunk {
        dtype: BlobDType,
        size: u64,
        padding_bits: u64,
    },

    #[error("converting {dtype} data to f32 is not supported")]
    UnsupportedConversion { dtype: BlobDType },

    #[error("weight file {path:?} is not among the weight files")]
    MissingPath { path: String },

    #[error("weight file {path:?}: {error}")]
    InFile { path: String, error: Box<BlobError> },

    #[error("weight file {path:?}: MIL dtype {dtype} cannot be stored in a blob")]
    UnsupportedMilDType { path: String, dtype: DType },

    #[error(
        "weight file {path:?}, chunk at byte {offset}: MIL declares {declared}, \
         which is stored as {expected}, but the chunk holds {found}"
    )]
    DTypeMismatch {
        path: String,
        offset: u64,
        declared: DType,
        expected: BlobDType,
        found: BlobDType,
    },

    #[error(
        "weight file {path:?}, chunk at byte {offset}: MIL declares {dtype} {shape:?}, \
         {expected} bytes, but the chunk's sizeInBytes is {found}"
    )]
    SizeMismatch {
        path: String,
        offset: u64,
        dtype: DType,
        shape: Vec<usize>,
        expected: u64,
        found: u64,
    },

    #[error("weight file {path:?}: MIL shape {shape:?} has more bytes than fit in a u64")]
    ShapeTooLarge { path: String, shape: Vec<usize> },
}

/// One tensor of a blob file: its dtype and its raw little-endian bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobChunk {
    pub dtype: BlobDType,
    pub data: Vec<u8>,
    /// Unused bits at the end of `data`, for sub-byte dtypes (coremltools'
    /// `padding_size_in_bits`); 0 otherwise.
    pub padding_bits: u64,
}

impl BlobChunk {
    /// A chunk with no padding bits: any byte-sized dtype, or a sub-byte dtype whose elements
    /// fill `data` exactly.
    pub fn new(dtype: BlobDType, data: Vec<u8>) -> BlobChunk {
        BlobChunk {
            dtype,
            data,
            padding_bits: 0,
        }
    }

    /// `values` rounded to fp16, to nearest even, as the original `build_blob` does.
    pub fn fp16(values: &[f32]) -> BlobChunk {
        let data = values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        BlobChunk::new(BlobDType::Float16, data)
    }

    /// `values` rounded to bf16, to nearest even.
    pub fn bf16(values: &[f32]) -> BlobChunk {
        let data = values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        BlobChunk::new(BlobDType::BFloat16, data)
    }

    pub fn fp32(values: &[f32]) -> BlobChunk {
        // Sized up front and filled in place: this is a recompile's hottest copy.
        let mut data = vec![0u8; values.len() * 4];
        for (d, v) in data.chunks_exact_mut(4).zip(values) {
            d.copy_from_slice(&v.to_le_bytes());
        }
        BlobChunk::new(BlobDType::Float32, data)
    }

    pub fn int8(values: &[i8]) -> BlobChunk {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        BlobChunk::new(BlobDType::Int8, data)
    }

    /// Whether `data` and `padding_bits` describe a whole number of elements.
    pub fn is_consistent(&self) -> bool {
        size_is_consistent(self.dtype, self.data.len() as u64, self.padding_bits)
    }

    /// The number of elements; meaningful only for a consistent chunk.
    pub fn num_elements(&self) -> u64 {
        let bits = u128::from(self.data.len() as u64) * 8;
        let used = if self.dtype.is_sub_byte() {
            bits.saturating_sub(u128::from(self.padding_bits))
        } else {
            bits
        };
        (used / u128::from(self.dtype.bits())) as u64
    }

    /// The elements as f32. Integers convert exactly up to 2^24; sub-byte and fp8 dtypes are
    /// not supported (nothing in this project uses them as weights yet).
    pub fn to_f32(&self) -> Result<Vec<f32>, BlobError> {
        ChunkRef {
            dtype: self.dtype,
            data: &self.data,
            padding_bits: self.padding_bits,
        }
        .to_f32()
    }
}

/// A chunk seen in place in its file's bytes.
pub(crate) struct ChunkRef<'a> {
    pub(crate) dtype: BlobDType,
    pub(crate) data: &'a [u8],
    padding_bits: u64,
}

impl<'a> ChunkRef<'a> {
    /// The elements as f32, read in place when the chunk is fp32 and its bytes can be seen as
    /// f32s (a little-endian host and 4-byte-aligned bytes, as the buffers this crate writes
    /// and `fs::read` returns are in practice), else decoded: compiling fp32 weights then
    /// copies each value once, into the device's own layout.
    pub(crate) fn values(&self) -> Result<Cow<'a, [f32]>, BlobError> {
        if self.dtype == BlobDType::Float32 && cfg!(target_endian = "little") {
            if let Ok(values) = bytemuck::try_cast_slice(self.data) {
                return Ok(Cow::Borrowed(values));
            }
        }
        self.to_f32().map(Cow::Owned)
    }

    fn to_owned(&self) -> BlobChunk {
        BlobChunk {
            dtype: self.dtype,
            data: self.data.to_vec(),
            padding_bits: self.padding_bits,
        }
    }

    fn to_f32(&self) -> Result<Vec<f32>, BlobError> {
        if !size_is_consistent(self.dtype, self.data.len() as u64, self.padding_bits) {
            return Err(BlobError::InconsistentChunk {
                dtype: self.dtype,
                size: self.data.len() as u64,
                padding_bits: self.padding_bits,
            });
        }
        let d = self.data;
        let values = match self.dtype {
            BlobDType::Float16 => decode(d, |b: [u8; 2]| f16::from_le_bytes(b).to_f32()),
            BlobDType::BFloat16 => decode(d, |b: [u8; 2]| bf16::from_le_bytes(b).to_f32()),
            BlobDType::Float32 => decode(d, f32::from_le_bytes),
            BlobDType::UInt8 => decode(d, |b: [u8; 1]| f32::from(b[0])),
            BlobDType::Int8 => decode(d, |b: [u8; 1]| f32::from(i8::from_le_bytes(b))),
            BlobDType::Int16 => decode(d, |b| f32::from(i16::from_le_bytes(b))),
            BlobDType::UInt16 => decode(d, |b| f32::from(u16::from_le_bytes(b))),
            BlobDType::Int32 => decode(d, |b| i32::from_le_bytes(b) as f32),
            BlobDType::UInt32 => decode(d, |b| u32::from_le_bytes(b) as f32),
            dtype => return Err(BlobError::UnsupportedConversion { dtype }),
        };
        Ok(values)
    }
}

/// Decodes fixed-width little-endian elements; the caller has checked that `data` holds a
/// whole number of them.
fn decode<const N: usize>(data: &[u8], convert: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    data.chunks_exact(N)
        .map(|c| convert(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

/// Whether `size` bytes hold a whole number of `dtype` elements.
///
/// For sub-byte dtypes the last byte may be partly unused: `padding_bits` (0..=7, as
/// coremltools writes it) says how many bits. For byte-sized dtypes the field is ignored: older
/// writers left it uninitialised.
fn size_is_consistent(dtype: BlobDType, size: u64, padding_bits: u64) -> bool {
    // u128: `size * 8` cannot overflow, whatever a corrupt file says.
    let bits = u128::from(size) * 8;
    let width = u128::from(dtype.bits());
    if !dtype.is_sub_byte() {
        return bits % width == 0;
    }
    let padding = u128::from(padding_bits);
    padding < 8 && padding <= bits && (bits - padding) % width == 0
}

/// The next multiple of 64 at or after `x`.
fn align_up(x: u64) -> u64 {
    x.next_multiple_of(BLOCK)
}

/// A weight file: an ordered list of chunks. Its byte layout is derived, never stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobFile {
    pub chunks: Vec<BlobChunk>,
}

impl BlobFile {
    pub fn new() -> BlobFile {
        BlobFile::default()
    }

    /// Appends a chunk and returns its MIL offset (the file offset of its metadata), the value
    /// to write in `BLOBFILE(…, offset=uint64(X))`.
    ///
    /// # Panics
    /// If the chunk's data is not a whole number of elements (see [`BlobChunk::is_consistent`]):
    /// the file written would be rejected by every reader.
    pub fn push(&mut self, chunk: BlobChunk) -> u64 {
        assert!(
            chunk.is_consistent(),
            "blob chunk of {} with {} bytes and {} padding bits is not a whole number of elements",
            chunk.dtype,
            chunk.data.len(),
            chunk.padding_bits
        );
        self.chunks.push(chunk);
        *self.mil_offsets().last().expect("a chunk was just pushed")
    }

    fn single(chunk: BlobChunk) -> BlobFile {
        let mut file = BlobFile::new();
        file.push(chunk);
        file
    }

    /// One fp16 chunk (spec 3.4 `build_blob`): MIL offset 64, file length 128 + 2n.
    pub fn fp16(values: &[f32]) -> BlobFile {
        BlobFile::single(BlobChunk::fp16(values))
    }

    /// One fp16 chunk holding the transpose of the row-major `rows × cols` matrix `w`, i.e. a
    /// row-major `[cols, rows]` matrix (spec 3.4 `build_blob_t`): element `j*rows + i` is
    /// `w[i*cols + j]`.
    ///
    /// # Panics
    /// If `w.len() != rows * cols`.
    pub fn fp16_matrix_transposed(w: &[f32], rows: usize, cols: usize) -> BlobFile {
        assert_eq!(
            w.len(),
            rows * cols,
            "matrix of {rows}×{cols} needs {} values, got {}",
            rows * cols,
            w.len()
        );
        let transposed: Vec<f32> = (0..cols)
            .flat_map(|j| (0..rows).map(move |i| w[i * cols + j]))
            .collect();
        BlobFile::fp16(&transposed)
    }

    /// One fp32 chunk.
    pub fn fp32(values: &[f32]) -> BlobFile {
        BlobFile::single(BlobChunk::fp32(values))
    }

    /// One int8 chunk.
    pub fn int8(values: &[i8]) -> BlobFile {
        BlobFile::single(BlobChunk::int8(values))
    }

    /// The MIL offset of each chunk: the first at 64, each next one at the first multiple of
    /// 64 after the previous chunk's data.
    pub fn mil_offsets(&self) -> Vec<u64> {
        let mut offsets = Vec::with_capacity(self.chunks.len());
        let mut next = BLOCK;
        for chunk in &self.chunks {
            offsets.push(next);
            next = align_up(next + BLOCK + chunk.data.len() as u64);
        }
        offsets
    }

    /// The file's bytes. Padding goes between chunks only, so the file ends with the last
    /// chunk's data, as coremltools writes it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let offsets = self.mil_offsets();
        let total = match (offsets.last(), self.chunks.last()) {
            (Some(&off), Some(last)) => off + BLOCK + last.data.len() as u64,
            _ => BLOCK,
        };
        let mut out = Vec::with_capacity(total as usize);
        out.extend_from_slice(&header_bytes(self.chunks.len()));
        for (chunk, &offset) in self.chunks.iter().zip(&offsets) {
            out.resize(offset as usize, 0);
            out.extend_from_slice(&metadata_bytes(
                chunk.dtype,
                chunk.data.len() as u64,
                chunk.padding_bits,
                offset,
            ));
            out.extend_from_slice(&chunk.data);
        }
        out
    }

    /// Reads and validates a whole file: header, then every chunk up to the end of the file.
    /// See the module documentation for what is accepted.
    pub fn parse(bytes: &[u8]) -> Result<BlobFile, BlobError> {
        let declared = read_header(bytes)?;
        let mut chunks = Vec::new();
        walk_chunks(bytes, |chunk| chunks.push(chunk.to_owned()))?;
        check_count(declared, chunks.len() as u64)?;
        Ok(BlobFile { chunks })
    }
}

/// The bytes of a file holding one fp32 tensor at MIL offset 64: what
/// `BlobFile::fp32(values).to_bytes()` gives, written in one pass (every recompile of a
/// training run writes its weights this way).
pub fn fp32_file_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = fp32_file_start(values.len());
    extend_le(&mut out, values);
    out
}

/// [`fp32_file_bytes`] of the transpose of `values`, a `[rows][cols]` matrix, written without
/// a transposed copy in between.
pub fn fp32_file_bytes_transposed(values: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let mut out = fp32_file_start(values.len());
    transpose_bands(values, rows, cols, |band| extend_le(&mut out, band));
    out
}

/// The transpose of `values`, a `[rows][cols]` matrix: `[cols][rows]`.
pub fn transposed(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = Vec::with_capacity(values.len());
    transpose_bands(values, rows, cols, |band| t.extend_from_slice(band));
    t
}

/// Hands the rows of the transpose of `values` (a `[rows][cols]` matrix) to `emit` in order, a
/// band of up to 16 at a time. A band is gathered from one sequential pass over the matrix
/// that reads a whole cache line of every row, in 4×4 blocks: a block is four loads, a few
/// shuffles and four stores, where element by element it is sixteen of each.
pub fn transpose_bands(values: &[f32], rows: usize, cols: usize, mut emit: impl FnMut(&[f32])) {
    const BAND: usize = 16;
    const BLOCK: usize = 4;
    assert_eq!(
        values.len(),
        rows * cols,
        "transpose of a {rows}×{cols} matrix"
    );
    let mut band = vec![0.0f32; BAND * rows];
    for c0 in (0..cols).step_by(BAND) {
        let width = BAND.min(cols - c0);
        let mut r0 = 0;
        if width == BAND {
            while r0 + BLOCK <= rows {
                let src: [&[f32]; BLOCK] =
                    std::array::from_fn(|i| &values[(r0 + i) * cols + c0..][..BAND]);
                for q in (0..BAND).step_by(BLOCK) {
                    let block: [[f32; BLOCK]; BLOCK] = std::array::from_fn(|i| {
                        src[i][q..q + BLOCK]
                            .try_into()
                            .expect("a slice of BLOCK values")
                    });
                    for j in 0..BLOCK {
                        let column: [f32; BLOCK] = std::array::from_fn(|i| block[i][j]);
                        band[(q + j) * rows + r0..][..BLOCK].copy_from_slice(&column);
                    }
                }
                r0 += BLOCK;
            }
        }
        // A ragged last band, and the rows past the last whole block.
        for r in r0..rows {
            for (j, &v) in values[r * cols + c0..][..width].iter().enumerate() {
                band[j * rows + r] = v;
            }
        }
        emit(&band[..width * rows]);
    }
}

/// The header and metadata of a one-chunk fp32 file of `len` values, with room for them.
fn fp32_file_start(len: usize) -> Vec<u8> {
    let size = len * 4;
    let mut out = Vec::with_capacity(2 * BLOCK as usize + size);
    out.extend_from_slice(&header_bytes(1));
    out.extend_from_slice(&metadata_bytes(BlobDType::Float32, size as u64, 0, BLOCK));
    out
}

/// Appends `values` as little-endian bytes.
fn extend_le(out: &mut Vec<u8>, values: &[f32]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(values));
    } else {
        values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    }
}

/// The 64-byte file header.
fn header_bytes(count: usize) -> [u8; BLOCK as usize] {
    let count = u32::try_from(count).expect("a blob file holds at most u32::MAX chunks");
    let mut h = [0u8; BLOCK as usize];
    h[0..4].copy_from_slice(&count.to_le_bytes());
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// The 64-byte metadata block of a chunk of `size` data bytes, placed at file offset
/// `offset`.
fn metadata_bytes(
    dtype: BlobDType,
    size: u64,
    padding_bits: u64,
    offset: u64,
) -> [u8; BLOCK as usize] {
    let mut m = [0u8; BLOCK as usize];
    m[0..4].copy_from_slice(&SENTINEL.to_le_bytes());
    m[4..8].copy_from_slice(&dtype.code().to_le_bytes());
    m[8..16].copy_from_slice(&size.to_le_bytes());
    m[16..24].copy_from_slice(&(offset + BLOCK).to_le_bytes());
    m[24..32].copy_from_slice(&padding_bits.to_le_bytes());
    m
}

/// Checks the header's length and version and returns its chunk count.
fn read_header(bytes: &[u8]) -> Result<u32, BlobError> {
    if (bytes.len() as u64) < BLOCK {
        return Err(BlobError::FileTooShort {
            len: bytes.len() as u64,
        });
    }
    let version = u32_at(bytes, 4);
    if version != VERSION {
        return Err(BlobError::BadVersion { found: version });
    }
    Ok(u32_at(bytes, 0))
}

/// Applies the count rule of the module documentation.
fn check_count(declared: u32, found: u64) -> Result<(), BlobError> {
    let ok = if found == 0 {
        declared == 0
    } else {
        declared >= 1 && u64::from(declared) <= found
    };
    if ok {
        Ok(())
    } else {
        Err(BlobError::CountMismatch { declared, found })
    }
}

/// Resolves `BLOBFILE(offset=X)` against a whole file's bytes: checks the file header, that `X`
/// can be a metadata offset, and the chunk there.
pub fn read_chunk(bytes: &[u8], mil_offset: u64) -> Result<BlobChunk, BlobError> {
    Ok(chunk_ref(bytes, mil_offset)?.to_owned())
}

/// [`read_chunk`] without copying the chunk's data out of the file.
pub(crate) fn chunk_ref(bytes: &[u8], mil_offset: u64) -> Result<ChunkRef<'_>, BlobError> {
    let declared = read_header(bytes)?;
    if mil_offset < BLOCK {
        return Err(BlobError::OffsetInHeader { offset: mil_offset });
    }
    if mil_offset % BLOCK != 0 {
        return Err(BlobError::MisalignedOffset { offset: mil_offset });
    }
    let chunk = chunk_ref_at(bytes, mil_offset)?;
    // The whole file is held to the count rule, as `BlobFile::parse` holds it: a count that
    // disagrees with the chunks means a damaged file, whichever chunk is asked for.
    check_count(declared, walk_chunks(bytes, |_| {})?)?;
    Ok(chunk)
}

/// Validates every chunk of a file after its header, in place, passing each to `each`;
/// returns how many there are.
fn walk_chunks<'a>(bytes: &'a [u8], mut each: impl FnMut(ChunkRef<'a>)) -> Result<u64, BlobError> {
    let len = bytes.len() as u64;
    let (mut offset, mut count) = (BLOCK, 0u64);
    // Bytes past the last chunk's data but before the next 64-byte boundary are padding;
    // anything at or beyond that boundary must be another chunk.
    while offset < len {
        let chunk = chunk_ref_at(bytes, offset).map_err(|e| BlobError::InChunk {
            index: count,
            error: Box::new(e),
        })?;
        // Cannot overflow: the data was checked to end inside the file.
        offset = align_up(offset + BLOCK + chunk.data.len() as u64);
        count += 1;
        each(chunk);
    }
    Ok(count)
}

/// Validates the chunk whose metadata starts at `offset` and returns it in place.
fn chunk_ref_at(bytes: &[u8], offset: u64) -> Result<ChunkRef<'_>, BlobError> {
    let len = bytes.len() as u64;
    let meta = slice_at(bytes, offset, BLOCK).ok_or(BlobError::Truncated {
        field: "chunk metadata",
        offset,
        needed: BLOCK,
        len,
    })?;
    let sentinel = u32_at(meta, 0);
    if sentinel != SENTINEL {
        return Err(BlobError::BadSentinel {
            offset,
            found: sentinel,
        });
    }
    let code = u32_at(meta, 4);
    let dtype = BlobDType::from_code(code).ok_or(BlobError::UnknownDType { offset, code })?;
    let size = u64_at(meta, 8);
    let data_offset = u64_at(meta, 16);
    let padding_bits = u64_at(meta, 24);

    // `offset + 64` fits: the metadata block lies inside the slice.
    let expected = offset + BLOCK;
    if data_offset != expected {
        return Err(BlobError::BadDataOffset {
            offset,
            expected,
            found: data_offset,
        });
    }
    let data = slice_at(bytes, data_offset, size).ok_or(BlobError::DataOutOfBounds {
        offset,
        data_offset,
        size,
        len,
    })?;
    if !size_is_consistent(dtype, size, padding_bits) {
        return Err(BlobError::BadSize {
            offset,
            dtype,
            size,
            padding_bits,
        });
    }
    Ok(ChunkRef {
        dtype,
        data,
        padding_bits,
    })
}

/// `bytes[offset..offset + len]`, or `None` if any of it lies outside (overflow included).
fn slice_at(bytes: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

/// The little-endian u32 at `at`; the caller has checked the bounds.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The little-endian u64 at `at`; the caller has checked the bounds.
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}
