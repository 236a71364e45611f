//! NumPy `.npy` tensors in and out (fp16 or fp32, little-endian, C order), so results can be
//! checked with numpy.
//!
//! The format (NumPy's `numpy.lib.format`): the magic `\x93NUMPY`, a major and a minor version
//! byte, the header's length (u16 in version 1, u32 in versions 2 and 3), the header — a Python
//! dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces
//! and ended by `\n` — and the raw data. Only that dict's subset is parsed here, so that reading
//! needs no general Python-literal parser (whose dependencies do not build for Apple targets
//! without a C cross toolchain).

use anetrain_mil::DType;
use anetrain_model::io::atomic::atomic_write;
use anyhow::Context;
use half::f16;
use std::path::Path;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// NumPy aligns the data to 64 bytes; readers accept any alignment.
const ALIGN: usize = 64;
/// The largest header NumPy itself reads; a larger length is a corrupt file, not a reason to
/// allocate.
const MAX_HEADER: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Reads an fp16 or fp32 array in C order.
pub fn read(path: &Path) -> anyhow::Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Writes an array as `dtype` (fp16 or fp32; other dtypes as fp32), atomically (see
/// [`atomic_write`]): a failure never leaves a partial file.
pub fn write_atomic(
    path: &Path,
    dtype: DType,
    shape: &[usize],
    data: &[f32],
) -> anyhow::Result<()> {
    let bytes = encode(dtype, shape, data);
    atomic_write(path, |out| out.write_all(&bytes))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The element types read and written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Element {
    F16,
    F32,
}

impl Element {
    fn descr(self) -> &'static str {
        match self {
            Element::F16 => "<f2",
            Element::F32 => "<f4",
        }
    }

    fn size(self) -> usize {
        match self {
            Element::F16 => 2,
            Element::F32 => 4,
        }
    }
}

/// Parses a whole `.npy` file. Errors name what is wrong; the caller adds the file.
pub fn decode(bytes: &[u8]) -> Result<Tensor, String> {
    if bytes.len() < MAGIC.len() + 2 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a .npy file (it does not start with \\x93NUMPY)".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let length_bytes = match major {
        1 => 2,
        2 | 3 => 4,
        _ => {
            return Err(format!(
                "format version {major}.{minor} is not supported (1.0 to 3.0 are)"
            ))
        }
    };
    let header_start = 8 + length_bytes;
    let Some(length) = bytes.get(8..header_start) else {
        return Err(format!(
            "truncated: the file ends in its preamble ({} bytes)",
            bytes.len()
        ));
    };
    let header_len = length
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    if header_len > MAX_HEADER {
        return Err(format!(
            "corrupt: a header of {header_len} bytes (NumPy writes under 64 KiB)"
        ));
    }
    let data_start = header_start + header_len;
    let Some(header) = bytes.get(header_start..data_start) else {
        return Err(format!(
            "truncated: the header of {header_len} bytes runs past the end of the file ({} bytes)",
            bytes.len()
        ));
    };
    let header =
        std::str::from_utf8(header).map_err(|_| "corrupt: the header is not text".to_string())?;
    let Header {
        descr,
        fortran_order,
        shape,
    } = Header::parse(header)?;
    let element = match descr.as_str() {
        "<f4" => Element::F32,
        "<f2" => Element::F16,
        ">f4" | ">f2" => {
            return Err(format!(
                "dtype '{descr}' is big-endian; save as little-endian ('<f2' or '<f4')"
            ))
        }
        other => {
            return Err(format!(
                "dtype '{other}' is not supported (use float16 or float32)"
            ))
        }
    };
    if fortran_order {
        return Err("Fortran-ordered arrays are not supported; save with C order".into());
    }
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|n| n.checked_mul(element.size()).is_some())
        .ok_or_else(|| format!("corrupt: shape {} is too large", tuple(&shape)))?;
    let data = &bytes[data_start..];
    let needed = count * element.size();
    if data.len() != needed {
        return Err(format!(
            "{}: holds {} bytes of data, shape {} of {} needs {needed}",
            if data.len() < needed {
                "truncated"
            } else {
                "corrupt"
            },
            data.len(),
            tuple(&shape),
            element.descr()
        ));
    }
    let data = match element {
        Element::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Element::F16 => data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    };
    Ok(Tensor { shape, data })
}

/// A version 1.0 file (2.0 if the header outgrows a u16), data aligned to 64 bytes as NumPy
/// writes it.
pub fn encode(dtype: DType, shape: &[usize], data: &[f32]) -> Vec<u8> {
    let element = if dtype == DType::Fp16 {
        Element::F16
    } else {
        Element::F32
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        element.descr(),
        tuple(shape)
    );
    let version: u8 = if header.len() + 1 + 10 <= usize::from(u16::MAX) {
        1
    } else {
        2
    };
    let preamble = if version == 1 { 10 } else { 12 };
    let padded = (preamble + header.len() + 1).next_multiple_of(ALIGN);
    header.extend(std::iter::repeat_n(
        ' ',
        padded - preamble - header.len() - 1,
    ));
    header.push('\n');

    let mut out = Vec::with_capacity(padded + data.len() * element.size());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    for &v in data {
        match element {
            Element::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
            Element::F32 => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

/// A shape as a Python tuple: `()`, `(5,)`, `(2, 3)`.
fn tuple(shape: &[usize]) -> String {
    match shape {
        [d] => format!("({d},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("({})", dims.join(", "))
        }
    }
}

/// The three keys of a `.npy` header.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value in the header dict.
enum Literal {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

impl Header {
    fn parse(text: &str) -> Result<Header, String> {
        let mut p = Parser { text, pos: 0 };
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        p.expect('{')?;
        loop {
            if p.eat('}') {
                break;
            }
            let key_at = p.pos;
            let Literal::Str(key) = p.literal()? else {
                return Err(p.error_at(key_at, "a quoted key"));
            };
            p.expect(':')?;
            let value_at = p.pos;
            let value = p.literal()?;
            match (key.as_str(), value) {
                ("descr", Literal::Str(s)) => descr = Some(s),
                ("fortran_order", Literal::Bool(b)) => fortran_order = Some(b),
                ("shape", Literal::Tuple(t)) => shape = Some(t),
                ("descr", Literal::Tuple(_) | Literal::Bool(_)) => {
                    return Err(p.error_at(value_at, "a dtype string for 'descr'"))
                }
                ("fortran_order", _) => return Err(p.error_at(value_at, "True or False")),
                ("shape", _) => return Err(p.error_at(value_at, "a tuple of sizes")),
                (other, _) => return Err(format!("corrupt header: unknown key '{other}'")),
            }
            if !p.eat(',') {
                p.expect('}')?;
                break;
            }
        }
        p.skip_space();
        if p.pos != text.len() {
            return Err(p.error_at(p.pos, "the end of the header"));
        }
        let missing = |key: &str| format!("corrupt header: no '{key}'");
        Ok(Header {
            descr: descr.ok_or_else(|| missing("descr"))?,
            fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
            shape: shape.ok_or_else(|| missing("shape"))?,
        })
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error_at(&self, pos: usize, wanted: &str) -> String {
        let found: String = self.text[pos..].chars().take(16).collect();
        format!("corrupt header: expected {wanted} at byte {pos}, found {found:?}")
    }

    fn skip_space(&mut self) {
        let rest = &self.text[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        if self.text[self.pos..].starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error_at(self.pos, &format!("'{c}'")))
        }
    }

    fn literal(&mut self) -> Result<Literal, String> {
        self.skip_space();
        let rest = &self.text[self.pos..];
        if let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
            let Some(len) = rest[1..].find(quote) else {
                return Err(self.error_at(self.pos, "a closed string"));
            };
            self.pos += len + 2;
            return Ok(Literal::Str(rest[1..=len].to_string()));
        }
        for (word, value) in [("True", true), ("False", false)] {
            if rest.starts_with(word) {
                self.pos += word.len();
                return Ok(Literal::Bool(value));
            }
        }
        if self.eat('(') {
            let mut sizes = Vec::new();
            while !self.eat(')') {
                sizes.push(self.size()?);
                if !self.eat(',') {
                    self.expect(')')?;
                    break;
                }
            }
            return Ok(Literal::Tuple(sizes));
        }
        Err(self.error_at(self.pos, "a string, True, False or a tuple"))
    }

    /// A non-negative integer; Python 2's long suffix `L` is allowed, as old NumPy wrote it.
    fn size(&mut self) -> Result<usize, String> {
        self.skip_space();
        let rest = &self.text[self.pos..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let value = rest[..digits]
            .parse()
            .map_err(|_| self.error_at(self.pos, "a size"))?;
        self.pos += digits;
        if self.text[self.pos..].starts_with('L') {
            self.pos += 1;
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_every_rank_are_parsed() {
        for (text, shape) in [
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
                vec![],
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }",
                vec![5],
            ),
            (
                "{\"descr\": \"<f2\", \"fortran_order\": False, \"shape\": (2L, 3L)}",
                vec![2, 3],
            ),
            (
                "{'shape':(1,2,3,4),'fortran_order':False,'descr':'<f4'}  \n",
                vec![1, 2, 3, 4],
            ),
        ] {
            assert_eq!(Header::parse(text).unwrap().shape, shape, "{text}");
        }
    }

    #[test]
    fn a_malformed_header_names_what_was_expected_and_where() {
        for (text, wanted) in [
            (
                "{'descr': '<f4', 'fortran_order': Maybe, 'shape': ()}",
                "at byte 34",
            ),
            ("{'descr': '<f4', 'fortran_order': False}", "no 'shape'"),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3)}",
                "expected a size",
            ),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': ()}",
                "a string",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}",
                "expected a string",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
                "a size",
            ),
            ("{'descr': '<f4 ", "a closed string"),
        ] {
            let error = Header::parse(text).unwrap_err();
            assert!(error.contains(wanted), "{text}: {error}");
        }
    }

    #[test]
    fn written_files_have_the_layout_numpy_writes() {
        for shape in [vec![], vec![5], vec![1, 768, 1, 256]] {
            let count: usize = shape.iter().product();
            let bytes = encode(DType::Fp16, &shape, &vec![1.5; count]);
            let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
            assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
            assert_eq!((10 + header_len) % ALIGN, 0);
            assert_eq!(bytes[10 + header_len - 1], b'\n');
            assert_eq!(bytes.len(), 10 + header_len + 2 * count);
            let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
            assert!(header.starts_with("{'descr': '<f2', 'fortran_order': False, 'shape': ("));
            assert_eq!(decode(&bytes).unwrap().shape, shape);
        }
    }

    #[test]
    fn a_huge_header_length_is_refused_before_anything_is_allocated() {
        let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&bytes)
            .unwrap_err()
            .contains("a header of 4294967295 bytes"));
    }

    #[test]
    fn a_shape_whose_size_overflows_is_refused() {
        let shape = "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(shape.len() as u16).to_le_bytes());
        bytes.extend_from_slice(shape.as_bytes());
        assert!(decode(&bytes).unwrap_err().contains("is too large"));
    }
}
