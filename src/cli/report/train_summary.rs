//! A training part's figures, read from its run's `metrics.jsonl` and `report.json`.

use anetrain_train::run::folder;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// How a short training run went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub first_loss: f64,
    /// The mean over the last ten steps (all of a shorter run).
    #[serde(deserialize_with = "nan_if_null")]
    pub final_loss: f64,
    /// The last validation loss.
    pub val_loss: Option<f64>,
    #[serde(deserialize_with = "nan_if_null")]
    pub median_ms_per_step: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub median_tokens_per_s: f64,
    /// Steps' time waiting for a compile, summed.
    #[serde(deserialize_with = "nan_if_null")]
    pub stall_ms: f64,
    /// Updates skipped for fp16 overflow.
    pub skipped_updates: u64,
    /// How many updates the device's weights lagged, over the steps.
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_staleness: f64,
    pub max_staleness: u64,
    /// The run's efficiency report (its `report.json`): wall time, where it went, compiles,
    /// swaps, failed compiles.
    pub efficiency: Option<Value>,
}

/// JSON has no NaN: a figure that was NaN (a diverged loss) is written as `null`, and read
/// back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Steps the final loss is the mean of.
const FINAL_WINDOW: usize = 10;

impl TrainSummary {
    /// The summary of the run in `dir`, from its `metrics.jsonl` (a line torn by a crash is
    /// passed over) and its efficiency report.
    pub fn of_run(dir: &Path) -> Result<TrainSummary, String> {
        let path = dir.join(folder::METRICS);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut summary = TrainSummary::of_metrics(&text)
            .ok_or_else(|| format!("{} has no steps", path.display()))?;
        let path = dir.join(folder::REPORT_JSON);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        summary.efficiency = Some(
            serde_json::from_str(&text)
                .map_err(|e| format!("{} is not JSON: {e}", path.display()))?,
        );
        Ok(summary)
    }

    /// The summary of `metrics.jsonl` text, or `None` without a step.
    pub fn of_metrics(text: &str) -> Option<TrainSummary> {
        let rows: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let of_type = |t: &'static str| rows.iter().filter(move |r| r["type"] == t);
        let number = |r: &Value, key: &str| r[key].as_f64().unwrap_or(f64::NAN);
        let steps: Vec<&Value> = of_type("step").collect();
        let losses: Vec<f64> = steps.iter().map(|r| number(r, "loss")).collect();
        let tail = &losses[losses.len().saturating_sub(FINAL_WINDOW)..];
        let lags: Vec<u64> = steps
            .iter()
            .map(|r| r["staleness"].as_u64().unwrap_or(0))
            .collect();
        let summary = TrainSummary {
            steps: steps.len() as u64,
            first_loss: *losses.first()?,
            final_loss: tail.iter().sum::<f64>() / tail.len() as f64,
            val_loss: of_type("val")
                .next_back()
                .and_then(|r| r["val_loss"].as_f64()),
            median_ms_per_step: median(steps.iter().map(|r| number(r, "ms")).collect()),
            median_tokens_per_s: median(steps.iter().map(|r| number(r, "tokens_per_s")).collect()),
            stall_ms: steps.iter().filter_map(|r| r["stall_ms"].as_f64()).sum(),
            skipped_updates: steps.iter().filter(|r| r["skipped"] == true).count() as u64,
            mean_staleness: lags.iter().sum::<u64>() as f64 / lags.len() as f64,
            max_staleness: lags.iter().copied().max().unwrap_or(0),
            efficiency: None,
        };
        Some(summary)
    }
}

/// The median (the upper one of an even count); NaN of nothing.
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_reads_every_step_and_validation_and_passes_over_a_torn_line() {
        let mut text = String::new();
        for (step, loss, ms, lag) in [(1, 7.0, 10.0, 0), (2, 6.0, 30.0, 1), (3, 5.0, 20.0, 2)] {
            text += &format!(
                r#"{{"type":"step","step":{step},"loss":{loss},"ms":{ms},"tokens_per_s":{},"stall_ms":1.5,"staleness":{lag},"skipped":{}}}"#,
                1000.0 / ms,
                step == 2
            );
            text.push('\n');
        }
        text += r#"{"type":"compile","kernels":21,"ms":4.0}
{"type":"compile","kernels":21,"ms":6.0}
{"type":"compile_failed","message":"x"}
{"type":"val","step":3,"val_loss":5.5}
{"type":"step","step":4,"lo"#;
        let s = TrainSummary::of_metrics(&text).unwrap();
        assert_eq!(s.steps, 3);
        assert_eq!((s.first_loss, s.final_loss), (7.0, 6.0));
        assert_eq!(s.val_loss, Some(5.5));
        assert_eq!(s.median_ms_per_step, 20.0);
        assert_eq!(s.median_tokens_per_s, 50.0);
        assert_eq!(s.stall_ms, 4.5);
        assert_eq!(s.skipped_updates, 1);
        assert_eq!((s.mean_staleness, s.max_staleness), (1.0, 2));
    }

    #[test]
    fn a_diverged_loss_survives_the_trip_through_json_as_nan() {
        let text = "{\"type\":\"step\",\"loss\":null,\"ms\":2}\n";
        let s = TrainSummary::of_metrics(text).unwrap();
        assert!(s.first_loss.is_nan() && s.final_loss.is_nan());
        let back: TrainSummary = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert!(back.first_loss.is_nan());
        assert_eq!(back.median_ms_per_step, 2.0);
    }

    #[test]
    fn metrics_without_a_step_have_no_summary() {
        assert_eq!(TrainSummary::of_metrics(""), None);
        assert_eq!(
            TrainSummary::of_metrics(r#"{"type":"compile","kernels":21,"ms":4.0}"#),
            None
        );
    }

    #[test]
    fn the_final_loss_is_the_mean_of_the_last_ten_steps() {
        let text: String = (1..=20)
            .map(|i| format!("{{\"type\":\"step\",\"loss\":{i},\"ms\":1}}\n"))
            .collect();
        let s = TrainSummary::of_metrics(&text).unwrap();
        assert_eq!(s.final_loss, 15.5); // mean of 11..=20
    }
}
