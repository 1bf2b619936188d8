//! The fuzz targets of `tests/fuzz.rs`, built in a package of their own so
//! that cargo-bolero can instrument them for libFuzzer without touching the
//! main crate's other test binaries. Run by `scripts/fuzz.sh`.

#[path = "../../tests/fuzz/targets.rs"]
mod targets;

include!("../../tests/fuzz/harness.rs");
