//! Placeholder, replaced by the ring benchmark.
fn main() {}
