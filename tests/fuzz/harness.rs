// The #[test] functions of the fuzz targets, included by `tests/fuzz.rs`
// and by `fuzz/tests/fuzz.rs` so that both harnesses name them alike (the
// corpus of a target is found by its name).

use bolero::check;

#[test]
fn frames() {
    check!().for_each(targets::frames);
}

#[test]
fn methods() {
    check!().for_each(targets::methods);
}

#[test]
fn properties() {
    check!().for_each(targets::properties);
}

#[test]
fn field_tables() {
    check!().for_each(targets::field_tables);
}

#[test]
fn oracle() {
    check!().for_each(targets::oracle);
}

#[test]
fn topic() {
    check!().with_type::<targets::TopicCase>().for_each(targets::topic);
}

#[test]
fn connection() {
    check!().with_type::<targets::Script>().for_each(targets::connection);
}
