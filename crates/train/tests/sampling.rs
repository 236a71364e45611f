//! The train/validation split and the windows drawn from it: deterministic, resumable, and never
//! crossing the split; the window source a run trains from.

use anetrain_train::data::{
    write_token_file, DataError, SamplerState, SplitMix64, TokenIds, TokenSplit, TrainingWindows,
    ValidationSource, WindowSampler, WindowSource,
};
use std::collections::HashSet;

/// Tokens whose value is their index (mod the vocabulary), so a window shows where it came from.
fn counting(n: usize, vocab: usize) -> TokenIds {
    let ids: Vec<u32> = (0..n).map(|i| (i % vocab) as u32).collect();
    TokenIds::from_ids(&ids, vocab, "counting").unwrap()
}

fn dataset(n: usize, seq: usize, val: f64) -> TokenSplit {
    TokenSplit::new(counting(n, 60_000), "counting", 60_000, seq, val).unwrap()
}

#[test]
fn splitmix64_matches_the_published_reference_outputs() {
    let mut rng = SplitMix64::new(1234567);
    let got: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
    assert_eq!(
        got,
        [
            6457827717110365317,
            3203168211198807973,
            9817491932198370423,
            4593380528125082431,
            16408922859458223821
        ]
    );
}

/// Pinned: checkpoints resume by these exact draws, so a change here breaks resumption.
/// Computed by an independent Python implementation of SplitMix64 + Lemire's method.
#[test]
fn the_window_draws_are_pinned() {
    let mut s = WindowSampler::new(42, 1000).unwrap();
    let starts: Vec<usize> = (0..8).map(|_| s.next_start()).collect();
    assert_eq!(starts, [741, 159, 278, 344, 38, 868, 218, 800]);
    assert_eq!(
        s.state().rng,
        serde_json::from_str::<SplitMix64>(r#"{"state":17418742259747381458}"#).unwrap()
    );
}

#[test]
fn the_split_takes_the_last_fraction_for_validation() {
    let d = dataset(10_000, 16, 0.05);
    assert_eq!(
        (d.train_len(), d.val_len(), d.split_index()),
        (9_500, 500, 9_500)
    );
    assert_eq!(d.window_len(), 17);
    assert_eq!(d.train_positions(), 9_500 - 17 + 1);
    let d = dataset(10_000, 16, 0.0);
    assert_eq!((d.train_len(), d.val_len()), (10_000, 0));
    assert_eq!(d.validation_windows().count(), 0);
}

#[test]
fn training_windows_never_cross_into_validation() {
    let d = dataset(1_000, 32, 0.1);
    let split = d.split_index();
    assert_eq!(split, 900);
    let mut sampler = d.sampler(7).unwrap();
    let mut starts = HashSet::new();
    for _ in 0..20_000 {
        let (start, window) = d.next_train_window(&mut sampler).unwrap();
        assert_eq!(window.len(), 33);
        assert!(
            start + 33 <= split,
            "window at {start} crosses the split {split}"
        );
        let expected: Vec<u32> = (start as u32..start as u32 + 33).collect();
        assert_eq!(window, expected);
        starts.insert(start);
    }
    // Every start is reachable, including the last one, which ends exactly at the split.
    assert_eq!(starts.len(), 900 - 33 + 1);
    assert!(starts.contains(&(900 - 33)));
    assert_eq!(d.train_window(900 - 32), None);
}

#[test]
fn validation_windows_are_consecutive_and_inside_the_validation_split() {
    let d = dataset(1_000, 9, 0.1);
    let windows: Vec<Vec<u32>> = d.validation_windows().collect();
    assert_eq!(windows.len(), 10); // 100 tokens, windows of 10
    assert_eq!(d.validation_window_count(), 10);
    for (k, w) in windows.iter().enumerate() {
        let first = 900 + 10 * k as u32;
        assert_eq!(*w, (first..first + 10).collect::<Vec<u32>>());
    }
    // A remainder shorter than a window is left out.
    let d = dataset(1_005, 9, 0.1);
    assert_eq!(d.val_len(), 100);
    let d = dataset(1_000, 14, 0.1);
    let windows: Vec<Vec<u32>> = d.validation_windows().collect();
    assert_eq!(windows.len(), 6);
    assert_eq!(windows[5][14], 900 + 6 * 15 - 1);
}

#[test]
fn the_same_seed_draws_the_same_windows_and_another_seed_does_not() {
    let d = dataset(50_000, 64, 0.05);
    let draw = |seed| {
        let mut s = d.sampler(seed).unwrap();
        (0..200).map(|_| s.next_start()).collect::<Vec<_>>()
    };
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
}

#[test]
fn a_restored_sampler_continues_exactly_like_an_uninterrupted_one() {
    let d = dataset(50_000, 64, 0.05);
    let mut uninterrupted = d.sampler(99).unwrap();
    let all: Vec<usize> = (0..300).map(|_| uninterrupted.next_start()).collect();

    // The first run draws 137 windows and saves its state through JSON, as a checkpoint does.
    let (head, saved) = {
        let mut first = d.sampler(99).unwrap();
        let head: Vec<usize> = (0..137).map(|_| first.next_start()).collect();
        (head, serde_json::to_string(&first.state()).unwrap())
    };
    let state: SamplerState = serde_json::from_str(&saved).unwrap();
    assert_eq!(state.drawn, 137);
    let mut resumed = d.restore_sampler(&state).unwrap();
    let tail: Vec<usize> = (0..163).map(|_| resumed.next_start()).collect();
    assert_eq!([head, tail].concat(), all);
    assert_eq!(resumed.state(), uninterrupted.state());
}

#[test]
fn a_sampler_state_from_other_data_is_refused() {
    let d = dataset(50_000, 64, 0.05);
    let state = d.sampler(1).unwrap().state();
    let other = dataset(50_000, 32, 0.05);
    let err = other.restore_sampler(&state).unwrap_err().to_string();
    assert_eq!(
        err,
        "sampler state: the saved sampler drew from 47436 window starts, this data set has \
         47468: not the same data or sequence length"
    );
    let mut wrong = state.clone();
    wrong.algorithm = "xorshift".into();
    assert!(d
        .restore_sampler(&wrong)
        .unwrap_err()
        .to_string()
        .contains("uses `xorshift`"));
    let mut foreign = other.sampler(1).unwrap();
    let err = d.next_train_window(&mut foreign).unwrap_err();
    assert!(matches!(err, DataError::SamplerMismatch(_)), "{err}");
    assert!(WindowSampler::new(1, 0).is_err());
}

#[test]
fn a_file_too_short_for_one_window_is_refused() {
    let err = TokenSplit::new(counting(128, 1024), "tiny.bin", 1024, 128, 0.0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tiny.bin: the file holds 128 tokens, too short for one window of seq+1 = 129 tokens"
    );
    // 129 tokens are exactly one window.
    let d = TokenSplit::new(counting(129, 1024), "tiny.bin", 1024, 128, 0.0).unwrap();
    assert_eq!(d.train_positions(), 1);
}

#[test]
fn each_split_must_hold_a_window() {
    let err = TokenSplit::new(counting(2_000, 1024), "d.bin", 1024, 128, 0.05).unwrap_err();
    assert_eq!(
        err.to_string(),
        "d.bin: the validation split (last 5%) holds 100 tokens, too short for one window of \
         seq+1 = 129 tokens"
    );
    let err = TokenSplit::new(counting(250, 1024), "d.bin", 1024, 128, 0.5).unwrap_err();
    assert_eq!(
        err.to_string(),
        "d.bin: the training split (first 50%) holds 125 tokens, too short for one window of \
         seq+1 = 129 tokens"
    );
    for bad in [-0.1, 1.0, f64::NAN] {
        let err = TokenSplit::new(counting(300, 1024), "d.bin", 1024, 8, bad).unwrap_err();
        assert!(err.to_string().contains("validation fraction"), "{err}");
    }
}

#[test]
fn opening_a_file_checks_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.bin");
    let ids: Vec<u32> = (0..3000).map(|i| i % 1000).collect();
    write_token_file(&path, &ids, 1024).unwrap();
    let d = TokenSplit::open(&path, 1024, 64, 0.05).unwrap();
    assert_eq!(d.train_len() + d.val_len(), 3000);
    assert_eq!(d.source(), path.display().to_string());
    let err = TokenSplit::open(&path, 512, 64, 0.05).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: token 512 is 512, outside the vocabulary of 512 tokens (ids 0..=511)",
            path.display()
        )
    );
}

/// The window source of a run draws the data set's windows in its sampler's order, and a
/// checkpoint's state (as JSON) continues it exactly.
#[test]
fn dataset_windows_draw_the_samplers_windows_and_resume_from_their_state() {
    let d = dataset(50_000, 64, 0.05);
    let mut windows = TrainingWindows::new(d.clone(), 5).unwrap();
    let mut sampler = d.sampler(5).unwrap();
    let mut out = vec![0u32; 65];
    for _ in 0..20 {
        windows.next_train_window(&mut out);
        let (_, expected) = d.next_train_window(&mut sampler).unwrap();
        assert_eq!(out, expected);
    }
    let saved = windows.state();
    let json = serde_json::to_string(&saved).unwrap();
    let mut resumed =
        TrainingWindows::restore(d.clone(), &serde_json::from_str(&json).unwrap()).unwrap();
    let mut again = vec![0u32; 65];
    for _ in 0..20 {
        windows.next_train_window(&mut out);
        resumed.next_train_window(&mut again);
        assert_eq!(out, again);
    }
    // Another data set's state, or a state this build does not write, is refused by name.
    let other = dataset(50_000, 32, 0.05);
    let err = TrainingWindows::restore(other, &saved).unwrap_err();
    assert!(matches!(err, DataError::SamplerMismatch(_)), "{err}");
    let old = serde_json::json!({ "rng": "12345" });
    let err = TrainingWindows::restore(d, &old).unwrap_err();
    assert!(
        err.to_string().contains("not one this build writes"),
        "{err}"
    );
}

#[test]
fn validation_windows_by_index_are_the_splits_windows_in_order_and_wrap() {
    let d = dataset(1_000, 9, 0.1);
    let all: Vec<Vec<u32>> = d.validation_windows().collect();
    assert_eq!(ValidationSource::validation_window_count(&d), all.len());
    let mut out = vec![0u32; 10];
    for (i, expected) in all.iter().enumerate() {
        d.validation_window(i, &mut out);
        assert_eq!(&out, expected, "window {i}");
    }
    d.validation_window(all.len(), &mut out);
    assert_eq!(out, all[0], "index past the count wraps round");
}

#[test]
fn a_whole_file_validates_and_has_no_training_windows() {
    let d = TokenSplit::validation_only(counting(95, 1024), "eval.bin", 1024, 9).unwrap();
    assert_eq!(ValidationSource::validation_window_count(&d), 9);
    let mut out = vec![0u32; 10];
    d.validation_window(0, &mut out);
    assert_eq!(out, (0..10).collect::<Vec<u32>>());
    d.validation_window(8, &mut out);
    assert_eq!(out, (80..90).collect::<Vec<u32>>());
    assert_eq!(d.train_positions(), 0);
    assert!(TrainingWindows::new(d, 1).is_err());
    let short = TokenSplit::validation_only(counting(9, 1024), "eval.bin", 1024, 9).unwrap_err();
    assert!(
        short.to_string().contains("too short for one window"),
        "{short}"
    );
    let bad = TokenSplit::validation_only(counting(95, 1024), "eval.bin", 50, 9).unwrap_err();
    assert!(matches!(bad, DataError::TokenOutOfRange { .. }), "{bad}");
}
