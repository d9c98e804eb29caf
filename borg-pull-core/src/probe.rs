//! Asking a borg program its version (`borg --version`), kept apart from [`crate::version`]: the
//! error enum names a [`BorgVersion`] in its variants, so the version's own module stays below
//! the error module and only this probe (which fails with an [`Error`]) sits above both.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::version::BorgVersion;
use crate::{Error, Result};

impl BorgVersion {
    /// Runs `program --version` and parses what it prints.
    ///
    /// Blocking (borg's start-up, a fraction of a second); done once per program at start-up.
    pub fn probe(program: &Path) -> Result<Self> {
        let output = Command::new(program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::SpawnBorgVersion {
                program: program.to_owned(),
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        match Self::parse(&text) {
            Some(v) if output.status.success() => Ok(v),
            _ => Err(Error::BorgVersionUnknown {
                program: program.to_owned(),
                output: crate::text::escape_lines(
                    &[&output.stdout[..], &output.stderr[..]].concat(),
                    crate::limits::LOG_LINE_MAX,
                ),
            }),
        }
    }
}
