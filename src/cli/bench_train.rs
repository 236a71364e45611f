//! `anetrain bench train` and `anetrain bench weights`: the flags of the training benchmarks
//! (measured in `anetrain_train::bench`), and their reports printed.

use anetrain_device::host_math::GemmLibrary;
use anetrain_device::NumericMode;
use anetrain_model::ModelConfig;
use anetrain_train::bench::train::{TrainBench, TrainBenchReport};
use anetrain_train::bench::weights::WeightsBench;
use anyhow::anyhow;

/// What `bench train` runs.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// A model preset or TOML file.
    #[arg(long, default_value = "stories15m")]
    config: String,
    /// Measured steps.
    #[arg(long, default_value_t = 6)]
    steps: u64,
    /// Steps run first and not measured: they pay one-time costs (first touch of the
    /// optimizer moments and of the buffers).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Windows per optimizer update (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accum: u32,
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "fp16"])]
    precision: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Libraries of the host's matrix products to compare, comma-separated (faer, cblas).
    /// Default: every one this build has.
    #[arg(long, value_delimiter = ',')]
    gemm: Vec<GemmLibrary>,
    /// Rounds, each running every library once, alternating so that machine noise hits
    /// all alike (medians are compared).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

pub fn bench_train(args: &TrainArgs) -> anyhow::Result<()> {
    let mut libraries = args.gemm.clone();
    if libraries.is_empty() {
        libraries.push(GemmLibrary::Faer);
        if GemmLibrary::CBLAS_BUILT {
            libraries.push(GemmLibrary::Cblas);
        }
    }
    for library in &libraries {
        library
            .available()
            .map_err(|e| anyhow!("--gemm {}: {e}", library.name()))?;
    }
    let bench = |gemm| -> anyhow::Result<TrainBench> {
        Ok(TrainBench {
            config: ModelConfig::named(&args.config)?,
            steps: args.steps,
            warmup: args.warmup,
            accum: args.accum,
            mode: args
                .precision
                .parse::<NumericMode>()
                .map_err(|e| anyhow!(e))?,
            threads: args.threads,
            gemm,
        })
    };
    let mut reports: Vec<Vec<TrainBenchReport>> = vec![Vec::new(); libraries.len()];
    for round in 0..args.rounds.max(1) {
        for (i, &library) in libraries.iter().enumerate() {
            let bench = bench(library)?;
            if args.rounds > 1 {
                println!("round {} of {}", round + 1, args.rounds);
            }
            println!("{}", bench.describe());
            let report = bench.run()?;
            println!("{report}\n");
            reports[i].push(report);
        }
    }
    if libraries.len() > 1 {
        println!("{}", compare(&libraries, &reports));
    }
    Ok(())
}

/// The libraries side by side: each figure the median over the rounds, and each library's
/// step time against the first's.
fn compare(libraries: &[GemmLibrary], reports: &[Vec<TrainBenchReport>]) -> String {
    let median = |runs: &[TrainBenchReport], f: fn(&TrainBenchReport) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let first = median(&reports[0], |r| r.compute_ms());
    let mut out = format!(
        "host products side by side (medians of {} round(s), excluding compile):\n\
         {:<20} {:>9} {:>10} {:>14} {:>9} {:>10}\n",
        reports[0].len(),
        "library",
        "ms/step",
        "host math",
        "weight grads",
        "tokens/s",
        "vs first"
    );
    for (library, runs) in libraries.iter().zip(reports) {
        let step = median(runs, |r| r.compute_ms());
        out += &format!(
            "{:<20} {:>9.1} {:>10.1} {:>14.1} {:>9.0} {:>9.2}x\n",
            library.to_string(),
            step,
            median(runs, |r| r.host_ms),
            median(runs, |r| r.weight_grads_ms),
            median(runs, |r| r.tokens_per_s),
            first / step
        );
    }
    out.trim_end().to_string()
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
