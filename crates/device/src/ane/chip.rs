//! What differs between Apple chips, as data: one table of the chips whose Neural Engine is
//! known, with Apple's rated throughput and the rules of each chip beyond the common ones.
//!
//! Sources (see `shared/reference/peers.md`): rated figures from Apple as collected by
//! hollance/neural-engine; the rules and their sources are in [`super::rules`].

use super::rules::{self, ChipRule, ChipRules};
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
    /// The chip's rules beyond (or in place of) [`rules::COMMON`].
    pub rules: &'static [ChipRule],
}

const fn chip(
    name: &'static str,
    ane_subtype: &'static str,
    ane_cores: u32,
    rated: Option<Rated>,
    rules: &'static [ChipRule],
) -> Chip {
    Chip {
        name,
        ane_subtype,
        ane_cores,
        rated,
        rules,
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
    chip("M1", "h13", 16, fp16(11.0), rules::M1),
    chip("M1 Pro", "h13", 16, fp16(11.0), rules::M1),
    chip("M1 Max", "h13", 16, fp16(11.0), rules::M1),
    chip("M1 Ultra", "h13", 32, fp16(22.0), rules::M1),
    chip("M2", "h14", 16, fp16(15.8), &[]),
    chip("M2 Pro", "h14", 16, fp16(15.8), &[]),
    chip("M2 Max", "h14", 16, fp16(15.8), &[]),
    chip("M2 Ultra", "h14", 32, fp16(31.6), &[]),
    chip("M3", "h15", 16, fp16(18.0), &[]),
    chip("M3 Pro", "h15", 16, fp16(18.0), rules::M3_512),
    chip("M3 Max", "h15", 16, fp16(18.0), &[]),
    chip("M3 Ultra", "h15", 32, None, rules::M3_512),
    chip("M4", "h16", 16, int8(38.0), rules::M4),
    chip("M4 Pro", "h16", 16, int8(38.0), &[]),
    chip("M4 Max", "h16", 16, int8(38.0), rules::M4_MAX),
    chip("M5", "h16", 16, None, rules::M5),
    chip("M5 Pro", "h17", 16, None, rules::M5),
    chip("M5 Max", "h17", 16, None, rules::M5),
];

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

/// The rules in force on `chip`; on a chip missing from the table (`None`), the common ones.
pub fn rules_of(chip: Option<&Chip>) -> ChipRules {
    match chip {
        Some(c) => ChipRules::new(c.name, c.rules),
        None => ChipRules::new("unknown chip", &[]),
    }
}

/// The chip of the table called `name`, in any case, with `-` or `_` for spaces: `m4`,
/// `M4 Pro`, `m3-max`. `m1` … `m5` name the base chip of each generation.
pub fn by_name(name: &str) -> Option<&'static Chip> {
    let name = name.trim().replace(['-', '_'], " ");
    CHIPS.iter().find(|c| c.name.eq_ignore_ascii_case(&name))
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
    fn the_table_holds_each_chips_rules() {
        let m1 = rules_of(identify("Apple M1 Max"));
        assert_eq!(m1.dialect(), Some(anetrain_mil::Dialect::Ios16));
        assert_eq!(rules_of(identify("Apple M2")).dialect(), None);
        let m4 = rules_of(identify("Apple M4"));
        assert_eq!(m4.max_loaded_kernels().map(|(n, _)| n), Some(72));
        // Not measured on the M4 Pro: the strictest figure.
        let m4_pro = rules_of(identify("Apple M4 Pro"));
        assert_eq!(m4_pro.max_loaded_kernels().map(|(n, _)| n), Some(55));
        let unknown = rules_of(None);
        assert_eq!(unknown.chip, "unknown chip");
        assert_eq!(unknown.rules, rules::COMMON);
        assert_eq!(unknown.surface_alignment(), 128);
        assert_eq!(unknown.min_surface_bytes(), 49_152);
    }

    #[test]
    fn chips_are_found_by_name_in_any_case() {
        assert_eq!(by_name("m4").map(|c| c.name), Some("M4"));
        assert_eq!(by_name("M1").map(|c| c.name), Some("M1"));
        assert_eq!(by_name("m3-max").map(|c| c.name), Some("M3 Max"));
        assert_eq!(by_name("M4 pro").map(|c| c.name), Some("M4 Pro"));
        assert_eq!(by_name("m9"), None);
    }
}
