//! Replays the fuzz corpus on stable Rust: every committed input of `webhook/fuzz/corpus/` (the
//! seeds and what fuzzing runs kept, including inputs that once found a bug) must hold the
//! admission properties of `rolebridge_webhook::admission::fuzzing`.

use std::path::Path;

#[test]
fn the_committed_fuzz_corpus_holds_the_admission_properties() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/admission");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 10,
        "the corpus lost its seeds: {}",
        inputs.len()
    );
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        let replay =
            std::panic::catch_unwind(|| rolebridge_webhook::admission::fuzzing::check(&data));
        assert!(replay.is_ok(), "{} fails the properties", path.display());
    }
    eprintln!("replayed {} corpus inputs", inputs.len());
}
