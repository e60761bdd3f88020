//! Replays the fuzzing inputs kept in the repository through the fuzz targets' code paths:
//! every crashing input kept after its fix (`fuzz/regressions/<target>/`) and the seed corpus
//! (`fuzz/corpus/<target>/`). The harness is the very file the fuzz targets use.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every file of `fuzz/<folder>/<target>/` through its target; returns how many ran.
fn replay(folder: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(folder);
    let mut count = 0;
    for target in harness::TARGETS {
        for file in files(&root.join(target)) {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| harness::run(target, &data));
            match outcome {
                Ok(known) => assert!(known, "unknown target {target}"),
                Err(_) => panic!("{target}: {} panics", file.display()),
            }
            count += 1;
        }
    }
    count
}

#[test]
fn kept_crashing_inputs_are_handled() {
    assert!(replay("regressions") > 0, "fuzz/regressions/ is empty");
}

#[test]
fn the_seed_corpus_runs_through_every_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for target in harness::TARGETS {
        assert!(
            !files(&root.join(target)).is_empty(),
            "no seeds for {target} (run fuzz/make_seeds.py)"
        );
    }
    assert!(replay("corpus") >= harness::TARGETS.len());
}

#[test]
fn options_bytes_round_trip() {
    for gbk in [false, true] {
        for bom in [false, true] {
            for paths in 0..3 {
                for mapping in 0..harness::MAPPINGS.len() {
                    let o = harness::Options {
                        gbk,
                        bom,
                        paths,
                        mapping,
                    };
                    let b = harness::options_byte(o);
                    assert_eq!(harness::split_options(&[b]).map(|(o, _)| o), Some(o));
                }
            }
        }
    }
}

#[test]
fn the_seeds_decode_and_map_as_intended() {
    // The seeds are meant to reach the mapper with a well-formed record: each JSON seed's
    // first record maps without error (so fuzzing starts from deep inside the code path).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_json");
    let mut mapped = 0;
    for file in files(&root) {
        let data = std::fs::read(&file).unwrap();
        if harness::first_record_maps("decode_json", &data) == Some(true) {
            mapped += 1;
        } else {
            panic!("{} does not map", file.display());
        }
    }
    assert!(mapped > 0);
}
