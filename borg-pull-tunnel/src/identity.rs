//! Loading the private key we log in with.
//!
//! `russh::keys::load_secret_key` (ssh-key 0.7.0-rc.11 underneath) rejects an ECDSA P-256 key whose
//! private scalar is shorter than 32 bytes, which OpenSSH writes as a short `mpint` (about 1 key in
//! 512 from `ssh-keygen -t ecdsa`; error "length invalid"). For unencrypted keys we re-encode the
//! scalar zero-padded to 32 bytes, which ssh-key accepts; encrypted keys with that property
//! cannot be repaired this way and are reported as they are (use an ed25519 key).

use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use russh::keys::PrivateKey;

use crate::error::SecretKind;
use crate::{Error, Result};

const MAGIC: &[u8] = b"openssh-key-v1\0";
const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const END: &str = "-----END OPENSSH PRIVATE KEY-----";

/// Refuses a secret file that group or others may read, as OpenSSH does for private keys: a
/// secret in such a file is already leaked, and using it would hide that.
pub fn ensure_private(path: &Path, kind: SecretKind) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // A missing or unreadable file is reported by whoever reads it, with its own context.
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::SecretFileTooOpen {
            kind,
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Loads `path` (decrypting with `passphrase` if it is encrypted), working around ssh-key's
/// short-scalar ECDSA bug for unencrypted keys. Refuses a key others can read.
pub fn load(path: &Path, passphrase: Option<&str>) -> Result<PrivateKey> {
    ensure_private(path, SecretKind::Identity)?;
    match russh::keys::load_secret_key(path, passphrase) {
        Ok(key) => Ok(key),
        Err(russh::keys::Error::KeyIsEncrypted) => Err(Error::IdentityEncrypted {
            path: path.to_owned(),
        }),
        Err(source) => {
            let repaired = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| pad_short_p256_scalar(&text))
                .and_then(|text| russh::keys::decode_secret_key(&text, None).ok());
            repaired.ok_or(Error::Identity {
                path: PathBuf::from(path),
                source,
            })
        }
    }
}

/// For an unencrypted OpenSSH `ecdsa-sha2-nistp256` key whose scalar `mpint` is shorter than 32
/// bytes, the same key with the scalar zero-padded to 32 bytes; `None` for anything else.
pub fn pad_short_p256_scalar(text: &str) -> Option<String> {
    let b64: String = text
        .trim()
        .strip_prefix(BEGIN)?
        .strip_suffix(END)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let blob = BASE64.decode(b64.as_bytes()).ok()?;
    let mut r = Reader(blob.strip_prefix(MAGIC)?);
    let (cipher, kdf, kdf_options) = (r.string()?, r.string()?, r.string()?);
    if cipher != b"none" || r.u32()? != 1 {
        return None;
    }
    let public = r.string()?;
    let mut p = Reader(r.string()?);
    let (check1, check2, key_type) = (p.u32()?, p.u32()?, p.string()?);
    if key_type != b"ecdsa-sha2-nistp256" {
        return None;
    }
    let (curve, point, scalar, comment) = (p.string()?, p.string()?, p.string()?, p.string()?);
    if scalar.is_empty() || scalar.len() >= 32 || scalar[0] >= 0x80 {
        return None;
    }
    let mut padded = vec![0u8; 32 - scalar.len()];
    padded.extend_from_slice(scalar);

    let mut private = Vec::new();
    private.extend_from_slice(&check1.to_be_bytes());
    private.extend_from_slice(&check2.to_be_bytes());
    for field in [key_type, curve, point, &padded, comment] {
        put_string(&mut private, field);
    }
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut out = MAGIC.to_vec();
    for field in [cipher, kdf, kdf_options] {
        put_string(&mut out, field);
    }
    out.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut out, public);
    put_string(&mut out, &private);
    let encoded = BASE64.encode(&out);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(70)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    Some(format!("{BEGIN}\n{}\n{END}\n", lines.join("\n")))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*head))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(s)
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).expect("small").to_be_bytes());
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_others_can_read_are_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "not a key").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = load(&key, None).unwrap_err();
            assert!(
                matches!(err, Error::SecretFileTooOpen { mode: m, .. } if m == mode),
                "{err}"
            );
            let text = err.to_string();
            assert!(
                text.contains(&format!("{mode:04o}")) && text.contains("chmod 600"),
                "{text}"
            );
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ensure_private(&key, SecretKind::Identity).is_ok());
        // Private but not a key: the parse error, not the mode, is reported.
        assert!(matches!(load(&key, None), Err(Error::Identity { .. })));
    }

    /// The P-256 generator: the public key of the private scalar 1.
    const G: &str = "046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C2964FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5";

    fn key_with_scalar(scalar: &[u8]) -> String {
        let point = data_encoding::HEXUPPER.decode(G.as_bytes()).unwrap();
        let mut public = Vec::new();
        for f in [&b"ecdsa-sha2-nistp256"[..], b"nistp256", &point] {
            put_string(&mut public, f);
        }
        let mut private = Vec::new();
        private.extend_from_slice(&7u32.to_be_bytes());
        private.extend_from_slice(&7u32.to_be_bytes());
        for f in [&b"ecdsa-sha2-nistp256"[..], b"nistp256", &point, scalar, b"test"] {
            put_string(&mut private, f);
        }
        let mut pad = 1u8;
        while private.len() % 8 != 0 {
            private.push(pad);
            pad += 1;
        }
        let mut out = MAGIC.to_vec();
        for f in [&b"none"[..], b"none", b""] {
            put_string(&mut out, f);
        }
        out.extend_from_slice(&1u32.to_be_bytes());
        put_string(&mut out, &public);
        put_string(&mut out, &private);
        format!("{BEGIN}\n{}\n{END}\n", BASE64.encode(&out))
    }

    #[test]
    fn short_scalar_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ecdsa");
        write_private(&path, key_with_scalar(&[1]));
        assert!(
            russh::keys::load_secret_key(&path, None).is_err(),
            "ssh-key fixed the bug: drop this"
        );
        let key = load(&path, None).unwrap();
        assert_eq!(key.algorithm().as_str(), "ecdsa-sha2-nistp256");
        assert_eq!(key.comment().to_string(), "test");
    }

    #[test]
    fn other_keys_are_left_alone() {
        assert!(pad_short_p256_scalar(&key_with_scalar(&[0x11; 32])).is_none());
        assert!(pad_short_p256_scalar("garbage").is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope");
        write_private(&path, "not a key");
        assert!(matches!(load(&path, None), Err(Error::Identity { .. })));
    }

    /// Key files as ssh-keygen writes them (0600): `load` refuses anything looser.
    fn write_private(path: &Path, text: impl AsRef<[u8]>) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}
