//! What differs between Apple chips, as data: one table of the chips whose Neural Engine is
//! known, with Apple's rated throughput and the quirks others have measured.
//!
//! Sources (see `shared/reference/peers.md`): rated figures from Apple as collected by
//! hollance/neural-engine; quirks from maderix/ANE's benchmark report and pull requests, and from
//! the rustane projects. A quirk says where it was reported, so that a user who meets a failure
//! on a chip can judge how solid the note is.

use std::fmt;

/// How Apple counted the operations in a chip's rated figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RatedPrecision {
    /// fp16 operations (Apple's convention up to the M3).
    Fp16,
    /// int8 operations (from the M4 on): fp16 runs at about half that rate, as measured
    /// (M4: 18.6 TFLOPS fp16 against 35.1 TOPS int8).
    Int8,
}

impl fmt::Display for RatedPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RatedPrecision::Fp16 => "fp16",
            RatedPrecision::Int8 => "int8",
        })
    }
}

/// Apple's published Neural Engine throughput for a chip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rated {
    /// Tera-operations per second, as Apple states it.
    pub tops: f64,
    pub precision: RatedPrecision,
}

impl Rated {
    /// The rated figure in fp16 FLOP/s, the precision every kernel here runs in.
    pub fn fp16_flops(&self) -> f64 {
        match self.precision {
            RatedPrecision::Fp16 => self.tops * 1e12,
            RatedPrecision::Int8 => self.tops * 1e12 / 2.0,
        }
    }
}

/// Something a chip does differently from the M4, on which the original work was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quirk {
    /// Programs must be written in the `ios16` dialect (`program(1.0)`).
    Ios16Dialect,
    /// Each weight file may hold one tensor: single-file, multi-chunk weight blobs are rejected.
    PerMatrixWeightBlobs,
    /// Only these conv channel counts compile.
    OnlyChannels(&'static [usize]),
    /// I/O surfaces must be aligned to this many bytes.
    SurfaceAlignment(usize),
    /// The last (spatial) dimension of every input and output must be a multiple of this;
    /// other widths corrupt data silently.
    SpatialMultipleOf(usize),
}

impl Quirk {
    /// Where the quirk was reported.
    pub fn source(&self) -> &'static str {
        match self {
            Quirk::Ios16Dialect => "maderix/ANE PR #6 and its benchmark report (M1 generation)",
            Quirk::PerMatrixWeightBlobs => "maderix/ANE benchmark report (M1 generation)",
            Quirk::OnlyChannels(_) => {
                "maderix/ANE benchmark report and issue #42 (M3 Pro, M3 Ultra)"
            }
            Quirk::SurfaceAlignment(_) => "maderix/ANE PR #35 (M5)",
            Quirk::SpatialMultipleOf(_) => "rustane README (M4 Max)",
        }
    }
}

impl fmt::Display for Quirk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quirk::Ios16Dialect => f.write_str("needs the ios16 dialect (program(1.0))"),
            Quirk::PerMatrixWeightBlobs => {
                f.write_str("needs one weight file per matrix (multi-chunk blobs are rejected)")
            }
            Quirk::OnlyChannels(counts) => {
                let list: Vec<String> = counts.iter().map(usize::to_string).collect();
                write!(f, "compiles convs of only {} channels", list.join(" or "))
            }
            Quirk::SurfaceAlignment(bytes) => write!(f, "needs {bytes}-byte aligned I/O buffers"),
            Quirk::SpatialMultipleOf(n) => {
                write!(f, "needs a spatial width that is a multiple of {n}")
            }
        }
    }
}

/// Reported on the M4 Max and never shown not to apply elsewhere: assumed on every chip, since
/// the failure is silent corruption.
const SPATIAL_16: Quirk = Quirk::SpatialMultipleOf(16);

const M1_QUIRKS: &[Quirk] = &[Quirk::Ios16Dialect, Quirk::PerMatrixWeightBlobs, SPATIAL_16];
const M3_512_QUIRKS: &[Quirk] = &[Quirk::OnlyChannels(&[512]), SPATIAL_16];
const M5_QUIRKS: &[Quirk] = &[Quirk::SurfaceAlignment(128), SPATIAL_16];
const PLAIN: &[Quirk] = &[SPATIAL_16];

/// One chip whose Neural Engine is known.
#[derive(Clone, Debug, PartialEq)]
pub struct Chip {
    /// As in the CPU brand string without "Apple ": `M4 Pro`.
    pub name: &'static str,
    /// What `_ANEDeviceInfo aneSubType` reports. h16 (M4, M5) and h17 (M5 Max) were reported by
    /// maderix/ANE PR #50; the others follow the compiler's target names and are unconfirmed.
    pub ane_subtype: &'static str,
    pub ane_cores: u32,
    /// `None` where Apple has not published a figure, or sources disagree.
    pub rated: Option<Rated>,
    pub quirks: &'static [Quirk],
}

const fn chip(
    name: &'static str,
    ane_subtype: &'static str,
    ane_cores: u32,
    rated: Option<Rated>,
    quirks: &'static [Quirk],
) -> Chip {
    Chip {
        name,
        ane_subtype,
        ane_cores,
        rated,
        quirks,
    }
}

const fn fp16(tops: f64) -> Option<Rated> {
    Some(Rated {
        tops,
        precision: RatedPrecision::Fp16,
    })
}

const fn int8(tops: f64) -> Option<Rated> {
    Some(Rated {
        tops,
        precision: RatedPrecision::Int8,
    })
}

/// Every known chip. M3 figures are Apple's 18 TOPS (hollance lists 15.8); the M3 Ultra and M5
/// have no agreed figure.
pub const CHIPS: &[Chip] = &[
    chip("M1", "h13", 16, fp16(11.0), M1_QUIRKS),
    chip("M1 Pro", "h13", 16, fp16(11.0), M1_QUIRKS),
    chip("M1 Max", "h13", 16, fp16(11.0), M1_QUIRKS),
    chip("M1 Ultra", "h13", 32, fp16(22.0), M1_QUIRKS),
    chip("M2", "h14", 16, fp16(15.8), PLAIN),
    chip("M2 Pro", "h14", 16, fp16(15.8), PLAIN),
    chip("M2 Max", "h14", 16, fp16(15.8), PLAIN),
    chip("M2 Ultra", "h14", 32, fp16(31.6), PLAIN),
    chip("M3", "h15", 16, fp16(18.0), PLAIN),
    chip("M3 Pro", "h15", 16, fp16(18.0), M3_512_QUIRKS),
    chip("M3 Max", "h15", 16, fp16(18.0), PLAIN),
    chip("M3 Ultra", "h15", 32, None, M3_512_QUIRKS),
    chip("M4", "h16", 16, int8(38.0), PLAIN),
    chip("M4 Pro", "h16", 16, int8(38.0), PLAIN),
    chip("M4 Max", "h16", 16, int8(38.0), PLAIN),
    chip("M5", "h16", 16, None, M5_QUIRKS),
    chip("M5 Pro", "h17", 16, None, M5_QUIRKS),
    chip("M5 Max", "h17", 16, None, M5_QUIRKS),
];

/// The quirks assumed on a chip missing from the table: only the silent-corruption guard.
pub const UNKNOWN_CHIP_QUIRKS: &[Quirk] = PLAIN;

/// Every I/O surface is aligned to at least this many bytes (the M5's requirement, harmless
/// elsewhere: every training shape is a multiple of it already).
pub const MIN_SURFACE_ALIGNMENT: usize = 128;

/// The chip named by a CPU brand string such as `Apple M4 Pro`. Trailing words the table does
/// not know (a virtualised machine's suffix, say) are ignored; the longest matching name wins,
/// so `M4 Pro` is never taken for `M4`.
pub fn identify(brand: &str) -> Option<&'static Chip> {
    let name = brand.trim().strip_prefix("Apple ")?.trim();
    CHIPS
        .iter()
        .filter(|c| {
            name.strip_prefix(c.name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
        })
        .max_by_key(|c| c.name.len())
}

/// The quirks in force: the chip's, or the defaults for an unknown chip.
pub fn quirks_of(chip: Option<&Chip>) -> &'static [Quirk] {
    chip.map_or(UNKNOWN_CHIP_QUIRKS, |c| c.quirks)
}

/// The byte alignment of I/O surfaces under `quirks`: at least [`MIN_SURFACE_ALIGNMENT`].
pub fn surface_alignment(quirks: &[Quirk]) -> usize {
    quirks
        .iter()
        .filter_map(|q| match q {
            Quirk::SurfaceAlignment(bytes) => Some(*bytes),
            _ => None,
        })
        .fold(MIN_SURFACE_ALIGNMENT, usize::max)
}

/// Whether a conv of `channels` channels is expected to compile under `quirks`.
pub fn accepts_channels(quirks: &[Quirk], channels: usize) -> bool {
    quirks.iter().all(|q| match q {
        Quirk::OnlyChannels(counts) => counts.contains(&channels),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brand_strings_name_the_longest_matching_chip() {
        assert_eq!(identify("Apple M4").map(|c| c.name), Some("M4"));
        assert_eq!(identify("Apple M4 Pro").map(|c| c.name), Some("M4 Pro"));
        assert_eq!(
            identify("  Apple M3 Ultra ").map(|c| c.name),
            Some("M3 Ultra")
        );
        assert_eq!(
            identify("Apple M2 Max (Virtual)").map(|c| c.name),
            Some("M2 Max")
        );
        // "M10" must not be taken for "M1".
        assert_eq!(identify("Apple M10"), None);
        assert_eq!(identify("Intel(R) Core(TM) i9"), None);
        assert_eq!(identify("Apple A17 Pro"), None);
    }

    #[test]
    fn every_chip_is_listed_once() {
        for (i, a) in CHIPS.iter().enumerate() {
            assert!(
                CHIPS[i + 1..].iter().all(|b| b.name != a.name),
                "{} is listed twice",
                a.name
            );
            assert_eq!(identify(&format!("Apple {}", a.name)), Some(a));
        }
    }

    #[test]
    fn rated_figures_are_converted_to_fp16_flops() {
        let m4 = identify("Apple M4").unwrap().rated.unwrap();
        assert_eq!(m4.fp16_flops(), 19e12);
        let m2 = identify("Apple M2").unwrap().rated.unwrap();
        assert_eq!(m2.fp16_flops(), 15.8e12);
        assert_eq!(identify("Apple M5").unwrap().rated, None);
    }

    #[test]
    fn the_table_holds_the_known_quirks() {
        let m1 = quirks_of(identify("Apple M1 Max"));
        assert!(m1.contains(&Quirk::Ios16Dialect));
        assert!(m1.contains(&Quirk::PerMatrixWeightBlobs));
        let m3_pro = quirks_of(identify("Apple M3 Pro"));
        assert!(accepts_channels(m3_pro, 512));
        assert!(!accepts_channels(m3_pro, 768));
        assert!(accepts_channels(quirks_of(identify("Apple M4")), 768));
        for q in [
            quirks_of(None),
            quirks_of(identify("Apple M4")),
            quirks_of(identify("Apple M5")),
        ] {
            assert!(q.contains(&Quirk::SpatialMultipleOf(16)));
        }
    }

    #[test]
    fn surfaces_are_aligned_to_at_least_128_bytes() {
        assert_eq!(surface_alignment(&[]), 128);
        assert_eq!(surface_alignment(&[Quirk::SurfaceAlignment(64)]), 128);
        assert_eq!(surface_alignment(&[Quirk::SurfaceAlignment(4096)]), 4096);
        assert_eq!(surface_alignment(quirks_of(identify("Apple M5 Max"))), 128);
    }

    #[test]
    fn quirks_describe_themselves() {
        assert_eq!(
            Quirk::OnlyChannels(&[512]).to_string(),
            "compiles convs of only 512 channels"
        );
        assert_eq!(
            Quirk::SpatialMultipleOf(16).to_string(),
            "needs a spatial width that is a multiple of 16"
        );
        assert!(Quirk::SurfaceAlignment(128).source().contains("M5"));
    }
}
