//! `anetrain mil check|fmt|run`.

use super::devices;
use crate::npy;
use anetrain_device::DeviceSpec;
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::check::check_program;
use anetrain_mil::parse::parse_program;
use anetrain_mil::{print_program, Program};
use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum MilCommand {
    /// Parse and type-check a program; print its signature.
    Check { file: PathBuf },
    /// Print a program in canonical form.
    Fmt { file: PathBuf },
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
        MilCommand::Check { file } => {
            let program = load(&file)?;
            let checked =
                check_program(&program).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let sig = &checked.signature;
            let list = |ps: &[anetrain_mil::Param]| {
                ps.iter()
                    .map(|p| format!("{} {}", p.ty, p.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!("({}) -> ({})", list(&sig.inputs), list(&sig.outputs));
            Ok(())
        }
        MilCommand::Fmt { file } => {
            print!("{}", print_program(&load(&file)?));
            Ok(())
        }
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

/// Reads and parses a program, with `file:line:col` on a syntax error.
fn load(file: &Path) -> anyhow::Result<Program> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    parse_program(&text).map_err(|e| anyhow!("{}:{e}", file.display()))
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
    let program = load(file)?;
    let mut weights = WeightFiles::new();
    for w in weight_args {
        let (path, f) = split_pair("--weights", w)?;
        let bytes = std::fs::read(f).with_context(|| format!("cannot read weight file {f}"))?;
        weights.insert(path, bytes);
    }
    let device = devices::open(&spec)?.device;
    let mut kernel = device
        .compile(&program, &weights)
        .map_err(|e| anyhow!("{}: {e}", file.display()))?;
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
