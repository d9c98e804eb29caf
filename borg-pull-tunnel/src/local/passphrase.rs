//! The repository passphrase: where it comes from on the server, and how it is kept.
//!
//! It reaches borg on the client as a line on its channel's stdin, never in an argv or a file; in
//! our memory it is zeroed when dropped. The environment is not read here: the caller passes
//! what it read ([`SecretSources`], filled by [`crate::jobs::pull::PullEnv`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use zeroize::Zeroizing;

use crate::local::secret::SecretString;
use crate::{Error, Result};

/// The repository passphrase: a [`SecretString`] (zeroed when dropped, redacted when formatted)
/// known to be one line, as borg on the client reads it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Passphrase(SecretString);

/// Where a passphrase may come from, in this order of preference.
#[derive(Clone, Default)]
pub struct SecretSources {
    /// A file holding it (first line); must be private to its owner.
    pub file: Option<PathBuf>,
    /// The value of the server's `BORG_PASSPHRASE`.
    pub passphrase: Option<OsString>,
    /// The server's `BORG_PASSCOMMAND` (run with `sh -c`, its output is the passphrase).
    pub passcommand: Option<OsString>,
}

impl std::fmt::Debug for SecretSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSources")
            .field("file", &self.file)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "<redacted>"))
            .field("passcommand", &self.passcommand)
            .finish()
    }
}

impl Passphrase {
    /// Wraps a passphrase; it must be a single line (it is read with `read -r` on the client).
    pub fn new(passphrase: impl Into<String>) -> Result<Self> {
        Self::checked(SecretString::new(passphrase))
    }

    fn checked(secret: SecretString) -> Result<Self> {
        if secret.as_str().contains(['\n', '\0']) {
            return Err(Error::Passphrase(
                "it contains a newline or NUL byte, which cannot be passed on".into(),
            ));
        }
        Ok(Self(secret))
    }

    /// The passphrase itself.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The passphrase from the first source that is set: the file, `BORG_PASSPHRASE`, or the
    /// output of `BORG_PASSCOMMAND`. `None` if none is (an unencrypted repository, or a client
    /// with its own `BORG_PASSCOMMAND`).
    pub async fn from_sources(sources: &SecretSources) -> Result<Option<Self>> {
        if let Some(path) = &sources.file {
            return read_file(path).await.map(Some);
        }
        if let Some(p) = &sources.passphrase {
            let p = p
                .clone()
                .into_string()
                .map_err(|_| Error::Passphrase("BORG_PASSPHRASE is not valid UTF-8".into()))?;
            return Self::new(p).map(Some);
        }
        match sources.passcommand.as_ref().filter(|c| !c.is_empty()) {
            Some(command) => run_passcommand(command).await.map(Some),
            None => Ok(None),
        }
    }
}

async fn read_file(path: &Path) -> Result<Passphrase> {
    let path = path.to_owned();
    // Small and bounded, but still file I/O: keep it off the runtime's threads.
    let line = tokio::task::spawn_blocking(move || {
        crate::local::secret_file::read_secret_line(&path, crate::error::SecretKind::RepoPassphrase)
    })
    .await
    .map_err(|source| Error::BackgroundTask {
        task: "reading the passphrase file",
        source,
    })??;
    Passphrase::checked(line)
}

async fn run_passcommand(command: &OsString) -> Result<Passphrase> {
    let out = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .map_err(|e| Error::Passphrase(format!("cannot run BORG_PASSCOMMAND: {e}")))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(Error::Passphrase(format!(
            "BORG_PASSCOMMAND failed: {}",
            out.status
        )));
    }
    let text = std::str::from_utf8(&stdout)
        .map_err(|_| Error::Passphrase("BORG_PASSCOMMAND printed invalid UTF-8".into()))?;
    Passphrase::new(strip_newline(text.to_owned()))
}

/// Removes one trailing `\n` or `\r\n`.
fn strip_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_rules() {
        assert!(Passphrase::new("a\nb").is_err());
        assert_eq!(
            format!("{:?}", Passphrase::new("secret").unwrap()),
            "Passphrase(SecretString(<redacted>))"
        );
        assert_eq!(strip_newline("x\r\n".into()), "x");
        let sources = SecretSources {
            passphrase: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{sources:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn sources_in_order() {
        let none = Passphrase::from_sources(&SecretSources::default()).await.unwrap();
        assert!(none.is_none());
        let both = SecretSources {
            passphrase: Some("from-env".into()),
            passcommand: Some("echo from-command".into()),
            ..Default::default()
        };
        let p = Passphrase::from_sources(&both).await.unwrap().unwrap();
        assert_eq!(p.expose(), "from-env");
        let command = SecretSources {
            passcommand: Some("printf 'from-command\\n'".into()),
            ..Default::default()
        };
        let p = Passphrase::from_sources(&command).await.unwrap().unwrap();
        assert_eq!(p.expose(), "from-command");
    }
}
