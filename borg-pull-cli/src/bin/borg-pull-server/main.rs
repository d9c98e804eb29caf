//! borg-pull-server (being written).
fn main() {}
