//! A run from its specification to its report: [`Run::open`] resolves what the user asked for
//! against a resumed checkpoint, claims the run folder, opens the device and prepares the
//! data and the state; [`Run::train`] trains, keeping the metrics log and the timeline;
//! [`Run::finish`] writes the plot and the report.

use super::data::load_data;
use super::folder::{EarlierRun, LOSS_PLOT, METRICS, REPORT, REPORT_JSON};
use super::plot::loss_svg;
use super::settings::check_example_settings;
use super::trace::continue_trace;
use super::{EfficiencyReport, MetricsLog, MetricsRow, RunError, RunFolder, RunSettings};
use crate::checkpoint::{list_checkpoints, BaseModelFiles, Checkpoint};
use crate::data::TrainingWindows;
use crate::delivery::Strategy;
use crate::tokenizer::Tokenizer;
use crate::trainer::{
    train, CheckpointFolder, DeliverySettings, Event, TrainError, TrainOptions, TrainOutcome,
    TrainSetup, TrainState,
};
use anetrain_device::host_math::GemmLibrary;
use anetrain_device::memory::physical_memory;
use anetrain_device::trace::{Tracer, Track};
use anetrain_device::{DeviceSpec, OpenDevice};
use anetrain_model::generate::{generate, Sampler};
use anetrain_model::init::init_params;
use anetrain_model::io::atomic::write_atomic;
use anetrain_model::io::load_model_file;
use anetrain_model::{ModelConfig, ParamLayout};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Which checkpoint a resumed run continues from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The newest checkpoint in the run folder.
    Newest,
    Checkpoint(PathBuf),
}

/// `[train]` keys of a run configuration file, written over a resumed run's own options.
#[derive(Clone, Debug, PartialEq)]
pub struct OptionsFile {
    pub keys: serde_json::Value,
    /// Where the keys come from, for errors.
    pub source: String,
}

/// Options given on the command line, over the file's and the checkpoint's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptionFlags {
    pub steps: Option<u64>,
    pub lr: Option<f32>,
    pub accum: Option<u32>,
    pub seed: Option<u64>,
    pub threads: Option<usize>,
    pub delay_compensation: Option<f32>,
    pub weight_prediction: Option<bool>,
    pub gemm: Option<GemmLibrary>,
}

/// Everything a user asks of a run.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// A preset or a model TOML file; `tiny` when none is given. A resumed run keeps its
    /// checkpoint's model, and refuses another.
    pub model: Option<String>,
    pub folder: RunFolder,
    /// A published model file to start from.
    pub init: Option<PathBuf>,
    pub resume: Option<ResumeFrom>,
    /// Start over in a folder that holds a run.
    pub overwrite: bool,
    /// The settings given (a resumed run keeps its own where these are missing).
    pub settings: RunSettings,
    pub tokenizer: Option<PathBuf>,
    pub options_file: Option<OptionsFile>,
    pub option_flags: OptionFlags,
    pub simulate: Option<String>,
    pub compile_budget: Option<u64>,
    /// Where to write the timeline.
    pub trace: Option<PathBuf>,
    pub stop_after: Option<u64>,
}

/// A run, ready to train or training.
pub struct Run {
    pub folder: RunFolder,
    pub device: OpenDevice,
    pub options: TrainOptions,
    pub delivery: DeliverySettings,
    pub state: TrainState,
    pub windows: TrainingWindows,
    pub tokenizer: Tokenizer,
    checkpoints: CheckpointFolder,
    metrics: MetricsLog,
    tracer: Option<(Tracer, PathBuf)>,
    /// Whether the run continues a checkpoint (its timeline continues the earlier one's).
    resumed: bool,
    stop_after: Option<u64>,
}

impl Run {
    /// Prepares the run `spec` asks for. Nothing in the folder changes until every option
    /// checked out; `notice` hears of slow preparation.
    pub fn open(spec: &RunSpec, notice: &mut dyn FnMut(&str)) -> Result<Run, RunError> {
        let folder = spec.folder.clone();
        // Resume: the checkpoint carries config, weights, optimizer, sampler and tokenizer,
        // and how the run was started.
        let resume_from = match &spec.resume {
            None => None,
            Some(ResumeFrom::Newest) => Some(folder.newest_checkpoint()?),
            Some(ResumeFrom::Checkpoint(p)) => Some(p.clone()),
        };
        let checkpoint = match &resume_from {
            Some(p) => Some(Checkpoint::load(p)?),
            None => None,
        };
        let saved = checkpoint
            .as_ref()
            .map_or_else(RunSettings::default, |c| RunSettings::saved_in(&c.header));
        let saved_settings = saved.clone();
        let settings = spec.settings.clone().or(saved);
        if let (Some(c), Some(model)) = (&checkpoint, &spec.model) {
            let given = ModelConfig::named(model)?;
            if given != c.header.config {
                return Err(RunError::Invalid(format!(
                    "--model {model}: the checkpoint holds model `{}`, and a resumed run keeps \
                     its model (drop --model)",
                    c.header.config.name
                )));
            }
        }
        if let Some(trace) = &spec.trace {
            if trace.is_dir() {
                return Err(RunError::Invalid(format!(
                    "--trace {}: a folder; give the file to write the timeline to",
                    trace.display()
                )));
            }
        }
        let resumed_settings = checkpoint.as_ref().map(|_| &saved_settings);
        check_example_settings(&spec.settings, resumed_settings, settings.data.as_deref())
            .map_err(RunError::Invalid)?;
        let options = resolve_options(
            checkpoint.as_ref().map(|c| &c.header.options),
            spec.options_file.as_ref(),
            &spec.option_flags,
        )?;
        // Before the data and the tokenizer are prepared (seconds), so a typo fails at once.
        options.check().map_err(TrainError::Options)?;
        let device_name = settings.device.clone().unwrap_or_else(|| "cpu".into());
        let mut device_spec = DeviceSpec {
            kind: device_name.parse()?,
            precision: settings
                .precision
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(RunError::Invalid)?,
            threads: Some(options.threads),
            simulate: spec.simulate.clone(),
            compile_budget: spec.compile_budget,
            ..DeviceSpec::default()
        };
        let mode = device_spec.mode()?;
        // The double buffer everywhere: on the ANE compiles are costly and overlap evals, and
        // on the CPU it measured faster than weights as inputs (docs/weight-delivery.md).
        let strategy: Strategy = settings
            .weights
            .as_deref()
            .unwrap_or("double-buffer")
            .parse()
            .map_err(RunError::Invalid)?;
        let resumed_here = resume_from.as_deref().is_some_and(|p| folder.holds(p));
        let earlier_run: EarlierRun = folder.claim(resumed_here, spec.overwrite)?;
        let tracer = spec
            .trace
            .as_ref()
            .map(|path| (Tracer::new(), path.clone()));
        device_spec.tracer = tracer.as_ref().map(|(t, _)| t.clone());
        let device = device_spec.open()?;

        folder.create()?;

        let model = spec.model.as_deref().unwrap_or("tiny");
        let initial = match (&checkpoint, &spec.init) {
            (None, Some(path)) => {
                let preset = ModelConfig::named(model).ok();
                Some(load_model_file(path, preset.as_ref())?)
            }
            _ => None,
        };
        let config = match (&checkpoint, &initial) {
            (Some(c), _) => c.header.config.clone(),
            (None, Some(p)) => p.layout.config.clone(),
            (None, None) => ModelConfig::named(model)?,
        };
        check_memory(&config, physical_memory())?;
        // A Hugging Face folder given to --init holds its tokenizer.
        let folder_tokenizer = spec
            .init
            .as_ref()
            .filter(|p| checkpoint.is_none() && p.is_dir())
            .map(|p| p.join("tokenizer.json"));
        let data = load_data(
            settings.data.as_deref(),
            settings.example_options(),
            spec.tokenizer.as_deref().or(folder_tokenizer.as_deref()),
            checkpoint.as_ref(),
            &config,
            notice,
        )?;
        let windows = match &checkpoint {
            Some(c) => TrainingWindows::restore(data.dataset, &c.header.sampler)?,
            None => TrainingWindows::new(data.dataset, options.seed)?,
        };
        let base_model = match (&checkpoint, &spec.init) {
            (Some(c), _) => c.header.base_model.clone(),
            (None, Some(dir)) if dir.is_dir() => BaseModelFiles::read(dir),
            _ => None,
        };
        let state = match checkpoint {
            Some(c) => TrainState::from_checkpoint(c)?,
            None => {
                let params = match initial {
                    Some(p) => p,
                    None => init_params(Arc::new(ParamLayout::new(&config)), options.seed),
                };
                TrainState::new(params, &options, mode)
            }
        };
        let delivery = DeliverySettings {
            strategy,
            max_staleness: settings.max_staleness.unwrap_or(1),
            max_failures: settings.max_compile_failures.unwrap_or(3),
        };
        let data_file = match &settings.data {
            Some(p) => Some(std::fs::canonicalize(p).map_err(|source| RunError::Io {
                action: "cannot find",
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        let checkpoints = CheckpointFolder {
            dir: folder.path().to_path_buf(),
            tokenizer_kind: data.tokenizer_kind,
            tokenizer: data.tokenizer_bytes,
            tokenizer_config: data.tokenizer_config,
            base_model,
            run: RunSettings {
                device: Some(device_name),
                precision: Some(mode.to_string()),
                data: data_file,
                weights: Some(strategy.name().to_string()),
                max_staleness: Some(delivery.max_staleness),
                max_compile_failures: Some(delivery.max_failures),
                mask_prompt: settings.mask_prompt,
                pack: settings.pack,
                long_examples: settings.long_examples,
            },
        };
        folder.remove_leftovers()?;
        earlier_run.delete()?;
        let metrics_path = folder.file(METRICS);
        // A resumed run's plot covers the whole run, and its metrics hold each step once.
        let metrics = if resumed_here {
            MetricsLog::resume(&metrics_path, state.step)?
        } else {
            MetricsLog::create(&metrics_path)?
        };
        Ok(Run {
            folder,
            device,
            options,
            delivery,
            state,
            windows,
            tokenizer: data.tokenizer,
            checkpoints,
            metrics,
            tracer,
            resumed: resume_from.is_some(),
            stop_after: spec.stop_after,
        })
    }

    /// Trains from where the run stands to the end of its schedule (or its stop), writing a
    /// metrics row for each event and, with a trace, the timeline; `on_event` sees every
    /// event too (for progress). A restart the compile budget asks for is an outcome.
    pub fn train(&mut self, on_event: &mut dyn FnMut(&Event)) -> Result<TrainOutcome, RunError> {
        // A metrics log that cannot be written stops the run after the update it is in, with
        // a checkpoint, rather than losing the rows of every step until the end.
        let halt = AtomicBool::new(false);
        let setup = TrainSetup {
            device: &*self.device.device,
            clock: &*self.device.clock,
            delivery: self.delivery,
            simulate_host_time: true,
            stop_after: self.stop_after,
            halt: Some(&halt),
        };
        let tracer = self.tracer.as_ref().map(|(t, _)| t);
        let metrics = &mut self.metrics;
        let mut record = |e: &Event| {
            if let Some(t) = tracer {
                match e {
                    Event::Step(r) => {
                        let start = Duration::from_secs_f64(r.start_s);
                        let end = start + Duration::from_secs_f64(r.ms / 1e3);
                        t.record(Track::Host, &format!("step {}", r.step), start, end);
                    }
                    Event::HostWork { name, start, end } => {
                        t.record(Track::Host, name, *start, *end)
                    }
                    _ => {}
                }
            }
            if let Some(row) = MetricsRow::of(e) {
                metrics.append(&row);
                if metrics.failed() {
                    halt.store(true, Ordering::SeqCst);
                }
            }
            on_event(e);
        };
        let outcome = train(
            &setup,
            &self.options,
            &mut self.state,
            &mut self.windows,
            Some(&self.checkpoints),
            &mut record,
        );
        let outcome = outcome?;
        if self.metrics.failed() {
            // Whatever else ended the call (the schedule, a restart, the halt), the records
            // are what was lost: say so, and name the checkpoint to continue from. A trace
            // written to the same full disk would fail too, and hide this.
            let _ = self.write_trace();
            let (step, checkpoint) = match outcome {
                TrainOutcome::Halted { step, checkpoint } => (step, checkpoint),
                TrainOutcome::Restart {
                    step, checkpoint, ..
                } => (step, Some(checkpoint)),
                TrainOutcome::Finished => (self.state.step, None),
            };
            let checkpoint = checkpoint.or_else(|| {
                list_checkpoints(&self.checkpoints.dir)
                    .pop()
                    .map(|(_, p)| p)
            });
            let error = self.metrics.finish().err().ok_or_else(|| {
                RunError::Invalid("the metrics log failed, then reported no error".into())
            })?;
            return Err(RunError::RecordsLost {
                error: Box::new(error),
                step,
                checkpoint,
            });
        }
        self.write_trace()?;
        Ok(outcome)
    }

    /// Writes the timeline; a resumed run (a budget restart among them) continues the one it
    /// finds.
    fn write_trace(&self) -> Result<(), RunError> {
        let Some((tracer, path)) = &self.tracer else {
            return Ok(());
        };
        let earlier = if self.resumed {
            std::fs::read(path).ok()
        } else {
            None
        };
        let io = |action| {
            move |source| RunError::Io {
                action,
                path: path.clone(),
                source,
            }
        };
        let json = continue_trace(earlier.as_deref(), &tracer.to_json())
            .map_err(|e| io("cannot continue the trace in")(std::io::Error::other(e)))?;
        write_atomic(path, json.as_bytes()).map_err(io("cannot write"))
    }

    /// Ends the run: reports a failed metrics write, then writes the loss plot and the
    /// efficiency report, and returns the report.
    pub fn finish(&mut self) -> Result<EfficiencyReport, RunError> {
        self.metrics.finish()?;
        let curves = self.metrics.curves();
        let title = format!("{} loss", self.state.config.name);
        let svg = loss_svg(&title, &curves.train, &curves.val);
        self.write(LOSS_PLOT, svg.as_bytes())?;
        let report = EfficiencyReport::new(
            &self.state,
            &self.options,
            &*self.device.device,
            self.device.mode,
            self.delivery.strategy,
        );
        self.write(REPORT, report.to_string().as_bytes())?;
        let mut json = serde_json::to_vec_pretty(&report.to_json()).unwrap_or_default();
        json.push(b'\n');
        self.write(REPORT_JSON, &json)?;
        Ok(report)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), RunError> {
        let path = self.folder.file(name);
        write_atomic(&path, bytes).map_err(|source| RunError::Io {
            action: "cannot write",
            path,
            source,
        })
    }

    /// `prompt` continued by `tokens` tokens of the trained weights (top-p sampling at
    /// temperature 0.8, seeded by the run's seed).
    pub fn sample(&self, prompt: &str, tokens: usize) -> Result<String, RunError> {
        let prompt = self.tokenizer.encode(prompt)?;
        let mut sampler =
            Sampler::new(0.8, 0.9, self.options.seed).within(self.tokenizer.vocab_size());
        let mut text = prompt.clone();
        text.extend(generate(
            &self.state.params,
            &prompt,
            tokens,
            &mut sampler,
            &[],
        ));
        Ok(self.tokenizer.decode(&text)?)
    }
}

/// The run's options: a resumed run's own (the schedule, optimizer, evaluation and
/// correction it was started with; not its thread count and matrix library, which are the
/// machine's), then the
/// config file's `[train]` keys over them, then the flags.
pub fn resolve_options(
    saved: Option<&TrainOptions>,
    file: Option<&OptionsFile>,
    flags: &OptionFlags,
) -> Result<TrainOptions, RunError> {
    let mut value = match saved {
        Some(saved) => serde_json::to_value(saved).map_err(|e| RunError::Invalid(e.to_string()))?,
        None => serde_json::Value::Object(Default::default()),
    };
    if let Some(saved) = value.as_object_mut() {
        saved.remove("threads");
        saved.remove("gemm");
    }
    let source = match file {
        Some(f) => f.source.clone(),
        None => "the checkpoint's options".into(),
    };
    if let Some(file) = file {
        merge_json(&mut value, file.keys.clone());
    }
    let mut options: TrainOptions =
        serde_json::from_value(value).map_err(|e| RunError::Invalid(format!("{source}: {e}")))?;
    if let Some(v) = flags.steps {
        options.steps = v;
    }
    if let Some(v) = flags.lr {
        options.lr = v;
    }
    if let Some(v) = flags.accum {
        options.accum = v;
    }
    if let Some(v) = flags.seed {
        options.seed = v;
    }
    if let Some(v) = flags.threads {
        options.threads = v;
    }
    if let Some(v) = flags.delay_compensation {
        options.delay_compensation = v;
    }
    if let Some(v) = flags.weight_prediction {
        options.weight_prediction = v;
    }
    if let Some(v) = flags.gemm {
        options.gemm = v;
    }
    Ok(options)
}

/// `over` written onto `base`: objects key by key, anything else replaced.
fn merge_json(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
            for (key, value) in over {
                merge_json(base.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (base, over) => *base = over,
    }
}

/// Refuses a model whose training cannot fit this machine's memory (`total`, when known),
/// before anything is sized from it: an allocation that fails aborts the process.
pub(crate) fn check_memory(config: &ModelConfig, total: Option<u64>) -> Result<(), RunError> {
    let need = config.training_bytes();
    match total {
        Some(total) if need > total => Err(RunError::Invalid(format!(
            "model `{}` needs at least {} to train ({} parameters, {} f32 copies: weights, \
             gradients and AdamW's two moments), and this machine has {}",
            config.name,
            gib(need),
            config.parameter_count(),
            ModelConfig::TRAINING_COPIES,
            gib(total)
        ))),
        _ => Ok(()),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_larger_than_the_memory_is_refused_with_what_it_needs() {
        let c = ModelConfig::named("stories110m").unwrap();
        let need = c.training_bytes();
        assert_eq!(need, c.parameter_count() * 16);
        assert!(check_memory(&c, Some(need)).is_ok());
        assert!(
            check_memory(&c, None).is_ok(),
            "unknown memory refuses nothing"
        );
        let text = check_memory(&c, Some(need - 1)).unwrap_err().to_string();
        assert!(
            text.contains(&format!(
                "model `stories110m` needs at least {} to train ({} parameters, 4 f32 copies",
                gib(need),
                c.parameter_count()
            )),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("this machine has {}", gib(need - 1))),
            "{text}"
        );
        assert_eq!(gib(3 << 29), "1.5 GiB");
    }

    /// Flags over the file's keys over the checkpoint's options; the thread count is the
    /// machine's, never the checkpoint's; a bad key names where it comes from.
    #[test]
    fn options_resolve_flags_over_file_over_checkpoint() {
        let saved = TrainOptions {
            steps: 100,
            lr: 1e-3,
            accum: 4,
            threads: 7,
            ..TrainOptions::default()
        };
        let file = OptionsFile {
            keys: serde_json::json!({"lr": 2e-3, "accum": 2}),
            source: "[train] in run.toml".into(),
        };
        let flags = OptionFlags {
            accum: Some(3),
            ..OptionFlags::default()
        };
        let options = resolve_options(Some(&saved), Some(&file), &flags).unwrap();
        assert_eq!(options.steps, 100);
        assert_eq!(options.lr, 2e-3);
        assert_eq!(options.accum, 3);
        assert_eq!(options.threads, TrainOptions::default().threads);
        let typo = OptionsFile {
            keys: serde_json::json!({"lrr": 1.0}),
            ..file
        };
        let err = resolve_options(None, Some(&typo), &flags).err().unwrap();
        assert!(
            err.to_string()
                .starts_with("[train] in run.toml: unknown field `lrr`"),
            "{err}"
        );
    }
}
