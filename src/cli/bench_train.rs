//! `anetrain bench train` and `anetrain bench weights`: the flags of the training benchmarks
//! (measured in `anetrain_train::bench`), and their reports printed.

use anetrain_device::NumericMode;
use anetrain_model::ModelConfig;
use anetrain_train::bench::train::TrainBench;
use anetrain_train::bench::weights::WeightsBench;
use anyhow::anyhow;

pub fn bench_train(
    config: &str,
    steps: u64,
    warmup: u64,
    accum: u32,
    precision: &str,
    threads: usize,
) -> anyhow::Result<()> {
    let bench = TrainBench {
        config: ModelConfig::named(config)?,
        steps,
        warmup,
        accum,
        mode: precision.parse::<NumericMode>().map_err(|e| anyhow!(e))?,
        threads,
    };
    println!("{}", bench.describe());
    println!("{}", bench.run()?);
    Ok(())
}

/// What `bench weights` runs.
#[derive(clap::Args, Debug)]
pub struct WeightsArgs {
    #[arg(long, default_value = "tiny")]
    config: String,
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Windows per update: each update, and so each compile, is paid for by this many
    /// forward and backward passes (the original ANE trainer accumulates 10).
    #[arg(long, default_value_t = 1)]
    accum: u32,
    /// Rounds, each running every strategy once between two frozen-kernel runs (medians are
    /// reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Model a chip's compile/eval latencies on a virtual clock (e.g. m4).
    #[arg(long)]
    simulate: Option<String>,
    /// The delay compensation c (λ = c/lr) of the "double-buffer + DC" row (the training
    /// default).
    #[arg(long, default_value_t = 3.0)]
    compensation: f32,
    #[arg(long, default_value_t = 1)]
    max_staleness: u64,
    /// Peak learning rate (default: the training default).
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Only these rows besides the frozen baseline, comma-separated: recompile,
    /// double-buffer, dc (double-buffer with delay compensation), prediction, dynamic.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

pub fn bench_weights(args: &WeightsArgs) -> anyhow::Result<()> {
    let bench = WeightsBench {
        config: ModelConfig::named(&args.config)?,
        steps: args.steps,
        accum: args.accum,
        rounds: args.rounds,
        simulate: args.simulate.clone(),
        compensation: args.compensation,
        max_staleness: args.max_staleness,
        lr: args.lr,
        threads: args.threads,
        only: args.only.clone(),
    };
    println!("{}", bench.describe());
    println!("{}", bench.run()?);
    Ok(())
}
