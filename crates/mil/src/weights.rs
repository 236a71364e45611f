//! The set of weight files handed to a device with a program, and the fp32 matrices that can
//! stand in for a file without being written out ([`MatrixFile`], [`MatrixShare`]).
//!
//! The file format itself is [`crate::blob`]'s.

use crate::blob::{
    chunk_ref, fp32_file_bytes, fp32_file_bytes_transposed, transposed, BlobDType, BlobError,
    BlobFile, BLOCK,
};
use crate::ir::{self, DType};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The weight files handed to a device with a program: BLOBFILE path (e.g.
/// `"@model_path/weights/wq.bin"`) -> whole file bytes.
///
/// The bytes sit behind an `Arc` so that cloning the set (to hand it to a device thread, or to
/// keep it for a recompile) does not copy tens of megabytes of weights.
///
/// A file may also be an fp32 matrix that lives elsewhere (a [`MatrixFile`]: a model's
/// parameters, possibly read transposed). It is the one-chunk fp32 file of that matrix in every
/// respect, but its bytes are only written if somebody asks for them ([`WeightFiles::get`]): a
/// device that reads it as numbers ([`WeightFiles::tensor_f32`], [`WeightFiles::matrix_f32`])
/// takes them from where they are. Training recompiles every weight after every update, and
/// serialising them was most of a CPU compile.
#[derive(Clone, Default)]
pub struct WeightFiles {
    files: BTreeMap<String, FileData>,
}

#[derive(Clone)]
enum FileData {
    Bytes(Arc<Vec<u8>>),
    Matrix(Arc<MatrixFile>),
}

/// Values that a [`MatrixFile`] views: anything that can lend a slice of f32s and be shared
/// across threads (a model's parameters, a plain vector).
pub type F32Source = Arc<dyn AsRef<[f32]> + Send + Sync>;

/// An fp32 weight file that holds `source[range]`, a `[rows][cols]` row-major matrix, either
/// as it is or transposed (then the file holds the `[cols][rows]` matrix).
pub struct MatrixFile {
    source: F32Source,
    range: std::ops::Range<usize>,
    rows: usize,
    cols: usize,
    transposed: bool,
    bytes: std::sync::OnceLock<Vec<u8>>,
    share: Option<Arc<MatrixShare>>,
}

/// Forms that a consumer derives from weight matrices (a device's packed layout), shared by
/// every [`MatrixFile`] made [`MatrixFile::shared_in`] the same `MatrixShare`.
///
/// A kernel set reads each weight matrix in two kernels, `W·x` forward and `Wᵀ·dy` backward,
/// each with its own weight files. When the files of one set share a `MatrixShare`, a device
/// that can read its derived form either way derives it once for both. The caller keeps the
/// share for as long as the set compiles and then drops it, and the entries with it.
///
/// An entry is found by the matrix's source (compared by address), its place in the source and
/// the derived form's type. The entry holds the source, so while the share lives no other
/// values can come to sit at that address.
#[derive(Default)]
pub struct MatrixShare {
    entries: std::sync::Mutex<Vec<ShareEntry>>,
}

struct ShareEntry {
    source: F32Source,
    start: usize,
    shape: [usize; 2],
    derived: Arc<dyn std::any::Any + Send + Sync>,
}

impl MatrixShare {
    pub fn new() -> Arc<MatrixShare> {
        Arc::new(MatrixShare::default())
    }

    /// How many forms the share holds.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The form of `matrix`'s stored matrix of type `T`, derived by `derive` on first use.
    fn derived<T: std::any::Any + Send + Sync>(
        &self,
        matrix: &MatrixFile,
        derive: impl FnOnce(&[f32], usize, usize) -> Option<T>,
    ) -> Option<Arc<T>> {
        // Held while deriving: a second kernel of the set that wants the same form waits for
        // it rather than deriving its own.
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let shape = [matrix.rows, matrix.cols];
        let found = entries.iter().find_map(|e| {
            let same = Arc::ptr_eq(&e.source, &matrix.source)
                && e.start == matrix.range.start
                && e.shape == shape;
            same.then(|| e.derived.clone().downcast::<T>().ok())
                .flatten()
        });
        if found.is_some() {
            return found;
        }
        let derived = Arc::new(derive(matrix.stored(), matrix.rows, matrix.cols)?);
        entries.push(ShareEntry {
            source: matrix.source.clone(),
            start: matrix.range.start,
            shape,
            derived: derived.clone(),
        });
        Some(derived)
    }
}

impl MatrixFile {
    /// The file of `source[range]` read as a `[rows][cols]` matrix, transposed if asked;
    /// `None` when the range is not `rows × cols` values inside the source.
    pub fn new(
        source: F32Source,
        range: std::ops::Range<usize>,
        [rows, cols]: [usize; 2],
        transposed: bool,
    ) -> Option<MatrixFile> {
        let fits = range.start <= range.end
            && range.end <= (*source).as_ref().len()
            && rows.checked_mul(cols) == Some(range.len());
        fits.then(|| MatrixFile {
            source,
            range,
            rows,
            cols,
            transposed,
            bytes: std::sync::OnceLock::new(),
            share: None,
        })
    }

    /// The file with derived forms of its matrix shared through `share` (see [`MatrixShare`]).
    pub fn shared_in(self, share: &Arc<MatrixShare>) -> MatrixFile {
        MatrixFile {
            share: Some(share.clone()),
            ..self
        }
    }

    /// The matrix as stored in the source, `[rows][cols]` row-major.
    fn stored(&self) -> &[f32] {
        &(*self.source).as_ref()[self.range.clone()]
    }

    /// The file's bytes, written on first use.
    fn bytes(&self) -> &[u8] {
        self.bytes.get_or_init(|| {
            if self.transposed {
                fp32_file_bytes_transposed(self.stored(), self.rows, self.cols)
            } else {
                fp32_file_bytes(self.stored())
            }
        })
    }

    /// The file's elements in file order (the transpose written out if the file is one).
    fn values(&self) -> Cow<'_, [f32]> {
        if self.transposed {
            Cow::Owned(transposed(self.stored(), self.rows, self.cols))
        } else {
            Cow::Borrowed(self.stored())
        }
    }

    /// Whether a `BLOBFILE(offset)` of MIL dtype `dtype` and `shape` reads exactly this
    /// file's one chunk as it is; anything else is checked on the bytes, with their errors.
    fn serves(&self, offset: u64, dtype: DType, shape: &[usize]) -> bool {
        offset == BLOCK
            && dtype == DType::Fp32
            && shape.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n)) == Some(self.range.len())
    }
}

/// A weight tensor read as numbers: in file order, or as the transpose of a matrix held
/// elsewhere, which a consumer that can read a matrix either way uses without writing the
/// transpose out.
#[derive(Clone, Debug, PartialEq)]
pub enum MatrixValues<'a> {
    /// The elements in file order.
    Dense(Cow<'a, [f32]>),
    /// The file holds the transpose of `stored`, a `[rows][cols]` row-major matrix: file
    /// element `[c][r]` is `stored[r * cols + c]`.
    TransposeOf {
        stored: &'a [f32],
        rows: usize,
        cols: usize,
    },
}

impl FileData {
    fn bytes(&self) -> &[u8] {
        match self {
            FileData::Bytes(b) => b.as_slice(),
            FileData::Matrix(m) => m.bytes(),
        }
    }

    fn len(&self) -> usize {
        match self {
            FileData::Bytes(b) => b.len(),
            // Known without writing the bytes: one chunk of fp32 data after header and metadata.
            FileData::Matrix(m) => 2 * BLOCK as usize + 4 * m.range.len(),
        }
    }
}

impl fmt::Debug for WeightFiles {
    /// Paths and sizes only: the derived form would print every weight byte.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.files
                    .iter()
                    .map(|(path, data)| (path, format!("{} bytes", data.len()))),
            )
            .finish()
    }
}

impl WeightFiles {
    pub fn new() -> WeightFiles {
        WeightFiles::default()
    }

    /// Adds (or replaces) the file at `path`.
    pub fn insert(&mut self, path: impl Into<String>, bytes: Vec<u8>) {
        self.files
            .insert(path.into(), FileData::Bytes(Arc::new(bytes)));
    }

    /// Adds (or replaces) the file at `path` with a matrix held elsewhere (see [`MatrixFile`]).
    pub fn insert_matrix(&mut self, path: impl Into<String>, matrix: MatrixFile) {
        self.files
            .insert(path.into(), FileData::Matrix(Arc::new(matrix)));
    }

    /// Adds (or replaces) the file at `path` with the bytes of `blob`.
    pub fn insert_blob(&mut self, path: impl Into<String>, blob: &BlobFile) {
        self.insert(path, blob.to_bytes());
    }

    /// The file at `path` as the shared buffer it is held in: two `WeightFiles` that share a
    /// file (one cloned from the other) hand out the same `Arc`.
    ///
    /// A matrix file has no such buffer (its numbers change with the matrix it views): `None`.
    pub fn shared(&self, path: &str) -> Option<&Arc<Vec<u8>>> {
        match self.files.get(path)? {
            FileData::Bytes(b) => Some(b),
            FileData::Matrix(_) => None,
        }
    }

    /// Whether there is a file at `path` (a matrix file's bytes are not written to tell).
    pub fn contains(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    /// The whole file's bytes (a matrix file's are written on first use).
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(FileData::bytes)
    }

    /// The files in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(p, d)| (p.as_str(), d.bytes()))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Resolves a `Literal::Blob` to f32 values, checking: the path exists, the chunk at
    /// `offset` is valid, its dtype is the one that stores the declared MIL dtype, and its
    /// sizeInBytes is the number of elements × the element size. fp32 data is borrowed in
    /// place when it can be.
    pub fn tensor_f32(
        &self,
        path: &str,
        offset: u64,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Cow<'_, [f32]>, BlobError> {
        if let Some(FileData::Matrix(m)) = self.files.get(path) {
            if m.serves(offset, dtype, shape) {
                return Ok(m.values());
            }
        }
        let in_file = |error| BlobError::InFile {
            path: path.to_string(),
            error: Box::new(error),
        };
        let bytes = self.get(path).ok_or_else(|| BlobError::MissingPath {
            path: path.to_string(),
        })?;
        let chunk = chunk_ref(bytes, offset).map_err(in_file)?;
        let expected = BlobDType::for_mil(dtype).ok_or_else(|| BlobError::UnsupportedMilDType {
            path: path.to_string(),
            dtype,
        })?;
        if chunk.dtype != expected {
            return Err(BlobError::DTypeMismatch {
                path: path.to_string(),
                offset,
                declared: dtype,
                expected,
                found: chunk.dtype,
            });
        }
        let expected_bytes =
            tensor_bytes(expected, shape).ok_or_else(|| BlobError::ShapeTooLarge {
                path: path.to_string(),
                shape: shape.to_vec(),
            })?;
        let found = chunk.data.len() as u64;
        if found != expected_bytes {
            return Err(BlobError::SizeMismatch {
                path: path.to_string(),
                offset,
                dtype,
                shape: shape.to_vec(),
                expected: expected_bytes,
                found,
            });
        }
        chunk.values().map_err(in_file)
    }

    /// [`WeightFiles::tensor_f32`] for a consumer that can also read a matrix transposed: a
    /// transposed [`MatrixFile`] comes back as the matrix it views, not written out.
    pub fn matrix_f32(
        &self,
        path: &str,
        offset: u64,
        dtype: DType,
        shape: &[usize],
    ) -> Result<MatrixValues<'_>, BlobError> {
        if let Some(FileData::Matrix(m)) = self.files.get(path) {
            if m.transposed && m.serves(offset, dtype, shape) {
                return Ok(MatrixValues::TransposeOf {
                    stored: m.stored(),
                    rows: m.rows,
                    cols: m.cols,
                });
            }
        }
        self.tensor_f32(path, offset, dtype, shape)
            .map(MatrixValues::Dense)
    }

    /// The form of type `T` a consumer derives from the matrix that the file at `path` views,
    /// shared with the other files of its [`MatrixShare`], and whether the file holds that
    /// matrix transposed. `derive` gets the matrix as stored (`[rows][cols]` row-major) and is
    /// called only if no file of the share derived it before. `None` when the file is not a
    /// shared matrix file read whole by `BLOBFILE(offset)` of `dtype` and `shape`, or `derive`
    /// gave none.
    pub fn derived_matrix<T: std::any::Any + Send + Sync>(
        &self,
        path: &str,
        offset: u64,
        dtype: DType,
        shape: &[usize],
        derive: impl FnOnce(&[f32], usize, usize) -> Option<T>,
    ) -> Option<(Arc<T>, bool)> {
        let Some(FileData::Matrix(m)) = self.files.get(path) else {
            return None;
        };
        if !m.serves(offset, dtype, shape) {
            return None;
        }
        let derived = m.share.as_ref()?.derived(m, derive)?;
        Some((derived, m.transposed))
    }

    /// The BLOBFILE paths `program` refers to that are missing here, in order of first use:
    /// a clear error before compiling rather than an opaque one from the compiler.
    pub fn missing_for(&self, program: &ir::Program) -> Vec<String> {
        program
            .blob_paths()
            .into_iter()
            .filter(|p| !self.files.contains_key(*p))
            .map(str::to_string)
            .collect()
    }
}

/// Bytes of a dense tensor of `shape` in a byte-sized `dtype`; `None` on overflow.
fn tensor_bytes(dtype: BlobDType, shape: &[usize]) -> Option<u64> {
    let width = u64::from(dtype.bits() / 8);
    shape
        .iter()
        .try_fold(width, |acc, &n| acc.checked_mul(u64::try_from(n).ok()?))
}
