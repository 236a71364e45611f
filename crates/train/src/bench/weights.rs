//! `bench weights`: the weight-delivery strategies side by side on the same data and seed,
//! each round opened and closed by frozen kernels: ms/step, the ratio to frozen kernels,
//! stall, staleness, compiles and the losses.

use super::{measured_run, median_index, Summary, SyntheticWindows};
use crate::data::TrainingWindows;
use crate::delivery::Strategy;
use crate::run::data::load_data;
use crate::run::RunError;
use crate::trainer::{TrainError, TrainOptions, WindowSource};
use anetrain_device::{CpuDevice, Device, DeviceSpec, NumericMode, OpenDevice};
use anetrain_model::init::init_params;
use anetrain_model::step::{compile_kernel_set, BakedPrograms, KernelSet, WeightSnapshot};
use anetrain_model::{ModelConfig, ParamLayout};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// What to compare.
#[derive(Clone, Debug)]
pub struct WeightsBench {
    pub config: ModelConfig,
    pub steps: u64,
    /// Windows per update: each update, and so each compile, is paid for by this many
    /// forward and backward passes.
    pub accum: u32,
    /// Rounds, each running every strategy once between two frozen-kernel runs.
    pub rounds: usize,
    /// A chip whose compile and eval latencies are modelled on a virtual clock.
    pub simulate: Option<String>,
    /// The delay compensation c of the "double-buffer + DC" row.
    pub compensation: f32,
    pub max_staleness: u64,
    /// Peak learning rate (default: the training default).
    pub lr: Option<f32>,
    pub threads: usize,
    /// Only these rows besides the frozen baseline (their keys); all when empty.
    pub only: Vec<String>,
}

/// One row of the table: a strategy over its runs.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightsRow {
    pub name: String,
    pub strategy: Strategy,
    /// ms/step (wall over steps) of each run, sorted.
    pub ms_per_step: Vec<f64>,
    /// Throughput as a share of the round's frozen runs, median over rounds: by wall time,
    /// and by each run's median step time.
    pub vs_frozen: f64,
    pub vs_frozen_by_median_step: f64,
    // The rest from the run of median time:
    /// Compile stall in % of wall, and after the start-up compile in % of the wall after it.
    pub stall_share: f64,
    pub stall_after_startup_share: f64,
    /// CPU ms per step of the background compiles (Linux).
    pub background_compile_cpu_ms: f64,
    pub mean_lag: f64,
    pub max_lag: u64,
    pub compiles: u64,
    pub final_train_loss: f32,
    pub val_loss: Option<f32>,
}

/// The comparison, as `bench weights` prints it.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightsBenchReport {
    pub rounds: usize,
    /// ms to compile one kernel set from scratch and in a run, and its kernels (real CPU only).
    pub compile_ms: Option<(f64, f64, usize)>,
    pub rows: Vec<WeightsRow>,
    /// How far the frozen run closing a round ran from the one opening it, in percent:
    /// [median, least, greatest], by wall time and by median step.
    pub noise_wall: [f64; 3],
    pub noise_step: [f64; 3],
}

/// One strategy as a row of the bench.
struct Contender {
    key: &'static str,
    name: String,
    strategy: Strategy,
    compensation: f32,
    prediction: bool,
}

impl Contender {
    fn new(key: &'static str, name: &str, strategy: Strategy) -> Contender {
        Contender {
            key,
            name: name.to_string(),
            strategy,
            compensation: 0.0,
            prediction: false,
        }
    }
}

impl WeightsBench {
    fn options(&self) -> TrainOptions {
        TrainOptions {
            steps: self.steps,
            lr: self.lr.unwrap_or(TrainOptions::default().lr),
            accum: self.accum.max(1),
            eval_every: self.steps,
            eval_windows: 32,
            checkpoint_every: 0,
            threads: self.threads,
            ..TrainOptions::default()
        }
    }

    /// The rows asked for (refusing a key there is no row for).
    fn contenders(&self) -> Result<Vec<Contender>, RunError> {
        let (c, k) = (self.compensation, self.max_staleness);
        let mut contenders = vec![
            Contender::new("recompile", "recompile", Strategy::Recompile),
            Contender::new(
                "double-buffer",
                &format!("double-buffer (K={k})"),
                Strategy::DoubleBuffer,
            ),
            Contender {
                compensation: c,
                ..Contender::new(
                    "dc",
                    &format!("double-buffer + DC c={c}"),
                    Strategy::DoubleBuffer,
                )
            },
            Contender {
                prediction: true,
                ..Contender::new(
                    "prediction",
                    "double-buffer + prediction",
                    Strategy::DoubleBuffer,
                )
            },
            Contender::new("dynamic", "dynamic", Strategy::Dynamic),
        ];
        if let Some(unknown) = self
            .only
            .iter()
            .find(|o| !contenders.iter().any(|c| c.key == o.as_str()))
        {
            let keys: Vec<&str> = contenders.iter().map(|c| c.key).collect();
            return Err(RunError::Invalid(format!(
                "--only: no row `{unknown}` (the rows are {})",
                keys.join(", ")
            )));
        }
        contenders.retain(|c| self.only.is_empty() || self.only.iter().any(|o| o == c.key));
        Ok(contenders)
    }

    /// Whether the runs train on the embedded corpus (the model it has a tokenizer for) or
    /// on synthetic tokens.
    fn uses_corpus(&self) -> bool {
        self.config.name == "tiny"
    }

    /// The line that says what is compared.
    pub fn describe(&self) -> String {
        let options = self.options();
        format!(
            "bench weights: {} for {} steps of {} window(s) (seed {}, peak lr {}), data: {}, device: CPU {}{}",
            self.config.name,
            self.steps,
            options.accum,
            options.seed,
            options.lr,
            if self.uses_corpus() {
                "the embedded corpus"
            } else {
                "synthetic tokens"
            },
            NumericMode::Fp32,
            self.simulate.as_deref().map_or(String::new(), |c| format!(
                " behind the {c} latency model [simulated]"
            ))
        )
    }

    pub fn run(&self) -> Result<WeightsBenchReport, RunError> {
        let contenders = self.contenders()?;
        let (config, steps, mode) = (&self.config, self.steps, NumericMode::Fp32);
        let options = self.options();
        let cpu = CpuDevice::new(mode).with_threads(self.threads);
        let base: Arc<dyn Device> = Arc::new(cpu.clone());
        let corpus = if self.uses_corpus() {
            Some(load_data(
                None,
                Default::default(),
                None,
                None,
                config,
                &mut |_| {},
            )?)
        } else {
            None
        };
        let frozen = Contender::new("frozen", "frozen kernels (baseline)", Strategy::Frozen);
        let run_here = |c: &Contender, steps: u64| -> Result<Summary, RunError> {
            let spec = DeviceSpec {
                simulate: self.simulate.clone(),
                ..DeviceSpec::cpu(mode)
            };
            // Each run on the one CPU device: later runs find its arenas and templates ready.
            let OpenDevice { device, clock, .. } = spec.decorate(base.clone())?;
            let options = TrainOptions {
                steps,
                eval_every: steps,
                delay_compensation: c.compensation,
                weight_prediction: c.prediction,
                ..options.clone()
            };
            let mut data: Box<dyn WindowSource> = match &corpus {
                Some(d) => Box::new(TrainingWindows::new(d.dataset.clone(), options.seed)?),
                None => Box::new(SyntheticWindows {
                    vocab: config.vocab as u64,
                    state: options.seed,
                }),
            };
            measured_run(
                config,
                &options,
                c.strategy,
                self.max_staleness,
                &*device,
                &*clock,
                &mut *data,
            )
        };
        let run = |c: &Contender| run_here(c, steps);
        // The process's first run pays for what later runs find ready (the device's arenas
        // and program cache, the allocator's heap): not counted, or it would slow the first
        // baseline and flatter every strategy measured against it.
        if self.simulate.is_none() {
            run_here(&frozen, steps.min(20))?;
        }
        // Every round opens and closes with frozen kernels, and each ratio is taken against
        // the mean of the two, so that a machine whose other tenants come or go during the
        // round favours no strategy; how far the two disagree is the noise the ratios carry.
        let rounds = self.rounds.max(1);
        let mut brackets: Vec<(Summary, Summary)> = Vec::new();
        let mut runs: Vec<Vec<Summary>> = contenders.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            let before = run(&frozen)?;
            for (c, runs) in contenders.iter().zip(&mut runs) {
                runs.push(run(c)?);
            }
            brackets.push((before, run(&frozen)?));
        }
        let compile_ms = match self.simulate {
            None => {
                let (cold, cached) = compile_times(config, &cpu)?;
                Some((cold, cached, KernelSet::kernel_count(config)))
            }
            Some(_) => None,
        };
        let ms = |r: &Summary| 1e3 * r.wall.as_secs_f64() / steps as f64;
        // A step's time is the median of the run's: other tenants of a shared machine slow
        // some steps for a while, which moves a run's mean but not its median. A strategy's
        // own costs are in every step (each overlaps a compile) or are counted apart (stalls).
        let step_ms = |r: &Summary| {
            let times: Vec<f64> = r.steps.iter().map(|s| s.ms).collect();
            times.get(median_index(&times)).copied().unwrap_or(f64::NAN)
        };
        let baselines: Vec<(f64, f64)> = brackets
            .iter()
            .map(|(before, after)| {
                (
                    0.5 * (ms(before) + ms(after)),
                    0.5 * (step_ms(before) + step_ms(after)),
                )
            })
            .collect();
        let frozen_runs: Vec<&Summary> = brackets.iter().flat_map(|(b, a)| [b, a]).collect();
        let groups = std::iter::once((&frozen, frozen_runs)).chain(
            contenders
                .iter()
                .zip(&runs)
                .map(|(c, runs)| (c, runs.iter().collect())),
        );
        let rows = groups
            .map(|(c, runs)| {
                let mut times: Vec<f64> = runs.iter().map(|r| ms(r)).collect();
                let (ratios, step_ratios): (Vec<f64>, Vec<f64>) = if c.strategy == Strategy::Frozen
                {
                    (vec![1.0], vec![1.0])
                } else {
                    runs.iter()
                        .zip(&baselines)
                        .map(|(r, (wall, step))| (wall / ms(r), step / step_ms(r)))
                        .unzip()
                };
                // The other columns come from the run of median time.
                let r = runs[median_index(&times)];
                times.sort_by(f64::total_cmp);
                let wall = r.wall.as_secs_f64();
                WeightsRow {
                    name: c.name.clone(),
                    strategy: c.strategy,
                    ms_per_step: times,
                    vs_frozen: ratios[median_index(&ratios)],
                    vs_frozen_by_median_step: step_ratios[median_index(&step_ratios)],
                    stall_share: 100.0 * r.counters.compile_stall.as_secs_f64() / wall,
                    stall_after_startup_share: r.counters.stall_after_startup().1,
                    background_compile_cpu_ms: 1e3
                        * r.counters.background_compile_cpu.as_secs_f64()
                        / steps as f64,
                    mean_lag: r.mean_lag,
                    max_lag: r.max_lag,
                    compiles: r.counters.compiles,
                    final_train_loss: r.final_train_loss,
                    val_loss: r.val_loss,
                }
            })
            .collect();
        // How far the frozen runs that bracket each round disagreed: median, least, greatest.
        let drift = |time: &dyn Fn(&Summary) -> f64| {
            let mut ratios: Vec<f64> = brackets.iter().map(|(b, a)| time(b) / time(a)).collect();
            let median = ratios[median_index(&ratios)];
            ratios.sort_by(f64::total_cmp);
            [median, ratios[0], ratios[ratios.len() - 1]].map(|r| 100.0 * r)
        };
        Ok(WeightsBenchReport {
            rounds,
            compile_ms,
            rows,
            noise_wall: drift(&ms),
            noise_step: drift(&step_ms),
        })
    }
}

impl fmt::Display for WeightsBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((cold, cached, kernels)) = self.compile_ms {
            writeln!(
                f,
                "\nCPU compile of one kernel set ({kernels} kernels), median of 5: {cold:.2} ms from \
                 scratch (programs generated and lowered), {cached:.2} ms in a run (new weights only)"
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<30} {:>9} {:>13} {:>10} {:>9} {:>8} {:>8} {:>8} {:>12} {:>10} {:>10} {:>9}",
            "strategy",
            "ms/step",
            "(min-max)",
            "vs frozen",
            "by median",
            "stall %",
            "stall* %",
            "bg cpu",
            "lag mean/max",
            "compiles",
            "train loss",
            "val loss"
        )?;
        for r in &self.rows {
            let times = &r.ms_per_step;
            writeln!(
                f,
                "{:<30} {:>9.1} {:>13} {:>9.1}% {:>8.1}% {:>8.1} {:>8.2} {:>8.2} {:>7.2}/{:<4} {:>10} {:>10.4} {:>9}",
                r.name,
                times[times.len() / 2],
                format!("({:.1}-{:.1})", times[0], times[times.len() - 1]),
                100.0 * r.vs_frozen,
                100.0 * r.vs_frozen_by_median_step,
                r.stall_share,
                r.stall_after_startup_share,
                r.background_compile_cpu_ms,
                r.mean_lag,
                r.max_lag,
                r.compiles,
                r.final_train_loss,
                r.val_loss.map_or("-".into(), |v| format!("{v:.4}"))
            )?;
        }
        let (wall, step) = (self.noise_wall, self.noise_step);
        writeln!(
            f,
            "\nnoise: the frozen run closing a round ran at {:.1}% of the one opening it (median; \
             {:.1}-{:.1}%), by median step {:.1}% ({:.1}-{:.1}%)",
            wall[0], wall[1], wall[2], step[0], step[1], step[2]
        )?;
        write!(
            f,
            "\n({} round(s), each opened and closed by frozen kernels, the other strategies between; \
             ms/step: median (min-max), the first run of the process not counted; vs frozen: median \
             over rounds of the throughput as a share of the mean of the round's two frozen runs; \
             by median: the same share from each run's median step time instead of its wall time \
             (a step's time includes its stall); the other columns are from the run of median time. train loss: mean of the last 20 \
             steps; val loss: at the end; stall: foreground compile waits including the initial \
             compile; stall*: after the initial compile; bg cpu: CPU ms per step of the background \
             compiles, Linux only)",
            self.rounds
        )
    }
}

/// Milliseconds to compile a kernel set on a device that lowers every program afresh, and on
/// one that has lowered the set's programs before (what each recompile of a run costs).
fn compile_times(config: &ModelConfig, device: &CpuDevice) -> Result<(f64, f64), RunError> {
    let layout = Arc::new(ParamLayout::new(config));
    let snapshot = |seed: u64| WeightSnapshot {
        version: seed,
        params: Arc::new(init_params(layout.clone(), seed)),
    };
    let step = |e| RunError::Train(TrainError::Step(e));
    let programs = Arc::new(BakedPrograms::for_device(device, config).map_err(step)?);
    // A run generates its programs once; a fresh device also lowers them afresh.
    let median_ms = |device: &CpuDevice, fresh: bool| -> Result<f64, RunError> {
        let mut times = Vec::new();
        for seed in 0..6 {
            let snap = snapshot(seed);
            let start = Instant::now();
            if fresh {
                compile_kernel_set(device, snap).map_err(step)?;
            } else {
                programs.compile_set(device, snap).map_err(step)?;
            }
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        // The first compile fills the device's cache: not counted.
        times.remove(0);
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    };
    let cold = median_ms(&device.clone().without_template_cache(), true)?;
    let cached = median_ms(device, false)?;
    Ok((cold, cached))
}
