//! The buffers a micro-step reuses: each layer's tape of forward activations the backward
//! needs, and the inputs and outputs of the backward kernels.

use super::weight_grads::WgradPool;
use crate::config::ModelConfig;
use crate::kernels::{ChannelParts, KernelKind};
use anetrain_device::memory::zeroed_f32;
use std::sync::{Arc, Mutex};

/// A kernel's input or output `[C][S]`: logical tensors concatenated along the channels.
pub(super) struct ChannelTensor {
    pub(super) parts: ChannelParts,
    pub(super) data: Vec<f32>,
    pub(super) s: usize,
}

impl ChannelTensor {
    fn new(parts: ChannelParts, s: usize) -> ChannelTensor {
        let data = vec![0.0; parts.channels() * s];
        ChannelTensor { parts, data, s }
    }

    pub(super) fn part(&self, name: &str) -> &[f32] {
        let r = self.parts.range(name);
        &self.data[r.start * self.s..r.end * self.s]
    }

    pub(super) fn part_mut(&mut self, name: &str) -> &mut [f32] {
        let r = self.parts.range(name);
        &mut self.data[r.start * self.s..r.end * self.s]
    }
}

/// Activations a layer's backward needs, kept from its forward.
pub(super) struct LayerTape {
    pub(super) x: Vec<f32>,
    pub(super) x2: Vec<f32>,
    pub(super) attn: ChannelTensor,
    pub(super) ffn: ChannelTensor,
}

/// The backward's gradients on the residual stream and its kernels' inputs and outputs,
/// overwritten layer by layer.
pub(super) struct BackwardBuffers {
    /// The gradient at a layer's output (then at its input, once its attention is done).
    pub(super) dy: Vec<f32>,
    /// The gradient at a layer's attention output `x2`.
    pub(super) dx: Vec<f32>,
    pub(super) ffn_in: ChannelTensor,
    pub(super) ffn_out: ChannelTensor,
    pub(super) attn1_in: ChannelTensor,
    pub(super) attn1_out: ChannelTensor,
    pub(super) attn2_in: ChannelTensor,
    pub(super) attn2_out: ChannelTensor,
    pub(super) qkv_in: ChannelTensor,
    pub(super) qkv_out: ChannelTensor,
}

/// Preallocated buffers of a micro-step.
pub struct StepBuffers {
    pub(super) config: ModelConfig,
    pub(super) tapes: Vec<LayerTape>,
    pub(super) x: Vec<f32>,
    pub(super) x_final: Vec<f32>,
    pub(super) logits: Vec<f32>,
    pub(super) dlogits: Vec<f32>,
    pub(super) back: BackwardBuffers,
    /// Buffers for copies of weight-gradient inputs, reused from step to step.
    pub(super) spare: Mutex<Vec<Vec<f32>>>,
    /// The weight-gradient helper's thread pool, built for a thread count on first use.
    pub(super) wgrad_pool: Option<Arc<WgradPool>>,
}

impl StepBuffers {
    pub fn new(config: &ModelConfig) -> StepBuffers {
        let s = config.seq_len;
        let (d, v) = (config.dim, config.vocab);
        let tensor = |kind: KernelKind, input: bool| {
            let (i, o) = kind.layout(config);
            ChannelTensor::new(if input { i } else { o }, s)
        };
        StepBuffers {
            config: config.clone(),
            tapes: (0..config.n_layers)
                .map(|_| LayerTape {
                    x: vec![0.0; d * s],
                    x2: vec![0.0; d * s],
                    attn: tensor(KernelKind::FwdAttn, false),
                    ffn: tensor(KernelKind::FwdFfn, false),
                })
                .collect(),
            x: vec![0.0; d * s],
            x_final: vec![0.0; d * s],
            logits: zeroed_f32(v * s),
            dlogits: zeroed_f32(v * s),
            back: BackwardBuffers {
                dy: vec![0.0; d * s],
                dx: vec![0.0; d * s],
                ffn_in: tensor(KernelKind::BwdFfn, true),
                ffn_out: tensor(KernelKind::BwdFfn, false),
                attn1_in: tensor(KernelKind::BwdAttn1, true),
                attn1_out: tensor(KernelKind::BwdAttn1, false),
                attn2_in: tensor(KernelKind::BwdAttn2, true),
                attn2_out: tensor(KernelKind::BwdAttn2, false),
                qkv_in: tensor(KernelKind::BwdQkv, true),
                qkv_out: tensor(KernelKind::BwdQkv, false),
            },
            spare: Mutex::default(),
            wgrad_pool: None,
        }
    }

    /// The helper's pool for `threads` threads (none if it cannot be built: the helper then
    /// runs on the global pool).
    pub(super) fn wgrad_pool(&mut self, threads: usize) -> Option<Arc<WgradPool>> {
        if self
            .wgrad_pool
            .as_ref()
            .is_none_or(|p| p.threads != threads)
        {
            self.wgrad_pool = WgradPool::new(threads).map(Arc::new);
        }
        self.wgrad_pool.clone()
    }
}
