//! borg-pull-relay (being written).
fn main() {}
