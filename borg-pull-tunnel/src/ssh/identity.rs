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
use crate::local::secret_file::{read_secret_file, Zeroizing};
use crate::ssh::wire::{put_string, Reader};
use crate::{Error, Result};

const MAGIC: &[u8] = b"openssh-key-v1\0";
const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const END: &str = "-----END OPENSSH PRIVATE KEY-----";

/// Loads `path` (decrypting with `passphrase` if it is encrypted), working around ssh-key's
/// short-scalar ECDSA bug for unencrypted keys.
///
/// The file is opened once and checked as opened ([`crate::local::secret_file`]): a symbolic link, a file
/// others can read, not a regular file or one too large are refused.
pub fn load(path: &Path, passphrase: Option<&str>) -> Result<PrivateKey> {
    let bytes = read_secret_file(path, SecretKind::Identity)?;
    let identity_error = |source| Error::Identity {
        path: PathBuf::from(path),
        source,
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        identity_error(russh::keys::Error::IO(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is not text (an OpenSSH private key is)",
        )))
    })?;
    match russh::keys::decode_secret_key(text, passphrase) {
        Ok(key) => Ok(key),
        Err(russh::keys::Error::KeyIsEncrypted) => Err(Error::IdentityEncrypted {
            path: path.to_owned(),
        }),
        Err(source) => pad_short_p256_scalar(text)
            .and_then(|text| russh::keys::decode_secret_key(&text, None).ok())
            .ok_or_else(|| identity_error(source)),
    }
}

/// For an unencrypted OpenSSH `ecdsa-sha2-nistp256` key whose scalar `mpint` is shorter than 32
/// bytes, the same key with the scalar zero-padded to 32 bytes; `None` for anything else.
///
/// Every buffer holding key material is allocated at its final size and wiped when dropped.
pub(crate) fn pad_short_p256_scalar(text: &str) -> Option<Zeroizing<String>> {
    let armored = text.trim().strip_prefix(BEGIN)?.strip_suffix(END)?;
    let mut b64 = Zeroizing::new(String::with_capacity(armored.len()));
    b64.extend(armored.chars().filter(|c| !c.is_whitespace()));
    let blob = Zeroizing::new(BASE64.decode(b64.as_bytes()).ok()?);
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
    let mut padded = Zeroizing::new(vec![0u8; 32]);
    padded[32 - scalar.len()..].copy_from_slice(scalar);

    let private_len = 8 + [key_type, curve, point, &padded, comment]
        .iter()
        .map(|f| 4 + f.len())
        .sum::<usize>();
    let mut private = Zeroizing::new(Vec::with_capacity(private_len + 8));
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
    let out_len = MAGIC.len()
        + [cipher, kdf, kdf_options, public, &private]
            .iter()
            .map(|f| 4 + f.len())
            .sum::<usize>()
        + 4;
    let mut out = Zeroizing::new(Vec::with_capacity(out_len));
    out.extend_from_slice(MAGIC);
    for field in [cipher, kdf, kdf_options] {
        put_string(&mut out, field);
    }
    out.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut out, public);
    put_string(&mut out, &private);
    let encoded = Zeroizing::new(BASE64.encode(&out));
    let mut pem = Zeroizing::new(String::with_capacity(
        BEGIN.len() + END.len() + encoded.len() * 71 / 70 + 4,
    ));
    pem.push_str(BEGIN);
    for chunk in encoded.as_bytes().chunks(70) {
        pem.push('\n');
        pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
    }
    pem.push('\n');
    pem.push_str(END);
    pem.push('\n');
    Some(pem)
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

    /// Test-only keys from `ssh-keygen` (ed25519, ecdsa P-256, rsa 2048, and ed25519 encrypted
    /// with "correct horse" and 2 KDF rounds).
    const ED25519: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACD63pAkjphQ9wqltjRO20Wj/QtgPW0UXOiLF/qHsBZZXQAAAIiEEhCIhBIQ\niAAAAAtzc2gtZWQyNTUxOQAAACD63pAkjphQ9wqltjRO20Wj/QtgPW0UXOiLF/qHsBZZXQ\nAAAEDGzc6ozErUe8JFsW2G9ArVmwwumwy/gn9nPzY7/o5TefrekCSOmFD3CqW2NE7bRaP9\nC2A9bRRc6IsX+oewFlldAAAAAmVkAQID\n-----END OPENSSH PRIVATE KEY-----\n";
    const ECDSA: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAaAAAABNlY2RzYS\n1zaGEyLW5pc3RwMjU2AAAACG5pc3RwMjU2AAAAQQQInU5Fx8l8ad8z5vbcQOoErM0b62r8\nscrs7TVOFUXsaQx8Geb2lKLSOv2ULiHFl0OIz2fgdX+yeYvk2efkI1ThAAAAoGdOVWhnTl\nVoAAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBAidTkXHyXxp3zPm\n9txA6gSszRvravyxyuztNU4VRexpDHwZ5vaUotI6/ZQuIcWXQ4jPZ+B1f7J5i+TZ5+QjVO\nEAAAAgfSg3kBfPoo2sXWiPnPJdkza5BcS3EPkxkFSDnxBd2iYAAAACZWMBAgMEBQY=\n-----END OPENSSH PRIVATE KEY-----\n";
    const RSA: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAABFwAAAAdzc2gtcn\nNhAAAAAwEAAQAAAQEA7QuRViREad/uSYaAy3LY6vPboXpO+W+lQe0gIclmVn4ceytJJmYC\nF5VSPbk89xIrqVqX2Y911DU/mWvrmmBhPUkD0uEisJyAX5VqZVbeIvHYSzBv3xwFvlpBLT\np6slmbHXHfKTDDAYtXvTZGN97kxDA8fIRRp6oLWjG/A7M4wu1ObKu9vmH9t2+bz0PY7hU2\nPa98RREQ+Fn8JYorZkScuFpztTMDI3b228NXgWUYgz92QGDMzr0Rb44OxSTuK3V6OAOW0s\n9vUlowT4jhZZtXCUlyoWVe/VPZW1ABCW1CWOsWrKh1XFAMjCD4VDlLBM+EKSAPyTjUrM+4\nLLC8p0I2yQAAA7hktMiwZLTIsAAAAAdzc2gtcnNhAAABAQDtC5FWJERp3+5JhoDLctjq89\nuhek75b6VB7SAhyWZWfhx7K0kmZgIXlVI9uTz3EiupWpfZj3XUNT+Za+uaYGE9SQPS4SKw\nnIBflWplVt4i8dhLMG/fHAW+WkEtOnqyWZsdcd8pMMMBi1e9NkY33uTEMDx8hFGnqgtaMb\n8DszjC7U5sq72+Yf23b5vPQ9juFTY9r3xFERD4WfwliitmRJy4WnO1MwMjdvbbw1eBZRiD\nP3ZAYMzOvRFvjg7FJO4rdXo4A5bSz29SWjBPiOFlm1cJSXKhZV79U9lbUAEJbUJY6xasqH\nVcUAyMIPhUOUsEz4QpIA/JONSsz7gssLynQjbJAAAAAwEAAQAAAQAUaafNIgTKLg0+qguy\n38or1KGxmO8hriphY2KEkx7yJjYDQ7Au7R95zGzVzkfTtu4PmjLAlDwMJCTv7BbQp0NFNc\ngG6hN335VzP1JENWQEell36bN+8QWfMlwYFJS2tKsVsNXY0QKNKLF+viSNClXrSlDkubhJ\nlrkXit66GnFLriosPrHIS2tq6RqqZJu8XrNmP1PJyqMCNYwmA9D+IumV4s8fnViz/bqjPF\nvI0VxvXQ54FFKedTBAh2Z4iSsNbOvJlNnA9eNbqIUGZkFR6QL0F/m/DASyfEZyNS6GpVtg\nQgYZQod14P8WDpwNK1f2nijmFUqeUzfvvrxkTLpUHuzpAAAAgFzassuy2U55pGA7Lx+X87\nJHohz4H50OXukXnEbGLAxTHbIE+VvEu/jQnUHqFxoxfGHMpExTq+Br94reJoHc7kw6Ker2\nY0gFXVwpSvhd2kIhXPswhyCg5u1HYVnVjtStL370GnQV1O5+d6eFYO4e284il54gxPq+Wg\nWzeub+6C5qAAAAgQD8YHM3STe9tjEv33GLQgz9JT/Fm/8qM2ZCr7NW3finXE8hPHyrd6mi\n397P9wrWMUeMfJ+b1IpjnAODiGewdO9pozwn3aTuK01Y+St7EP6S0IaHIwpW2+1umN1zv0\nyEQrNodBOwmxvNLJCXENohIgTvi3tCtk1xgm6NvgJRteId7wAAAIEA8HLFKV46+V8namGM\nK1Wps2/OIrbby3EU0mR5/ml0mLIoc9/XljoW4BHbUfqmqbXuW84wJjNOqW4X3Kd/1z4VAZ\nIxFRjIHGF2cneMImiJv4t1O44Pq9x6yYraA7nnK1DQo+SdzuECO+Vt6zBriosKCRLwYI0c\nkKoWAVe2zuqkLscAAAADcnNh\n-----END OPENSSH PRIVATE KEY-----\n";
    const ENCRYPTED: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABA+kEbduL\nOVWs0qx32xg4SIAAAAAgAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIPdg8dD9+I7xg9s5\nSCuUSKzp80zfOqNXHJab67YRXGZvAAAAkHH/eHnWSKAIRfHKztQPunR9m9h2SMQTOqhFOd\nYYEfldDnWm+pK0Jy1HBmykZLIPsOEMUC8RI7mKLtcSQO/dqRjCWysRg+6dt/ILNQ1HQDMh\njv1N0eOw0tRqj5n3ipRAi1pNK7QOc/drDuBMdEqrdu7IPOjisIbDSRgiG0WYPK9e7yqT6z\n+TwmbvI5K/zywv3w==\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn loads_the_key_types_ssh_keygen_writes() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text, alg, comment) in [
            ("id_ed25519", ED25519, "ssh-ed25519", "ed"),
            ("id_ecdsa", ECDSA, "ecdsa-sha2-nistp256", "ec"),
            ("id_rsa", RSA, "ssh-rsa", "rsa"),
        ] {
            let path = dir.path().join(name);
            write_private(&path, text);
            let key = load(&path, None).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(key.algorithm().as_str(), alg);
            assert_eq!(key.comment().to_string(), comment);
            // A passphrase given for an unencrypted key is not an error (as with ssh -i).
            assert!(load(&path, Some("unused")).is_ok());
        }
    }

    #[test]
    fn encrypted_keys_need_their_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_enc");
        write_private(&path, ENCRYPTED);
        assert!(matches!(load(&path, None), Err(Error::IdentityEncrypted { .. })));
        let key = load(&path, Some("correct horse")).unwrap();
        assert_eq!(key.algorithm().as_str(), "ssh-ed25519");
        assert!(matches!(load(&path, Some("wrong")), Err(Error::Identity { .. })));
    }

    #[test]
    fn keys_behind_symlinks_or_in_odd_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("id_ed25519");
        write_private(&real, ED25519);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = load(&link, None).unwrap_err();
        assert!(
            matches!(err, Error::Identity { .. })
                && borg_pull_core::error::Chain(&err)
                    .to_string()
                    .contains("symbolic link"),
            "{err}"
        );
        let err = load(dir.path(), None).unwrap_err();
        assert!(
            borg_pull_core::error::Chain(&err)
                .to_string()
                .contains("a directory"),
            "{err}"
        );
        let binary = dir.path().join("binary");
        write_private(&binary, b"\xff\xfe-----BEGIN");
        let err = load(&binary, None).unwrap_err();
        assert!(
            borg_pull_core::error::Chain(&err)
                .to_string()
                .contains("not text"),
            "{err}"
        );
    }

    /// Key files as ssh-keygen writes them (0600): `load` refuses anything looser.
    fn write_private(path: &Path, text: impl AsRef<[u8]>) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}
