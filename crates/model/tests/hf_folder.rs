//! A Hugging Face folder whose weights are split over shards reads as the one-file folder,
//! and an index may not point outside its folder. The fixture is the one transformers saved
//! for `tests/hf_folder.rs` (see `tests/fixtures/hf/make_fixtures.py`).

use anetrain_model::io::hf::read_folder;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn llama() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf/llama")
}

/// `dir` with the fixture's config and its tensors in two shards and an index.
fn sharded(dir: &std::path::Path, shard_names: [&str; 2]) {
    std::fs::copy(llama().join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(llama().join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    let mut weight_map = BTreeMap::new();
    for (i, half) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let views: Vec<(String, TensorView)> = half
            .iter()
            .map(|n| (n.to_string(), file.tensor(n).unwrap()))
            .collect();
        let shard = safetensors::serialize(views, None).unwrap();
        std::fs::write(dir.join(shard_names[i]), shard).unwrap();
        for n in half {
            weight_map.insert(n.to_string(), shard_names[i].to_string());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn a_sharded_folder_reads_as_the_whole_one() {
    let whole = read_folder(&llama()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    sharded(
        dir.path(),
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ],
    );
    let parts = read_folder(dir.path()).unwrap();
    assert_eq!(parts.data, whole.data);
    assert_eq!(parts.layout.config.dim, whole.layout.config.dim);

    // A shard missing from the folder is named.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = read_folder(dir.path()).unwrap_err().to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn an_index_may_not_point_outside_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path(), ["a.safetensors", "b.safetensors"]);
    let index = dir.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        text.replace("\"b.safetensors\"", "\"../b.safetensors\""),
    )
    .unwrap();
    let err = read_folder(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("shard `../b.safetensors` is not a file name in the folder"),
        "{err}"
    );
}
