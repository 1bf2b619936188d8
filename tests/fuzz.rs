//! The fuzz targets under plain `cargo test`: each replays its corpus
//! (`tests/fuzz/__fuzz__/<target>/corpus`, grown by the campaigns of
//! `scripts/fuzz.sh`) and then runs a second of random inputs. The targets
//! themselves are in `fuzz/targets.rs`.

#[path = "fuzz/targets.rs"]
mod targets;

include!("fuzz/harness.rs");
