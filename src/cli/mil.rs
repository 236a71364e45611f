//! `anetrain mil check|fmt|run`.

use super::devices;
use crate::npy;
use anetrain_device::ane::{chip, ChipRules};
use anetrain_device::{DeviceError, DeviceSpec};
use anetrain_mil::blob::{BlobFile, WeightFiles};
use anetrain_mil::check::{check_program, CheckError};
use anetrain_mil::parse::{parse_program_mapped, SourceMap};
use anetrain_mil::{print_program, DType, Program};
use anetrain_model::init::init_params;
use anetrain_model::io::atomic::write_atomic;
use anetrain_model::kernels::run_kernels;
use anetrain_model::{ModelConfig, ParamLayout};
use anetrain_train::delivery::Strategy;
use anetrain_train::trainer::loaded_kernels_refusal;
use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum MilCommand {
    /// Parse and type-check a program; print its signature. With --chip, apply that chip's
    /// rules too: print every refusal and caution, and fail on a refusal.
    Check {
        file: PathBuf,
        /// A chip of the table (m1 … m5, `M4 Pro`, `m3-max`, ...), or `unknown` for the
        /// strictest figures known.
        #[arg(long)]
        chip: Option<String>,
    },
    /// Print a program in canonical form.
    Fmt { file: PathBuf },
    /// Write every kernel a training run compiles to a folder, as the ANE's compiler reads
    /// them: `<kernel>/model.mil` and `<kernel>/weights/*.bin` (the initial weights of
    /// `--seed`). With --chip, check each against that chip's rules.
    Kernels {
        /// A preset or a model TOML file, as `train --model` takes.
        #[arg(long, default_value = "tiny")]
        model: String,
        /// The weight delivery: recompile, double-buffer and frozen bake the weights into
        /// every layer's kernels; dynamic passes them as inputs.
        #[arg(long, default_value = "double-buffer")]
        weights: String,
        /// fp16 (what the ANE computes in) or fp32 (the CPU device's default).
        #[arg(long, value_parser = ["fp16", "fp32"], default_value = "fp16")]
        precision: String,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The folder to write; it must not exist or be empty.
        #[arg(long)]
        out: PathBuf,
        /// Check every kernel against this chip's rules (see `mil check --chip`).
        #[arg(long)]
        chip: Option<String>,
    },
    /// Evaluate a program on a device with NumPy .npy tensors in and out.
    Run {
        file: PathBuf,
        /// A weight file for a BLOBFILE path, as written in the program:
        /// `@model_path/weights/wq.bin=wq.bin`.
        #[arg(long = "weights", value_name = "PATH=FILE")]
        weights: Vec<String>,
        /// An input tensor: `x=x.npy` (fp16 or fp32, C order, the declared shape).
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        /// Where to write an output: `OUT.npy` for a single output, or `NAME=OUT.npy`.
        #[arg(long = "output", value_name = "[NAME=]FILE", required = true)]
        outputs: Vec<String>,
        /// The CPU device's numeric mode: fp32 (the default) or fp16 (the ANE always computes
        /// in fp16).
        #[arg(long, value_parser = ["fp32", "fp16"])]
        precision: Option<String>,
        /// The device that runs the program: cpu or ane.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

pub fn run(cmd: MilCommand) -> anyhow::Result<()> {
    match cmd {
        MilCommand::Check { file, chip } => {
            let (program, map) = load_mapped(&file)?;
            let checked = check_program(&program).map_err(|e| located(&file, &map, &e))?;
            let sig = &checked.signature;
            let list = |ps: &[anetrain_mil::Param]| {
                ps.iter()
                    .map(|p| format!("{} {}", p.ty, p.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!("({}) -> ({})", list(&sig.inputs), list(&sig.outputs));
            match chip {
                Some(chip) => check_chip_rules(&file, &program, &checked.types, &chip),
                None => Ok(()),
            }
        }
        MilCommand::Fmt { file } => {
            print!("{}", print_program(&load(&file)?));
            Ok(())
        }
        MilCommand::Kernels {
            model,
            weights,
            precision,
            seed,
            out,
            chip,
        } => write_kernels(&model, &weights, &precision, seed, &out, chip.as_deref()),
        MilCommand::Run {
            file,
            weights,
            inputs,
            outputs,
            precision,
            device,
        } => run_program(
            &file,
            &weights,
            &inputs,
            &outputs,
            precision.as_deref(),
            &device,
        ),
    }
}

/// The rules of the chip called `name` (`unknown`: the common rules at their strictest).
pub fn chip_rules(name: &str) -> anyhow::Result<ChipRules> {
    if name.eq_ignore_ascii_case("unknown") {
        return Ok(chip::rules_of(None));
    }
    let found = chip::by_name(name).ok_or_else(|| {
        let names: Vec<&str> = chip::CHIPS.iter().map(|c| c.name).collect();
        anyhow!(
            "unknown chip `{name}` (known: {}, or unknown)",
            names.join(", ")
        )
    })?;
    Ok(chip::rules_of(Some(found)))
}

/// Prints what the chip's rules find in a checked program; fails on a refusal.
fn check_chip_rules(
    file: &Path,
    program: &Program,
    types: &std::collections::HashMap<String, anetrain_mil::Type>,
    chip: &str,
) -> anyhow::Result<()> {
    let rules = chip_rules(chip)?;
    let found = rules.check_typed(program, types);
    for v in &found {
        println!("{v}");
    }
    let refused = found.iter().filter(|v| v.rule.refuses()).count();
    if refused > 0 {
        bail!(
            "{}: the {} refuses {refused} part(s) of the program (listed above)",
            file.display(),
            rules.chip
        );
    }
    println!(
        "the {} accepts it ({} rules, {} caution(s))",
        rules.chip,
        rules.rules.len(),
        found.len()
    );
    Ok(())
}

fn write_kernels(
    model: &str,
    weights: &str,
    precision: &str,
    seed: u64,
    out: &Path,
    chip: Option<&str>,
) -> anyhow::Result<()> {
    let config = if model.ends_with(".toml") {
        ModelConfig::from_toml_file(model)?
    } else {
        ModelConfig::named(model)?
    };
    let strategy: Strategy = weights.parse().map_err(|e: String| anyhow!(e))?;
    let dtype = match precision {
        "fp32" => DType::Fp32,
        _ => DType::Fp16,
    };
    let rules = chip.map(chip_rules).transpose()?;
    if out.exists() {
        let mut entries =
            std::fs::read_dir(out).with_context(|| format!("--out {}", out.display()))?;
        if entries.next().is_some() {
            bail!("{} is not empty: give a new folder", out.display());
        }
    }
    let params = Arc::new(init_params(Arc::new(ParamLayout::new(&config)), seed));
    let mut kernels = run_kernels(&params, strategy.weights_as_inputs(), dtype)?;
    // In the dialect the chip needs (the M1 generation's ios16), as a run on it compiles them.
    if let Some(dialect) = rules.as_ref().and_then(ChipRules::dialect) {
        for kernel in &mut kernels {
            kernel.program = kernel.program.clone().into_dialect(dialect);
        }
    }
    let mut refused = 0;
    for kernel in &kernels {
        let dir = out.join(&kernel.name);
        std::fs::create_dir_all(dir.join("weights"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mil = print_program(&kernel.program);
        write_atomic(&dir.join("model.mil"), mil.as_bytes())
            .with_context(|| format!("cannot write {}", dir.join("model.mil").display()))?;
        for (path, bytes) in kernel.weights.iter() {
            let relative = path.strip_prefix("@model_path/").unwrap_or(path);
            let file = dir.join(relative);
            write_atomic(&file, bytes)
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        if let Some(rules) = &rules {
            for v in rules
                .check(&kernel.program)
                .map_err(|e| anyhow!("{}: {e}", kernel.name))?
            {
                refused += usize::from(v.rule.refuses());
                println!("{}: {v}", kernel.name);
            }
        }
    }
    // What a run holds loaded at once, as `train` checks it.
    if let Some(v) = rules
        .as_ref()
        .and_then(|r| loaded_kernels_refusal(r, &config, strategy))
    {
        refused += 1;
        println!("{v}");
    }
    println!(
        "{} kernels of `{}` with --weights {} in {} written to {}",
        kernels.len(),
        config.name,
        strategy.name(),
        precision,
        out.display()
    );
    match &rules {
        Some(rules) if refused > 0 => bail!(
            "the {} refuses {refused} part(s) of them (listed above)",
            rules.chip
        ),
        Some(rules) => {
            println!(
                "the {} accepts every one, and a run holding them",
                rules.chip
            );
            Ok(())
        }
        None => Ok(()),
    }
}

/// Reads and parses a program, with `file:line:col` on a syntax error.
fn load(file: &Path) -> anyhow::Result<Program> {
    load_mapped(file).map(|(program, _)| program)
}

/// [`load`], with where each part of the program stands in the file.
fn load_mapped(file: &Path) -> anyhow::Result<(Program, SourceMap)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    parse_program_mapped(&text).map_err(|e| anyhow!("{}:{e}", file.display()))
}

/// A checker's error as `file:line:col: …`, pointing at the argument, op or input it is about.
fn located(file: &Path, map: &SourceMap, e: &CheckError) -> anyhow::Error {
    match map.locate(e) {
        Some((line, column)) => anyhow!("{}:{line}:{column}: {e}", file.display()),
        None => anyhow!("{}: {e}", file.display()),
    }
}

fn split_pair<'a>(flag: &str, s: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    // At the first `=`: a MIL name has none, a file name may.
    s.split_once('=')
        .ok_or_else(|| anyhow!("{flag} `{s}`: expected NAME=FILE"))
}

fn run_program(
    file: &Path,
    weight_args: &[String],
    input_args: &[String],
    output_args: &[String],
    precision: Option<&str>,
    device: &str,
) -> anyhow::Result<()> {
    let spec = DeviceSpec {
        kind: device.parse()?,
        precision: precision
            .map(str::parse)
            .transpose()
            .map_err(|e: String| anyhow!(e))?,
        ..DeviceSpec::default()
    };
    let (program, map) = load_mapped(file)?;
    let mut weights = WeightFiles::new();
    for w in weight_args {
        let (path, f) = split_pair("--weights", w)?;
        let bytes = std::fs::read(f).with_context(|| format!("cannot read weight file {f}"))?;
        // Checked here, where the file on disk is known; the device knows only its path.
        BlobFile::parse(&bytes).map_err(|e| anyhow!("--weights {path}={f}: {f}: {e}"))?;
        weights.insert(path, bytes);
    }
    let device = devices::open(&spec)?.device;
    let mut kernel = device.compile(&program, &weights).map_err(|e| match e {
        DeviceError::Check(check) => located(file, &map, &check),
        e => anyhow!("{}: {e}", file.display()),
    })?;
    let signature = kernel.signature().clone();

    let mut given = std::collections::HashMap::new();
    for i in input_args {
        let (name, f) = split_pair("--input", i)?;
        if given.insert(name.to_string(), f.to_string()).is_some() {
            bail!("--input `{name}` is given twice");
        }
    }
    for name in given.keys() {
        if !signature.inputs.iter().any(|p| &p.name == name) {
            bail!("--input `{name}`: the program has no input of that name");
        }
    }
    let mut input_data = Vec::new();
    for p in &signature.inputs {
        let f = given
            .get(&p.name)
            .ok_or_else(|| anyhow!("missing --input {}=FILE ({})", p.name, p.ty))?;
        let tensor = npy::read(Path::new(f))?;
        if tensor.shape != p.ty.shape() {
            bail!(
                "{f}: shape {:?} does not match input `{}` of type {}",
                tensor.shape,
                p.name,
                p.ty
            );
        }
        input_data.push(tensor.data);
    }

    let targets = output_targets(output_args, &signature.outputs)?;
    let mut results: Vec<Vec<f32>> = signature
        .outputs
        .iter()
        .map(|p| vec![0.0; p.ty.num_elements()])
        .collect();
    let ins: Vec<&[f32]> = input_data.iter().map(Vec::as_slice).collect();
    let mut outs: Vec<&mut [f32]> = results.iter_mut().map(Vec::as_mut_slice).collect();
    device
        .eval(&mut kernel, &ins, &mut outs)
        .map_err(|e| anyhow!("{}: {e}", file.display()))?;
    for ((p, data), target) in signature.outputs.iter().zip(&results).zip(&targets) {
        if let Some(path) = target {
            npy::write_atomic(path, p.ty.dtype(), p.ty.shape(), data)?;
        }
    }
    Ok(())
}

/// Matches `--output` flags to the program's outputs: one bare FILE for a single output, or
/// NAME=FILE for any of them.
fn output_targets(
    args: &[String],
    outputs: &[anetrain_mil::Param],
) -> anyhow::Result<Vec<Option<PathBuf>>> {
    let mut targets = vec![None; outputs.len()];
    for a in args {
        let (name, f) = match a.split_once('=') {
            Some((n, f)) => (Some(n), f),
            None => (None, a.as_str()),
        };
        let index = match name {
            Some(n) => outputs
                .iter()
                .position(|p| p.name == n)
                .ok_or_else(|| anyhow!("--output `{n}`: the program has no output of that name"))?,
            None if outputs.len() == 1 => 0,
            None => bail!(
                "--output `{a}`: the program has {} outputs; name one with NAME=FILE",
                outputs.len()
            ),
        };
        targets[index] = Some(PathBuf::from(f));
    }
    Ok(targets)
}
