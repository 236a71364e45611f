//! Kernels whose results are known before they run: chains of 1×1 convs, each of which moves
//! every channel to another (a cyclic shift) and multiplies it by a scale.
//!
//! Every kernel the probes and the peak sweep time is checked against the output computed
//! here, so a figure is never reported for a kernel that computed the wrong thing. The values
//! are chosen to be exact in fp16, so the check is tight on any device, ANE included.

use anetrain_mil::blob::{BlobFile, WeightFiles};
use anetrain_mil::{examples, Program};
use std::fmt;

/// The weight every entry of a conv's matrix gets on top of its shift-and-scale entry: it makes
/// the matrix dense (a device cannot take a shortcut through zeros) and adds nothing to the
/// result, because every input column sums to zero. A power of two, so exact in fp16.
const DENSE_WEIGHT: f32 = 1.0 / 256.0;

/// One 1×1 conv: `out[r] = scale · in[(r + shift) mod C]` at every position.
///
/// The shift makes a transposed or misplaced weight matrix visible (it would shift the other
/// way); the scale tells kernels with different weights apart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShiftConv {
    pub shift: usize,
    pub scale: f32,
}

/// A chain of 1×1 convs of `channels` channels at spatial size `spatial`: the MIL program of
/// [`examples::conv_chain`], fp16 I/O, one weight file per conv.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvChain {
    pub channels: usize,
    pub spatial: usize,
    pub convs: Vec<ShiftConv>,
}

impl ConvChain {
    /// The probe's kernel number `k`: one conv whose scale and shift differ from those of its
    /// neighbours, so that evaluating the wrong kernel gives a wrong result. The 32 scales
    /// 1, 1.0625, …, 2.9375 have at most six significant bits, the inputs three, so every
    /// product is exact in fp16, as is every weight (scale + 1/256).
    pub fn numbered(channels: usize, spatial: usize, k: usize) -> ConvChain {
        let conv = ShiftConv {
            shift: 1 + k % channels.saturating_sub(1).max(1),
            scale: 1.0 + (k % 32) as f32 / 16.0,
        };
        ConvChain {
            channels,
            spatial,
            convs: vec![conv],
        }
    }

    /// The peak sweep's chain of `depth` convs: scale 1 (values neither grow nor vanish however
    /// deep), conv `i` shifting by `i + 1` (no two weight files alike).
    pub fn peak(depth: usize, channels: usize, spatial: usize) -> ConvChain {
        let convs = (0..depth)
            .map(|i| ShiftConv {
                shift: (i + 1) % channels.max(1),
                scale: 1.0,
            })
            .collect();
        ConvChain {
            channels,
            spatial,
            convs,
        }
    }

    pub fn depth(&self) -> usize {
        self.convs.len()
    }

    /// Why the chain cannot be built, if it cannot: the inputs pair channels up so that every
    /// column sums to zero, which needs an even channel count.
    pub fn invalid_reason(&self) -> Option<String> {
        if self.channels < 2 || self.channels % 2 != 0 {
            return Some(format!(
                "channels must be even and at least 2, got {}",
                self.channels
            ));
        }
        if self.spatial == 0 {
            return Some("spatial size must be at least 1".into());
        }
        if self.convs.is_empty() {
            return Some("a chain needs at least one conv".into());
        }
        None
    }

    pub fn program(&self) -> Program {
        examples::conv_chain(self.depth(), self.channels, self.spatial)
    }

    /// One fp16 weight file per conv, at the paths [`examples::conv_chain`] refers to.
    pub fn weights(&self) -> WeightFiles {
        let mut files = WeightFiles::new();
        for (i, conv) in self.convs.iter().enumerate() {
            files.insert_blob(
                format!("@model_path/weights/w{i}.bin"),
                &BlobFile::fp16(&self.weight_matrix(*conv)),
            );
        }
        files
    }

    /// The `[out][in]` matrix of one conv (a `[C, C, 1, 1]` conv weight).
    fn weight_matrix(&self, conv: ShiftConv) -> Vec<f32> {
        let c = self.channels;
        let mut w = vec![DENSE_WEIGHT; c * c];
        for out in 0..c {
            w[out * c + (out + conv.shift) % c] += conv.scale;
        }
        w
    }

    /// FLOPs of one evaluation: 2·C_in·C_out·S per conv.
    pub fn flops(&self) -> u64 {
        let (c, s) = (self.channels as u64, self.spatial as u64);
        2 * c * c * s * self.depth() as u64
    }

    /// Bytes of baked fp16 weights.
    pub fn weight_bytes(&self) -> u64 {
        let c = self.channels as u64;
        2 * c * c * self.depth() as u64
    }

    /// The input, `[1, C, 1, S]` channel-first: channel `2m` holds `v`, channel `2m + 1` holds
    /// `-v`, so every column sums to exactly zero. `v` is one of 1/8, 2/8, …, 1, so every value
    /// and every scaled value is exact in fp16; at position `p` it steps every `2^(p mod 10)`
    /// pairs, so that across positions no cyclic shift of the channels (up to 2¹³ of them)
    /// leaves the input unchanged, and a kernel that shifts by the wrong amount is caught.
    pub fn input(&self) -> Vec<f32> {
        let s = self.spatial;
        (0..self.channels * s)
            .map(|i| {
                let (channel, position) = (i / s, i % s);
                let step = ((channel / 2) >> (position % 10)) % 8;
                let magnitude = (step + 1) as f32 / 8.0;
                if channel % 2 == 0 {
                    magnitude
                } else {
                    -magnitude
                }
            })
            .collect()
    }

    /// The output the chain must produce from `input`, one conv at a time.
    pub fn expected(&self, input: &[f32]) -> Vec<f32> {
        let (c, s) = (self.channels, self.spatial);
        let mut x = input.to_vec();
        for conv in &self.convs {
            x = (0..c * s)
                .map(|i| {
                    let (out, position) = (i / s, i % s);
                    conv.scale * x[((out + conv.shift) % c) * s + position]
                })
                .collect();
        }
        x
    }

    /// Allowed error per element, relative to the largest expected magnitude: about one fp16
    /// unit in the last place per conv, for devices that round differently from the CPU, with
    /// a ceiling of eight convs so that a misplaced channel (off by at least 1/8) still shows.
    pub fn tolerance(&self) -> f32 {
        self.depth().min(8) as f32 / 1024.0
    }

    /// Checks an output against [`ConvChain::expected`] of [`ConvChain::input`].
    pub fn check(&self, output: &[f32], expected: &[f32]) -> Result<(), Mismatch> {
        let largest = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let tolerance = self.tolerance() * largest.max(f32::MIN_POSITIVE);
        let within = |(got, want): (&f32, &f32)| (got - want).abs() <= tolerance;
        if output.len() == expected.len() && output.iter().zip(expected).all(within) {
            return Ok(());
        }
        let wrong = output
            .iter()
            .zip(expected)
            .filter(|pair| !within(*pair))
            .count()
            + output.len().abs_diff(expected.len());
        let index = output
            .iter()
            .zip(expected)
            .position(|pair| !within(pair))
            .unwrap_or(output.len().min(expected.len()));
        Err(Mismatch {
            index,
            channel: index / self.spatial.max(1),
            position: index % self.spatial.max(1),
            got: output.get(index).copied(),
            want: expected.get(index).copied(),
            tolerance,
            wrong,
            elements: expected.len(),
        })
    }
}

impl fmt::Display for ConvChain {
    /// `1x1 conv 128->128 sp64, scale 1.125, shift 2` for one conv, `96x conv 512ch sp64` for
    /// a chain (the original benchmarks' wording).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (c, s) = (self.channels, self.spatial);
        match self.convs.as_slice() {
            [conv] => write!(
                f,
                "1x1 conv {c}->{c} sp{s}, scale {}, shift {}",
                conv.scale, conv.shift
            ),
            convs => write!(f, "{}x conv {c}ch sp{s}", convs.len()),
        }
    }
}

/// Where a kernel's output departs from the expected one.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    /// The first wrong element, in `[1, C, 1, S]` order.
    pub index: usize,
    pub channel: usize,
    pub position: usize,
    pub got: Option<f32>,
    pub want: Option<f32>,
    pub tolerance: f32,
    /// How many elements are wrong (missing ones included).
    pub wrong: usize,
    pub elements: usize,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<f32>| v.map_or("nothing".to_string(), |v| v.to_string());
        write!(
            f,
            "{} of {} elements wrong; first at channel {}, position {}: got {}, want {} (tolerance ±{})",
            self.wrong,
            self.elements,
            self.channel,
            self.position,
            show(self.got),
            show(self.want),
            self.tolerance
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_sum_to_zero_in_every_column() {
        let chain = ConvChain::numbered(16, 5, 3);
        let x = chain.input();
        for position in 0..5 {
            let sum: f32 = (0..16).map(|ch| x[ch * 5 + position]).sum();
            assert_eq!(sum, 0.0);
        }
    }

    #[test]
    fn a_chain_composes_its_shifts_and_scales() {
        let chain = ConvChain {
            channels: 4,
            spatial: 1,
            convs: vec![
                ShiftConv {
                    shift: 1,
                    scale: 2.0,
                },
                ShiftConv {
                    shift: 2,
                    scale: 0.5,
                },
            ],
        };
        // Shifts add up to 3: out[r] = in[(r + 3) mod 4].
        assert_eq!(
            chain.expected(&[1.0, 2.0, 3.0, 4.0]),
            vec![4.0, 1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn the_dense_term_cancels_against_zero_sum_inputs() {
        let chain = ConvChain::numbered(8, 3, 5);
        let w = chain.weight_matrix(chain.convs[0]);
        let x = chain.input();
        let direct: Vec<f32> = (0..8 * 3)
            .map(|i| {
                let (out, p) = (i / 3, i % 3);
                (0..8).map(|col| w[out * 8 + col] * x[col * 3 + p]).sum()
            })
            .collect();
        assert_eq!(direct, chain.expected(&x));
    }

    #[test]
    fn a_misplaced_channel_is_caught() {
        let chain = ConvChain::numbered(8, 4, 1);
        let x = chain.input();
        let want = chain.expected(&x);
        let mut got = want.clone();
        got.swap(0, 4);
        let mismatch = chain.check(&got, &want).unwrap_err();
        assert_eq!((mismatch.channel, mismatch.position), (0, 0));
        assert_eq!(mismatch.wrong, 2);
        assert!(chain.check(&want, &want).is_ok());
    }

    #[test]
    fn every_wrong_shift_is_caught() {
        for (channels, spatial) in [(16, 8), (128, 64), (512, 12)] {
            let chain = ConvChain::numbered(channels, spatial, 4);
            let x = chain.input();
            let want = chain.expected(&x);
            for shift in (0..channels).filter(|&k| k != chain.convs[0].shift) {
                let wrong = ConvChain {
                    convs: vec![ShiftConv {
                        shift,
                        ..chain.convs[0]
                    }],
                    ..chain.clone()
                };
                assert!(
                    chain.check(&wrong.expected(&x), &want).is_err(),
                    "shift {shift} of {channels} channels passes"
                );
            }
        }
    }

    #[test]
    fn nan_is_wrong() {
        let chain = ConvChain::numbered(4, 2, 0);
        let want = chain.expected(&chain.input());
        let mut got = want.clone();
        got[3] = f32::NAN;
        assert_eq!(chain.check(&got, &want).unwrap_err().index, 3);
    }
}
