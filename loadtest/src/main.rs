//! `callbridge-loadtest` (in progress).
fn main() {}
