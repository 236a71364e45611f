//! What the M4 latency model charges for compiling a model's kernel set: the figure the
//! double-buffer's targets are stated against (a Stories110M set in about 3.4 s).

use anetrain_device::decorate::ChipProfile;
use anetrain_mil::{cost, DType};
use anetrain_model::kernels::{generate_baked, KernelKind};
use anetrain_model::ModelConfig;
use std::time::Duration;

/// The modelled compile time of one kernel set of `config` with programs in `dtype`.
fn set_compile(config: &ModelConfig, dtype: DType) -> Duration {
    let m4 = ChipProfile::m4();
    KernelKind::WEIGHTED
        .iter()
        .map(|&kind| {
            let kernel = generate_baked(kind, config, dtype).expect("the kernel generates");
            let main = kernel.program.main().expect("a main function");
            m4.compile_time(cost::weight_values(main))
        })
        .sum::<Duration>()
        * config.n_layers as u32
}

#[test]
fn a_stories110m_set_takes_the_m4_its_measured_compile_time_in_either_precision() {
    let config = ModelConfig::named("stories110m").unwrap();
    let fp16 = set_compile(&config, DType::Fp16);
    // 60 kernels (12 layers × 5 weight-bearing kinds; the weightless one is compiled once):
    // ~3.4 s for the trainable weights, plus their constant tables (RoPE, causal mask).
    assert!(
        (3.35..3.6).contains(&fp16.as_secs_f64()),
        "a Stories110M set under the m4 model: {fp16:?}"
    );
    assert_eq!(set_compile(&config, DType::Fp32), fp16);
}
