//! Placeholder, replaced by the handoff benchmark.
fn main() {}
