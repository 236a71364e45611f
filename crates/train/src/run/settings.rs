//! How a run was started besides its model, its tokenizer and its [`TrainOptions`]: kept in
//! its checkpoints so that `--resume` continues the run as it was.
//!
//! [`TrainOptions`]: crate::trainer::TrainOptions

use crate::checkpoint::CheckpointHeader;
use crate::data::examples::{ExampleOptions, LongExamples};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A flag or config-file setting given again overrides the saved one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSettings {
    pub device: Option<String>,
    pub precision: Option<String>,
    /// Saved as an absolute path, so that a run resumes from any directory.
    pub data: Option<PathBuf>,
    pub weights: Option<String>,
    pub max_staleness: Option<u64>,
    pub max_compile_failures: Option<u32>,
    /// Fine-tuning data: train only on completions and assistant turns.
    pub mask_prompt: Option<bool>,
    /// Fine-tuning data: several examples per window.
    pub pack: Option<bool>,
    /// Fine-tuning data: what to do with an example longer than a window.
    pub long_examples: Option<LongExamples>,
}

impl RunSettings {
    /// How the run a checkpoint comes from was started (nothing, for a checkpoint written
    /// before checkpoints kept it).
    pub fn saved_in(header: &CheckpointHeader) -> RunSettings {
        header.run.clone().unwrap_or_default()
    }

    /// These settings, each missing one taken from `saved`.
    pub fn or(self, saved: RunSettings) -> RunSettings {
        RunSettings {
            device: self.device.or(saved.device),
            precision: self.precision.or(saved.precision),
            data: self.data.or(saved.data),
            weights: self.weights.or(saved.weights),
            max_staleness: self.max_staleness.or(saved.max_staleness),
            max_compile_failures: self.max_compile_failures.or(saved.max_compile_failures),
            mask_prompt: self.mask_prompt.or(saved.mask_prompt),
            pack: self.pack.or(saved.pack),
            long_examples: self.long_examples.or(saved.long_examples),
        }
    }

    /// How fine-tuning examples become windows under these settings.
    pub fn example_options(&self) -> ExampleOptions {
        let default = ExampleOptions::default();
        ExampleOptions {
            mask_prompt: self.mask_prompt.unwrap_or(default.mask_prompt),
            pack: self.pack.unwrap_or(default.pack),
            long_examples: self.long_examples.unwrap_or(default.long_examples),
        }
    }
}

/// Refuses example settings that cannot apply: one that asks for something (masking, no
/// packing, refusing long examples) on data that is not fine-tuning examples, and on a resume
/// (`saved` holds the resumed run's settings) one that differs from how its examples were
/// made, since its windows would change under it.
pub fn check_example_settings(
    given: &RunSettings,
    saved: Option<&RunSettings>,
    data: Option<&std::path::Path>,
) -> Result<(), String> {
    if let Some(flag) = saved.and_then(|saved| given.differs_from(saved.example_options())) {
        return Err(format!(
            "{flag}: the resumed run made its windows otherwise, and a resumed run keeps them \
             (drop the setting, or start a new run)"
        ));
    }
    if let Some(flag) = given.differs_from(ExampleOptions::default()) {
        if !data.is_some_and(crate::data::examples::ExampleSet::is_examples) {
            return Err(format!(
                "{flag} applies to fine-tuning examples (--data with a .jsonl file or a folder \
                 with train.jsonl), not to {}",
                data.map_or("the embedded corpus".into(), |p| p.display().to_string())
            ));
        }
    }
    Ok(())
}

impl RunSettings {
    /// The flag (and configuration key) of the first example setting given here that asks
    /// for other than `options`.
    fn differs_from(&self, options: ExampleOptions) -> Option<&'static str> {
        [
            (
                self.mask_prompt.is_some_and(|m| m != options.mask_prompt),
                "--mask-prompt (mask_prompt)",
            ),
            (
                self.pack.is_some_and(|p| p != options.pack),
                "--no-pack (pack)",
            ),
            (
                self.long_examples
                    .is_some_and(|l| l != options.long_examples),
                "--long-examples (long_examples)",
            ),
        ]
        .into_iter()
        .find_map(|(differs, flag)| differs.then_some(flag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_settings_override_saved_ones_and_missing_ones_are_kept() {
        let saved = RunSettings {
            device: Some("cpu".into()),
            precision: Some("fp16".into()),
            data: Some("/data/tokens.bin".into()),
            weights: Some("recompile".into()),
            max_staleness: Some(2),
            max_compile_failures: Some(5),
            mask_prompt: Some(true),
            ..RunSettings::default()
        };
        let given = RunSettings {
            weights: Some("double-buffer".into()),
            max_staleness: Some(1),
            ..RunSettings::default()
        };
        let merged = given.or(saved.clone());
        assert_eq!(merged.weights.as_deref(), Some("double-buffer"));
        assert_eq!(merged.max_staleness, Some(1));
        assert_eq!(merged.precision, saved.precision);
        assert_eq!(merged.data, saved.data);
        assert_eq!(merged.max_compile_failures, Some(5));
    }
}
