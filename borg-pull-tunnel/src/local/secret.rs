//! The one type for a secret in memory (a passphrase): [`SecretString`]. Every secret the crate
//! holds is one of these, whether it came from a file ([`crate::local::secret_file`]), the
//! environment or a command ([`crate::local::passphrase`]), so the rules below hold everywhere.

use zeroize::Zeroizing;

/// A secret (a passphrase) in memory: wiped when dropped, and shown as `<redacted>` by both
/// `Debug` and `Display`, so formatting options, errors or log lines cannot leak it.
///
/// `Clone` because the options that carry it are; every copy is wiped when dropped. Compared in
/// plain (not constant) time: only options and tests compare secrets, never a peer.
///
/// ```
/// use borg_pull_tunnel::local::secret::SecretString;
/// let secret = SecretString::new("hunter2");
/// assert_eq!(format!("{secret} {secret:?}"), "<redacted> SecretString(<redacted>)");
/// assert_eq!(secret.as_str(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Takes ownership of `secret` (no copy is made of a `String`).
    pub fn new(secret: impl Into<String>) -> Self {
        SecretString(Zeroizing::new(secret.into()))
    }

    /// The secret, for handing it to what needs it (an SSH key decoder, borg's stdin).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Zeroizing<String>> for SecretString {
    fn from(secret: Zeroizing<String>) -> Self {
        SecretString(secret)
    }
}

impl From<String> for SecretString {
    fn from(secret: String) -> Self {
        SecretString(Zeroizing::new(secret))
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl std::fmt::Display for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_strings_do_not_show_in_debug_or_display() {
        let secret = SecretString::new("hunter2");
        assert_eq!(format!("{secret:?}"), "SecretString(<redacted>)");
        assert_eq!(format!("{secret:#?}"), "SecretString(<redacted>)");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{secret:>20}"), "<redacted>");
        assert_eq!(
            format!("{:?}", Some(secret.clone())),
            "Some(SecretString(<redacted>))"
        );
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Options {
            passphrase: SecretString,
        }
        let options = format!(
            "{:#?}",
            Options {
                passphrase: secret.clone()
            }
        );
        assert!(!options.contains("hunter2"), "{options}");
        assert_eq!(secret.as_str(), "hunter2");
        assert!(!secret.is_empty() && SecretString::new("").is_empty());
        let from_file: SecretString = Zeroizing::new("x".to_owned()).into();
        assert_eq!(from_file.as_str(), "x");
        assert_eq!(SecretString::from(String::from("y")).as_str(), "y");
    }
}
