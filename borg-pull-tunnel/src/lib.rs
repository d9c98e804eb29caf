//! The SSH side of borg-pull (being written).
#![warn(missing_docs)]
