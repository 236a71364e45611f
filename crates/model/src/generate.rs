//! Text generation on the host: one token at a time with a key/value cache, the way llama2.c's
//! `run.c` does it, and sampling with temperature and top-p.

use crate::params::{LayerTensor, Params};

/// A decoder that advances one position per call.
pub struct Decoder<'a> {
    params: &'a Params,
    /// Per layer: keys and values of every position so far, `[pos][kv_dim]`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    pos: usize,
}

fn matvec(w: &[f32], x: &[f32], out: &mut [f32]) {
    let n = x.len();
    for (o, row) in out.iter_mut().zip(w.chunks_exact(n)) {
        *o = row.iter().zip(x).map(|(a, b)| a * b).sum();
    }
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * r * g).collect()
}

/// Rotates pairs (2i, 2i+1) of every head by θ = pos · theta^(−2i/head_dim).
fn rope(x: &mut [f32], head_dim: usize, pos: usize, theta: f32) {
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..head_dim / 2 {
            let freq = (theta as f64).powf(-2.0 * i as f64 / head_dim as f64);
            let (sin, cos) = (pos as f64 * freq).sin_cos();
            let (a, b) = (head[2 * i] as f64, head[2 * i + 1] as f64);
            head[2 * i] = (a * cos - b * sin) as f32;
            head[2 * i + 1] = (a * sin + b * cos) as f32;
        }
    }
}

impl<'a> Decoder<'a> {
    pub fn new(params: &'a Params) -> Decoder<'a> {
        let n = params.layout.config.n_layers;
        Decoder {
            params,
            keys: vec![Vec::new(); n],
            values: vec![Vec::new(); n],
            pos: 0,
        }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    /// Feeds `token` at the next position; returns the logits for the position after it.
    pub fn step(&mut self, token: u32) -> Vec<f32> {
        let p = self.params;
        let c = &p.layout.config;
        let (d, hd, nh) = (c.dim, c.head_dim, c.n_heads);
        let (q_dim, kv_dim, ratio) = (c.q_dim(), c.kv_dim(), c.gqa_ratio());
        let embed = p.get(p.layout.embed());
        let mut x = embed[token as usize * d..(token as usize + 1) * d].to_vec();
        for l in 0..c.n_layers {
            let xn = rmsnorm(&x, p.layer(l, LayerTensor::RmsAtt), c.norm_eps);
            let mut q = vec![0.0; q_dim];
            let mut k = vec![0.0; kv_dim];
            let mut v = vec![0.0; kv_dim];
            matvec(p.layer(l, LayerTensor::Wq), &xn, &mut q);
            matvec(p.layer(l, LayerTensor::Wk), &xn, &mut k);
            matvec(p.layer(l, LayerTensor::Wv), &xn, &mut v);
            if c.qk_norm {
                for (x, w) in [(&mut q, LayerTensor::QNorm), (&mut k, LayerTensor::KNorm)] {
                    for head in x.chunks_mut(hd) {
                        let normed = rmsnorm(head, p.layer(l, w), c.norm_eps);
                        head.copy_from_slice(&normed);
                    }
                }
            }
            rope(&mut q, hd, self.pos, c.rope_theta);
            rope(&mut k, hd, self.pos, c.rope_theta);
            self.keys[l].extend_from_slice(&k);
            self.values[l].extend_from_slice(&v);
            let n = self.pos + 1;
            let mut att = vec![0.0f32; q_dim];
            let scale = 1.0 / (hd as f32).sqrt();
            for h in 0..nh {
                let kvh = h / ratio;
                let qh = &q[h * hd..(h + 1) * hd];
                let mut scores: Vec<f32> = (0..n)
                    .map(|t| {
                        let kt = &self.keys[l][t * kv_dim + kvh * hd..t * kv_dim + (kvh + 1) * hd];
                        qh.iter().zip(kt).map(|(a, b)| a * b).sum::<f32>() * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let out = &mut att[h * hd..(h + 1) * hd];
                for (t, s) in scores.iter().enumerate() {
                    let vt = &self.values[l][t * kv_dim + kvh * hd..t * kv_dim + (kvh + 1) * hd];
                    for (o, vv) in out.iter_mut().zip(vt) {
                        *o += s / sum * vv;
                    }
                }
            }
            let mut o = vec![0.0; d];
            matvec(p.layer(l, LayerTensor::Wo), &att, &mut o);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let xn = rmsnorm(&x, p.layer(l, LayerTensor::RmsFfn), c.norm_eps);
            let mut h1 = vec![0.0; c.hidden];
            let mut h3 = vec![0.0; c.hidden];
            matvec(p.layer(l, LayerTensor::W1), &xn, &mut h1);
            matvec(p.layer(l, LayerTensor::W3), &xn, &mut h3);
            let gate: Vec<f32> = h1
                .iter()
                .zip(&h3)
                .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
                .collect();
            let mut f = vec![0.0; d];
            matvec(p.layer(l, LayerTensor::W2), &gate, &mut f);
            x.iter_mut().zip(&f).for_each(|(a, b)| *a += b);
        }
        let xf = rmsnorm(&x, p.get(p.layout.rms_final()), c.norm_eps);
        let mut logits = vec![0.0; c.vocab];
        matvec(p.get(p.layout.classifier()), &xf, &mut logits);
        self.pos += 1;
        logits
    }
}

/// Sampling settings. Temperature 0 means greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampler {
    pub temperature: f32,
    pub top_p: f32,
    /// Only ids below this are sampled (see [`Sampler::within`]).
    limit: Option<usize>,
    state: u64,
}

impl Sampler {
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Sampler {
        Sampler {
            temperature,
            top_p,
            limit: None,
            state: seed ^ 0x2545_F491_4F6C_DD1D,
        }
    }

    /// Samples only ids below `limit`: a model's vocabulary may be larger than its tokenizer's
    /// (stories110m's 32 000 ids trained with the 1024-token tokenizer of the embedded corpus),
    /// and an id past the tokenizer's cannot be turned into text.
    pub fn within(mut self, limit: usize) -> Sampler {
        self.limit = Some(limit);
        self
    }

    /// A uniform number in [0, 1) (xorshift64*).
    fn uniform(&mut self) -> f32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        ((self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32) / (1u64 << 24) as f32
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let logits = &logits[..self.limit.map_or(logits.len(), |l| l.min(logits.len()))];
        if logits.is_empty() {
            return 0;
        }
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) / self.temperature).exp()))
            .collect();
        let total: f32 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
        // Nucleus: the smallest set of most likely tokens whose mass reaches top_p.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            mass += p.1;
            if mass >= self.top_p {
                keep = i + 1;
                break;
            }
        }
        let kept = &probs[..keep];
        let r = self.uniform() * kept.iter().map(|p| p.1).sum::<f32>();
        let mut acc = 0.0;
        for p in kept {
            acc += p.1;
            if r < acc {
                return p.0;
            }
        }
        kept[kept.len() - 1].0
    }
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// Feeds the prompt, then samples `max_tokens` more, stopping at the context length or after
/// a token of `stop` (the ends of a turn).
pub fn generate(
    params: &Params,
    prompt: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    stop: &[u32],
) -> Vec<u32> {
    let limit = params.layout.config.seq_len;
    let mut dec = Decoder::new(params);
    let mut out = Vec::new();
    let mut logits = Vec::new();
    for &t in prompt.iter().take(limit) {
        logits = dec.step(t);
    }
    while out.len() < max_tokens && dec.position() < limit {
        let next = if logits.is_empty() {
            0
        } else {
            sampler.sample(&logits)
        };
        out.push(next);
        if stop.contains(&next) {
            break;
        }
        if dec.position() < limit {
            logits = dec.step(next);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(sampler: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[sampler.sample(logits) as usize] += 1;
        }
        counts
    }

    #[test]
    fn temperature_zero_is_greedy() {
        let mut s = Sampler::new(0.0, 0.9, 1);
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9]), 1);
    }

    #[test]
    fn sampling_at_temperature_one_follows_the_softmax() {
        let logits = [0.0f32, 1.0, 2.0, -1.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let n = 40_000;
        let counts = draws(&mut Sampler::new(1.0, 1.0, 7), &logits, n);
        for (i, &l) in logits.iter().enumerate() {
            let expected = (l as f64).exp() / z;
            let seen = counts[i] as f64 / n as f64;
            // Four standard deviations of a binomial share over n draws.
            let tolerance = 4.0 * (expected * (1.0 - expected) / n as f64).sqrt();
            assert!(
                (seen - expected).abs() < tolerance,
                "id {i}: drawn {seen:.4} of the time, softmax {expected:.4}"
            );
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_the_mass() {
        // Probabilities ≈ 0.64, 0.24, 0.09, 0.03: top-p 0.5 keeps the first alone, 0.8 the first
        // two.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let only_first = draws(&mut Sampler::new(1.0, 0.5, 3), &logits, 2000);
        assert_eq!(only_first, vec![2000, 0, 0, 0]);
        let two = draws(&mut Sampler::new(1.0, 0.8, 3), &logits, 2000);
        assert!(two[0] > 0 && two[1] > 0, "{two:?}");
        assert_eq!(two[2] + two[3], 0, "{two:?}");
    }

    #[test]
    fn within_never_samples_an_id_past_the_limit() {
        // The ids past the limit hold most of the mass, and the largest logit.
        let logits = [0.0f32, 0.5, 5.0, 6.0];
        let counts = draws(&mut Sampler::new(1.0, 1.0, 5).within(2), &logits, 5000);
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        assert!(counts[0] > 0 && counts[1] > counts[0], "{counts:?}");
        assert_eq!(Sampler::new(0.0, 1.0, 5).within(2).sample(&logits), 1);
        // A limit past the logits changes nothing.
        assert_eq!(Sampler::new(0.0, 1.0, 5).within(10).sample(&logits), 3);
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(0.9, 0.95, seed);
            (0..100).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }

    /// Greedy generation is the argmax chain of the decoder; a stop token ends it after that
    /// token, however many were asked for.
    #[test]
    fn generation_stops_after_the_stop_token() {
        use crate::init::init_params;
        use crate::{ModelConfig, ParamLayout};
        let c = ModelConfig {
            dim: 16,
            hidden: 32,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 2,
            head_dim: 8,
            vocab: 23,
            seq_len: 12,
            ..ModelConfig::tiny()
        };
        let params = init_params(std::sync::Arc::new(ParamLayout::new(&c)), 5);
        let greedy =
            |stop: &[u32]| generate(&params, &[1, 4], 8, &mut Sampler::new(0.0, 1.0, 0), stop);
        let all = greedy(&[]);
        assert_eq!(all.len(), 8);
        let mut dec = Decoder::new(&params);
        dec.step(1);
        let mut logits = dec.step(4);
        for &t in &all {
            assert_eq!(t, argmax(&logits));
            logits = dec.step(t);
        }
        let stop = all[2];
        let first = all.iter().position(|&t| t == stop).unwrap();
        assert_eq!(greedy(&[99, stop]), all[..=first]);
    }
}
