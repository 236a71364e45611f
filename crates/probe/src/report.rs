//! Reports: the human tables for stdout and the JSON for files. In the JSON every figure is an
//! object `{"value": …, "unit": "…"}`, so no number is ever without its unit; a figure that
//! could not be computed (e.g. a rate over zero time) has the value `null`.

use crate::peak::{PeakReport, PeakRow};
use crate::probe::{self, OverlapVerdict, ProbeReport};
use crate::stats::{ms, Spread};
use anetrain_device::{DeviceInfo, PeakFlops};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

/// A number with its unit.
fn figure(value: f64, unit: &str) -> Value {
    json!({ "value": value, "unit": unit })
}

fn count(value: usize, unit: &str) -> Value {
    json!({ "value": value, "unit": unit })
}

fn millis(d: Duration) -> Value {
    figure(ms(d), "ms")
}

fn spread_json(s: &Spread) -> Value {
    json!({ "min": millis(s.min), "median": millis(s.median), "max": millis(s.max) })
}

fn peak_json(peak: &PeakFlops) -> Value {
    match peak {
        PeakFlops::Unknown => json!({ "source": "unknown" }),
        PeakFlops::Measured(v) => {
            json!({ "source": "measured", "flops": figure(v / 1e9, "GFLOP/s") })
        }
        PeakFlops::Rated(v) => json!({ "source": "rated", "flops": figure(v / 1e9, "GFLOP/s") }),
    }
}

fn device_json(info: &DeviceInfo) -> Value {
    json!({
        "kind": info.kind,
        "name": info.name,
        "numeric": info.numeric.name(),
        "latency_model": info.simulated,
    })
}

fn clock_name(clock_simulated: bool) -> &'static str {
    if clock_simulated {
        "virtual"
    } else {
        "real"
    }
}

/// The probe's figures as JSON.
pub fn probe_to_json(r: &ProbeReport) -> Value {
    let t1 = &r.eval_throughput;
    let t2 = &r.ping_pong;
    let t3 = &r.sequential_compile;
    let t4 = &r.background_overlap;
    let loaded = &r.loaded_at_once;
    json!({
        "command": "probe",
        "simulated": r.simulated,
        "clock": clock_name(r.clock_simulated),
        "device": device_json(&r.device),
        "kernel": {
            "shape": format!("1x1 conv {c}->{c}, spatial {s}", c = r.kernel.channels, s = r.kernel.spatial),
            "channels": count(r.kernel.channels, "channels"),
            "spatial": count(r.kernel.spatial, "positions"),
            "flops_per_eval": figure(r.kernel.flops() as f64, "FLOP"),
            "weights": figure(r.kernel.weight_bytes() as f64, "bytes"),
        },
        "eval_throughput": {
            "warmup_evals": count(t1.warmup_evals, "evals"),
            "evals": count(t1.evals, "evals"),
            "total": millis(t1.total),
            "per_eval": millis(t1.per_eval),
            "eval": spread_json(&t1.spread),
            "sustained": figure(t1.flops_per_second / 1e9, "GFLOP/s"),
            "verified": true,
        },
        "ping_pong": {
            "pairs": count(t2.pairs, "pairs"),
            "total": millis(t2.total),
            "per_pair": millis(t2.per_pair),
            "per_eval": millis(t2.per_eval),
            "pair": spread_json(&t2.pair_spread),
            "overhead_vs_eval_throughput": figure(t2.overhead_percent, "%"),
            "verified": true,
        },
        "sequential_compile": {
            "compiles": count(t3.times.len(), "kernels"),
            "times": t3.times.iter().map(|&d| millis(d)).collect::<Vec<_>>(),
            "compile": spread_json(&t3.spread),
            "drift": {
                "measure": format!(
                    "median of the last {w} compiles / median of the first {w}",
                    w = t3.drift_window
                ),
                "ratio": figure(t3.drift_ratio, "ratio"),
                "bounds": [figure(probe::DRIFT_BOUNDS.0, "ratio"), figure(probe::DRIFT_BOUNDS.1, "ratio")],
                "verdict": t3.drift.name(),
            },
            "verified": count(t3.times.len(), "kernels"),
        },
        "background_overlap": {
            "compile": millis(t4.compile()),
            "compile_start": millis(t4.compile_window.start),
            "compile_end": millis(t4.compile_window.end),
            "foreground_evals": count(t4.foreground_evals, "evals"),
            "foreground_evals_inside_compile": count(t4.evals_inside, "evals"),
            "undisturbed_evals_fitting_compile": figure(t4.undisturbed_fit, "evals"),
            "kept_rate": figure(t4.kept_rate, "ratio"),
            "foreground_eval_during_compile": t4.latency_inside.as_ref().map(spread_json),
            "latency_vs_eval_throughput": figure(t4.latency_ratio, "ratio"),
            "verdict": t4.verdict.name(),
            "verified": true,
        },
        "loaded_at_once": {
            "loaded": count(loaded.loaded, "kernels"),
            "cap": count(loaded.cap, "kernels"),
            "stopped_by": loaded.stopped_by,
            "verified": count(loaded.loaded, "kernels"),
        },
        "summary": {
            "compile": millis(r.compile_time()),
            "eval": millis(r.eval_time()),
            "compile_to_eval": figure(r.compile_to_eval(), "evals per compile"),
            "parallel_compile_and_eval": t4.verdict.parallel(),
            "kernels_loaded_at_once": count(loaded.loaded, "kernels"),
            "ping_pong_overhead": figure(t2.overhead_percent, "%"),
        },
        "compiles_attempted": count(r.compiles_attempted, "compiles"),
    })
}

/// The sweep's figures as JSON.
pub fn peak_to_json(r: &PeakReport) -> Value {
    let rows: Vec<Value> = r
        .rows
        .iter()
        .map(|row| {
            json!({
                "config": row.shape.to_string(),
                "nominal_config": row.nominal.to_string(),
                "depth": count(row.shape.depth, "convs"),
                "channels": count(row.shape.channels, "channels"),
                "spatial": count(row.shape.spatial, "positions"),
                "weights": figure(row.shape.weight_mib(), "MiB"),
                "work": figure(row.shape.gflop(), "GFLOP"),
                "compile": millis(row.compile),
                "eval": spread_json(&row.eval),
                "throughput": figure(row.tflops(), "TFLOP/s"),
                "percent_of_peak": row.percent_of_peak.map(|p| figure(p, "%")),
                "verified": true,
            })
        })
        .collect();
    json!({
        "command": "peak",
        "simulated": r.simulated,
        "clock": clock_name(r.clock_simulated),
        "device": device_json(&r.device),
        "peak": peak_json(&r.config.peak),
        "depth_divisor": count(r.config.depth_divisor, "divisor"),
        "warmup_evals": count(r.config.warmup_evals, "evals"),
        "timed_evals": count(r.config.timed_evals, "evals"),
        "flop_count": "2*C_in*C_out*S per conv",
        "rows": rows,
    })
}

/// Writes `value` to a temporary file beside `path` and renames it into place, so that a
/// reader never sees half a file and a failure never leaves one.
pub fn write_json_atomic(path: &Path, value: &Value) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, value)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Milliseconds with as many decimals as a figure of that size needs.
fn fmt_ms(d: Duration) -> String {
    let v = ms(d);
    if v >= 100.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

fn fmt_spread(s: &Spread) -> String {
    format!(
        "min {} / median {} / max {} ms",
        fmt_ms(s.min),
        fmt_ms(s.median),
        fmt_ms(s.max)
    )
}

/// A ratio or percentage, or `n/a` when it could not be computed.
fn fmt_number(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "n/a".into()
    }
}

/// The banner every report starts with: the device, and whether the figures are measured.
fn header(command: &str, device: &DeviceInfo, simulated: bool, clock_simulated: bool) -> String {
    let mut out = format!(
        "anetrain {command}: {}, {}, {} clock\n",
        device.name,
        device.numeric,
        clock_name(clock_simulated)
    );
    if simulated {
        out.push_str(
            "SIMULATED: compile and eval times come from a latency model, not from the hardware\n",
        );
    }
    out
}

/// The probe's human report: the four tests, the loaded-at-once count and the summary table.
pub fn probe_table(r: &ProbeReport) -> String {
    let t1 = &r.eval_throughput;
    let t2 = &r.ping_pong;
    let t3 = &r.sequential_compile;
    let t4 = &r.background_overlap;
    let loaded = &r.loaded_at_once;
    let (c, s) = (r.kernel.channels, r.kernel.spatial);
    let mut out = header("probe", &r.device, r.simulated, r.clock_simulated);
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!(
        "kernel: 1x1 conv {c}->{c}, spatial {s}, {:.2} MFLOP per eval; every kernel below verified against its known output",
        r.kernel.flops() as f64 / 1e6
    ));
    line(String::new());
    line(format!(
        "1. Pure eval throughput: {} warm-up + {} timed evals",
        t1.warmup_evals, t1.evals
    ));
    line(format!(
        "   total {} ms, {} ms/eval, {} GFLOPS sustained",
        fmt_ms(t1.total),
        fmt_ms(t1.per_eval),
        fmt_number(t1.flops_per_second / 1e9, 2)
    ));
    line(format!("   per eval: {}", fmt_spread(&t1.spread)));
    line(format!(
        "2. Ping-pong: two kernels alternately, {} pairs",
        t2.pairs
    ));
    line(format!(
        "   {} ms/pair, {} ms/eval; overhead (median pair vs two median evals of test 1): {}%",
        fmt_ms(t2.per_pair),
        fmt_ms(t2.per_eval),
        fmt_number(t2.overhead_percent, 1)
    ));
    line(format!("   per pair: {}", fmt_spread(&t2.pair_spread)));
    line(format!(
        "3. Sequential compile: {} kernels, each its own weights, all verified",
        t3.times.len()
    ));
    line(format!("   compile: {}", fmt_spread(&t3.spread)));
    line(format!(
        "   drift (median of last {w} / median of first {w}): {} -> {} (none within {}..{})",
        fmt_number(t3.drift_ratio, 2),
        t3.drift.name(),
        probe::DRIFT_BOUNDS.0,
        probe::DRIFT_BOUNDS.1,
        w = t3.drift_window
    ));
    line("4. Background compile overlap: one thread compiles, the other evaluates".into());
    line(format!(
        "   background compile {} ms; {} foreground evals inside it ({} would fit at test 1's median), {} in all",
        fmt_ms(t4.compile()),
        t4.evals_inside,
        fmt_number(t4.undisturbed_fit, 1),
        t4.foreground_evals
    ));
    line(match &t4.latency_inside {
        Some(l) => format!(
            "   foreground eval during the compile: median {} ms vs {} ms in test 1 ({}x)",
            fmt_ms(l.median),
            fmt_ms(t1.spread.median),
            fmt_number(t4.latency_ratio, 2)
        ),
        None => "   no foreground eval completed inside the compile".into(),
    });
    line(format!(
        "   verdict: {} ({}; overlapped means >= {}% kept)",
        t4.verdict.name(),
        overlap_reason(t4),
        100.0 * probe::OVERLAP_KEPT_RATE,
    ));
    line(format!(
        "5. Kernels loaded at once: {}",
        loaded_text(loaded)
    ));
    line(String::new());
    line("Summary".into());
    let rows = [
        (
            "compile time (median of test 3)",
            format!("{} ms", fmt_ms(r.compile_time())),
        ),
        (
            "eval time (median of test 1)",
            format!("{} ms", fmt_ms(r.eval_time())),
        ),
        (
            "compile : eval",
            format!(
                "{} : 1",
                fmt_number(
                    r.compile_to_eval(),
                    if r.compile_to_eval() < 10.0 { 1 } else { 0 }
                )
            ),
        ),
        (
            "parallel compile + eval (measured)",
            format!("{} ({})", t4.verdict.parallel(), overlap_reason(t4)),
        ),
        ("kernels loaded at once", loaded_text(loaded)),
        (
            "ping-pong overhead",
            format!("{}%", fmt_number(t2.overhead_percent, 1)),
        ),
        (
            "compiles attempted by this probe",
            r.compiles_attempted.to_string(),
        ),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        line(format!("  {k:<width$}  {v}"));
    }
    out
}

/// What the overlap verdict rests on, in words.
fn overlap_reason(t4: &probe::BackgroundOverlap) -> String {
    match t4.verdict {
        OverlapVerdict::Undetermined => format!(
            "the compile lasted {} evals; at least {} are needed to judge",
            fmt_number(t4.undisturbed_fit, 1),
            probe::OVERLAP_MIN_EVALS
        ),
        OverlapVerdict::Serialized => "no foreground eval completed inside the compile".into(),
        OverlapVerdict::Overlapped | OverlapVerdict::PartlyOverlapped => format!(
            "the foreground kept {}% of its eval rate during the compile",
            fmt_number(100.0 * t4.kept_rate, 0)
        ),
    }
}

fn loaded_text(loaded: &probe::LoadedAtOnce) -> String {
    match &loaded.stopped_by {
        None => format!("{} (the cap; none failed, all verified)", loaded.loaded),
        Some(error) => format!("{} (then {error})", loaded.loaded),
    }
}

/// The sweep's banner and column headings, printed before the first row is measured.
pub fn peak_header(
    device: &DeviceInfo,
    simulated: bool,
    clock_simulated: bool,
    peak: &PeakFlops,
    depth_divisor: usize,
    warmup: usize,
    timed: usize,
) -> String {
    let mut out = header("peak", device, simulated, clock_simulated);
    let _ = writeln!(
        out,
        "peak: {}",
        match peak {
            PeakFlops::Unknown => "unknown (no % of peak)".to_string(),
            PeakFlops::Measured(v) => format!(
                "{:.1} GFLOPS, measured on the spot (FMA loop on every core)",
                v / 1e9
            ),
            PeakFlops::Rated(v) => format!("{:.2} TFLOPS, rated", v / 1e12),
        }
    );
    if depth_divisor > 1 {
        let _ = writeln!(
            out,
            "SCALED DOWN: chains are 1/{depth_divisor} of the original depth (--depth-divisor 1 runs the original sizes)"
        );
    }
    let _ = writeln!(
        out,
        "{warmup} warm-up + {timed} timed evals per row; every chain verified; FLOP = 2*C_in*C_out*S per conv\n"
    );
    let _ = write!(
        out,
        "{:<24} {:>8} {:>9} {:>30} {:>8} {:>7}",
        "Config", "W (MiB)", "GFLOP", "ms/eval (min / median / max)", "TFLOPS", "% peak"
    );
    out
}

/// One row of the sweep's table.
pub fn peak_row_line(row: &PeakRow) -> String {
    let evals = format!(
        "{} / {} / {}",
        fmt_ms(row.eval.min),
        fmt_ms(row.eval.median),
        fmt_ms(row.eval.max)
    );
    format!(
        "{:<24} {:>8.2} {:>9.3} {:>30} {:>8.4} {:>7}",
        row.shape.to_string(),
        row.shape.weight_mib(),
        row.shape.gflop(),
        evals,
        row.tflops(),
        row.percent_of_peak
            .map_or("-".to_string(), |p| format!("{p:.1}"))
    )
}
