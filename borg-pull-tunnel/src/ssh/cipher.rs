//! Which symmetric cipher we offer the client's sshd, and in what order.
//!
//! The client (russh) picks the first cipher of its own list that the server also offers, so our
//! order decides. With hardware AES (and carry-less multiply for GCM's hash) AES-GCM costs both
//! ends far less CPU per byte than chacha20-poly1305 (benches/RESULTS.md, "Cipher"); without it
//! chacha20-poly1305 is the cheaper one, as OpenSSH's own default order assumes. Every name here is
//! in OpenSSH's default `Ciphers`, and both of russh's crypto backends (aws-lc-rs, ring) implement
//! all of them.

use std::borrow::Cow;

use russh::cipher::{self, Name};

/// What `--cipher` / `cipher = "..."` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CipherChoice {
    /// The cheaper cipher for this CPU first, the others after it (any of them may be chosen by a
    /// server that offers only some).
    #[default]
    Auto,
    /// Only `chacha20-poly1305@openssh.com`.
    Chacha20Poly1305,
    /// Only `aes128-gcm@openssh.com`.
    Aes128Gcm,
    /// Only `aes256-gcm@openssh.com`.
    Aes256Gcm,
}

/// The values `--cipher` and `cipher =` accept, for messages.
pub(crate) const ACCEPTED: &str = "auto, chacha20-poly1305, aes128-gcm or aes256-gcm";

impl std::str::FromStr for CipherChoice {
    type Err = String;

    /// The short names; the SSH names (`aes128-gcm@openssh.com`) are accepted too, as they appear
    /// in sshd_config and `ssh -Q cipher`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let short = s.strip_suffix("@openssh.com").unwrap_or(s);
        match short {
            "auto" if short == s => Ok(Self::Auto),
            "chacha20-poly1305" => Ok(Self::Chacha20Poly1305),
            "aes128-gcm" => Ok(Self::Aes128Gcm),
            "aes256-gcm" => Ok(Self::Aes256Gcm),
            _ => Err(format!("unknown cipher {s:?}: expected {ACCEPTED}")),
        }
    }
}

impl std::fmt::Display for CipherChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Chacha20Poly1305 => "chacha20-poly1305",
            Self::Aes128Gcm => "aes128-gcm",
            Self::Aes256Gcm => "aes256-gcm",
        })
    }
}

/// With hardware AES first: aes128-gcm costs least (10 AES rounds to aes256's 14; measured in
/// benches/RESULTS.md), then the other AEADs, then the CTR modes russh offers by default (for an
/// old sshd without any AEAD).
const AES_FIRST: &[Name] = &[
    cipher::AES_128_GCM,
    cipher::AES_256_GCM,
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];

/// Without hardware AES: chacha20-poly1305 first (software AES-GCM is slower and not
/// constant-time in every implementation), as OpenSSH orders it.
const CHACHA_FIRST: &[Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_128_GCM,
    cipher::AES_256_GCM,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];

impl CipherChoice {
    /// What we offer, most preferred first: the one forced name, or for [`CipherChoice::Auto`] the
    /// order for this CPU.
    pub(crate) fn preferred(self) -> Cow<'static, [Name]> {
        match self {
            Self::Auto if hardware_aes() => Cow::Borrowed(AES_FIRST),
            Self::Auto => Cow::Borrowed(CHACHA_FIRST),
            Self::Chacha20Poly1305 => Cow::Borrowed(&[cipher::CHACHA20_POLY1305]),
            Self::Aes128Gcm => Cow::Borrowed(&[cipher::AES_128_GCM]),
            Self::Aes256Gcm => Cow::Borrowed(&[cipher::AES_256_GCM]),
        }
    }

    /// Whether one cipher was forced (then a server without it is refused, not negotiated with).
    pub fn is_forced(self) -> bool {
        self != Self::Auto
    }
}

/// Whether this CPU has the instructions that make AES-GCM cheap: AES rounds and the carry-less
/// multiply of GCM's hash (x86_64 AES-NI and PCLMULQDQ; aarch64's AES extension, which comes with
/// PMULL). Elsewhere we assume not.
pub fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for choice in [
            CipherChoice::Auto,
            CipherChoice::Chacha20Poly1305,
            CipherChoice::Aes128Gcm,
            CipherChoice::Aes256Gcm,
        ] {
            assert_eq!(choice.to_string().parse::<CipherChoice>(), Ok(choice));
        }
        assert_eq!(
            "aes128-gcm@openssh.com".parse::<CipherChoice>(),
            Ok(CipherChoice::Aes128Gcm)
        );
        let err = "aes128-ctr".parse::<CipherChoice>().unwrap_err();
        assert!(err.contains("\"aes128-ctr\"") && err.contains(ACCEPTED), "{err}");
        assert!("auto@openssh.com".parse::<CipherChoice>().is_err());
        assert!("".parse::<CipherChoice>().is_err());
    }

    #[test]
    fn a_forced_cipher_is_the_only_one_offered_and_auto_offers_all_three() {
        assert_eq!(
            &*CipherChoice::Chacha20Poly1305.preferred(),
            &[cipher::CHACHA20_POLY1305]
        );
        assert_eq!(&*CipherChoice::Aes256Gcm.preferred(), &[cipher::AES_256_GCM]);
        let auto = CipherChoice::Auto.preferred();
        let first = if hardware_aes() {
            cipher::AES_128_GCM
        } else {
            cipher::CHACHA20_POLY1305
        };
        assert_eq!(auto[0], first);
        for name in [
            cipher::CHACHA20_POLY1305,
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
        ] {
            assert!(auto.contains(&name), "{name:?} missing from {auto:?}");
        }
        assert!(!CipherChoice::Auto.is_forced() && CipherChoice::Aes128Gcm.is_forced());
    }

    // Both cases name the host, what we offered, what the sshd offered and the fix.
    #[test]
    fn a_cipher_the_sshd_lacks_is_named_with_the_fix() {
        let refused = |choice: CipherChoice, ours: &str| {
            crate::Error::CipherNotOffered {
                peer: crate::error::Peer::new("web1", 22),
                choice,
                ours: ours.into(),
                theirs: "chacha20-poly1305@openssh.com".into(),
            }
            .to_string()
        };
        let forced = refused(CipherChoice::Aes128Gcm, "aes128-gcm@openssh.com");
        assert_eq!(
            forced,
            "web1 port 22: the client's sshd does not offer the cipher aes128-gcm@openssh.com \
             (forced with --cipher aes128-gcm / cipher = \"aes128-gcm\") (it offers: \
             chacha20-poly1305@openssh.com); use the cipher auto (the default), or add it to \
             Ciphers in the client's sshd_config"
        );
        let auto = refused(CipherChoice::Auto, "aes128-gcm@openssh.com,aes256-ctr");
        assert!(
            auto.starts_with(
                "web1 port 22: the client's sshd does not offer any cipher we offer: \
                 aes128-gcm@openssh.com,aes256-ctr (it offers: chacha20-poly1305@openssh.com); add"
            ) && auto.ends_with("to Ciphers in the client's sshd_config"),
            "{auto}"
        );
    }
}
