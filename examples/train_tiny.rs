//! Trains the `tiny` model for 400 steps on the embedded corpus (Jane Austen's six
//! novels) through the library, then samples from it: what `anetrain train` does, without the
//! run folder, the progress bar and the report.
//!
//! ```sh
//! cargo run --release --example train_tiny
//! ```

use anetrain_device::DeviceSpec;
use anetrain_model::generate::{generate, Sampler};
use anetrain_model::init::init_params;
use anetrain_model::{ModelConfig, ParamLayout};
use anetrain_train::data::{TokenIds, TokenSplit, TrainingWindows};
use anetrain_train::delivery::Strategy;
use anetrain_train::tokenizer::default_tokenizer;
use anetrain_train::trainer::{
    train, DeliverySettings, Event, TrainOptions, TrainSetup, TrainState,
};
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = ModelConfig::tiny(); // 4 layers, width 128, 1024 tokens, windows of 128

    // The data: the corpus in the ids of a 1024-token BPE trained on it (a few seconds), the
    // last 5 % held out for validation, training windows drawn from the rest by a seeded sampler.
    let tokenizer = default_tokenizer()?;
    let ids = tokenizer.encode(anetrain_train::embedded_corpus())?;
    let source = "the embedded corpus";
    let tokens = TokenIds::from_ids(&ids, config.vocab, source)?;
    let split = TokenSplit::DEFAULT_VAL_FRACTION;
    let dataset = TokenSplit::new(tokens, source, config.vocab, config.seq_len, split)?;
    let options = TrainOptions {
        steps: 400,
        warmup: 20,
        eval_every: 200,
        ..TrainOptions::default()
    };
    let mut windows = TrainingWindows::new(dataset, options.seed)?;

    // The CPU device in fp32; `DeviceSpec { kind: DeviceKind::Ane, .. }` is the Neural Engine.
    let open = DeviceSpec::default().open()?;
    let params = init_params(Arc::new(ParamLayout::new(&config)), options.seed);
    let mut state = TrainState::new(params, &options, open.mode);
    let setup = TrainSetup {
        device: &*open.device,
        clock: &*open.clock,
        // Compile the next weights in the background while the current ones evaluate.
        delivery: DeliverySettings::new(Strategy::DoubleBuffer),
        simulate_host_time: false,
        stop_after: None,
        halt: None,
    };

    println!(
        "training {} ({} parameters) on {} for {} steps",
        config.name,
        state.params.data.len(),
        open.device.info().name,
        options.steps
    );
    let started = std::time::Instant::now();
    train(
        &setup,
        &options,
        &mut state,
        &mut windows,
        None,
        &mut |event| match event {
            Event::Step(r) if r.step % 100 == 0 => {
                println!("step {:3}: loss {:.3}", r.step, r.loss)
            }
            Event::Validation { step, loss, .. } => {
                println!("step {step:3}: validation loss {loss:.3}")
            }
            _ => {}
        },
    )?;
    println!("trained in {:.1} s", started.elapsed().as_secs_f64());

    let prompt = tokenizer.encode("It is a truth universally acknowledged")?;
    let mut sampler = Sampler::new(0.8, 0.9, options.seed).within(tokenizer.vocab_size());
    let mut text = prompt.clone();
    text.extend(generate(&state.params, &prompt, 40, &mut sampler, &[]));
    println!("sample: {}", tokenizer.decode(&text)?.replace('\n', " "));
    Ok(())
}
