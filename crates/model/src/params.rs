//! Parameters in one flat fp32 buffer with named views, so that gradients, optimizer moments,
//! clipping and checkpoints treat the whole model as one array. Matrices are `[out][in]`,
//! row-major, as llama2.c stores them.

use crate::config::ModelConfig;
use std::ops::Range;
use std::sync::Arc;

/// The tensors of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerTensor {
    /// RMSNorm weight before attention, `[D]`.
    RmsAtt,
    /// `[Q_DIM][D]`
    Wq,
    /// `[KV_DIM][D]`
    Wk,
    /// `[KV_DIM][D]`
    Wv,
    /// `[D][Q_DIM]`
    Wo,
    /// RMSNorm weight before the FFN, `[D]`.
    RmsFfn,
    /// Gate projection, `[H][D]`.
    W1,
    /// Down projection, `[D][H]`.
    W2,
    /// Up projection, `[H][D]`.
    W3,
    /// Qwen3's per-head RMSNorm weight of q, `[head_dim]` (only with `qk_norm`).
    QNorm,
    /// Qwen3's per-head RMSNorm weight of k, `[head_dim]` (only with `qk_norm`).
    KNorm,
}

impl LayerTensor {
    /// The tensors every layer has, in layout order.
    pub const ALL: [LayerTensor; 9] = [
        LayerTensor::RmsAtt,
        LayerTensor::Wq,
        LayerTensor::Wk,
        LayerTensor::Wv,
        LayerTensor::Wo,
        LayerTensor::RmsFfn,
        LayerTensor::W1,
        LayerTensor::W2,
        LayerTensor::W3,
    ];

    /// The tensors of a layer of `c`, in layout order: [`LayerTensor::ALL`], then the q/k
    /// norms with `qk_norm`.
    pub fn of(c: &ModelConfig) -> &'static [LayerTensor] {
        const WITH_QK_NORM: [LayerTensor; 11] = [
            LayerTensor::RmsAtt,
            LayerTensor::Wq,
            LayerTensor::Wk,
            LayerTensor::Wv,
            LayerTensor::Wo,
            LayerTensor::RmsFfn,
            LayerTensor::W1,
            LayerTensor::W2,
            LayerTensor::W3,
            LayerTensor::QNorm,
            LayerTensor::KNorm,
        ];
        if c.qk_norm {
            &WITH_QK_NORM
        } else {
            &LayerTensor::ALL
        }
    }

    pub fn short_name(self) -> &'static str {
        match self {
            LayerTensor::RmsAtt => "rms_att",
            LayerTensor::Wq => "wq",
            LayerTensor::Wk => "wk",
            LayerTensor::Wv => "wv",
            LayerTensor::Wo => "wo",
            LayerTensor::RmsFfn => "rms_ffn",
            LayerTensor::W1 => "w1",
            LayerTensor::W2 => "w2",
            LayerTensor::W3 => "w3",
            LayerTensor::QNorm => "q_norm",
            LayerTensor::KNorm => "k_norm",
        }
    }

    /// [rows, cols] of this tensor under a config (a vector is [1, n]).
    pub fn shape(self, c: &ModelConfig) -> [usize; 2] {
        match self {
            LayerTensor::RmsAtt | LayerTensor::RmsFfn => [1, c.dim],
            LayerTensor::Wq => [c.q_dim(), c.dim],
            LayerTensor::Wk | LayerTensor::Wv => [c.kv_dim(), c.dim],
            LayerTensor::Wo => [c.dim, c.q_dim()],
            LayerTensor::W1 | LayerTensor::W3 => [c.hidden, c.dim],
            LayerTensor::W2 => [c.dim, c.hidden],
            LayerTensor::QNorm | LayerTensor::KNorm => [1, c.head_dim],
        }
    }

    pub fn is_matrix(self) -> bool {
        !self.is_norm()
    }

    /// A norm's weight: a vector, initialised to ones and not decayed.
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            LayerTensor::RmsAtt | LayerTensor::RmsFfn | LayerTensor::QNorm | LayerTensor::KNorm
        )
    }
}

/// One named tensor inside the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// `embed`, `layers.3.wq`, `rms_final`, `classifier`.
    pub name: String,
    /// [rows, cols]; vectors are [1, n].
    pub shape: [usize; 2],
    pub range: Range<usize>,
    /// Matrices get weight decay; norms do not.
    pub decay: bool,
}

/// Where every tensor of a model lives in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    pub config: ModelConfig,
    pub tensors: Vec<TensorSpec>,
    pub len: usize,
}

impl ParamLayout {
    /// Order: embed, then per layer the tensors in [`LayerTensor::of`] order, then rms_final,
    /// then the classifier when it is not tied.
    pub fn new(config: &ModelConfig) -> ParamLayout {
        let mut tensors = Vec::new();
        let mut at = 0;
        let mut push = |name: String, shape: [usize; 2], decay: bool| {
            let n = shape[0] * shape[1];
            tensors.push(TensorSpec {
                name,
                shape,
                range: at..at + n,
                decay,
            });
            at += n;
        };
        push("embed".into(), [config.vocab, config.dim], true);
        for l in 0..config.n_layers {
            for &t in LayerTensor::of(config) {
                push(
                    format!("layers.{l}.{}", t.short_name()),
                    t.shape(config),
                    t.is_matrix(),
                );
            }
        }
        push("rms_final".into(), [1, config.dim], false);
        if !config.tied_embedding {
            push("classifier".into(), [config.vocab, config.dim], true);
        }
        ParamLayout {
            config: config.clone(),
            tensors,
            len: at,
        }
    }

    pub fn find(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn index(&self, name: &str) -> &TensorSpec {
        self.find(name)
            .unwrap_or_else(|| panic!("the layout has no tensor `{name}`"))
    }

    pub fn embed(&self) -> Range<usize> {
        self.tensors[0].range.clone()
    }

    pub fn layer(&self, l: usize, t: LayerTensor) -> Range<usize> {
        let tensors = LayerTensor::of(&self.config);
        let at = tensors
            .iter()
            .position(|&x| x == t)
            .unwrap_or_else(|| panic!("model `{}` has no {}", self.config.name, t.short_name()));
        let i = 1 + l * tensors.len() + at;
        debug_assert_eq!(
            self.tensors[i].name,
            format!("layers.{l}.{}", t.short_name())
        );
        self.tensors[i].range.clone()
    }

    pub fn rms_final(&self) -> Range<usize> {
        self.index("rms_final").range.clone()
    }

    /// The classifier matrix `[V][D]`: the embedding when tied.
    pub fn classifier(&self) -> Range<usize> {
        match self.find("classifier") {
            Some(t) => t.range.clone(),
            None => self.embed(),
        }
    }
}

/// A model's parameters (or anything shaped like them: gradients, optimizer moments).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub layout: Arc<ParamLayout>,
    pub data: Vec<f32>,
}

/// The flat parameter vector, so that weight files can view it (`MatrixFile`).
impl AsRef<[f32]> for Params {
    fn as_ref(&self) -> &[f32] {
        &self.data
    }
}

impl Params {
    pub fn zeros(layout: Arc<ParamLayout>) -> Params {
        let data = anetrain_device::memory::zeroed_f32(layout.len);
        Params { layout, data }
    }

    pub fn get(&self, range: Range<usize>) -> &[f32] {
        &self.data[range]
    }

    pub fn get_mut(&mut self, range: Range<usize>) -> &mut [f32] {
        &mut self.data[range]
    }

    pub fn layer(&self, l: usize, t: LayerTensor) -> &[f32] {
        &self.data[self.layout.layer(l, t)]
    }

    pub fn layer_mut(&mut self, l: usize, t: LayerTensor) -> &mut [f32] {
        let r = self.layout.layer(l, t);
        &mut self.data[r]
    }
}
