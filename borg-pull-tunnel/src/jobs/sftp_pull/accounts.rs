//! The client's user and group names, read from its `/etc/passwd` and `/etc/group` over SFTP, so
//! that borg on this server records the names the client has, not this server's.
//!
//! Only `name:…:id` is kept from each line; we write our own two files from what we parsed (never
//! the client's text) for borg to see in its private mount namespace. A line that does not parse,
//! or whose name is not a plain account name, is dropped and counted: the client's files are
//! untrusted, and a name with `:` or a newline would otherwise forge lines of ours.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use borg_pull_sftp::{Client, ReadData};
use tracing::{info, warn};

use crate::error::Peer;
use crate::limits::{SFTP_ACCOUNTS_FILE_MAX, SFTP_ACCOUNT_NAME_MAX};
use crate::Error;

/// One table: `(name, id)` pairs in the file's order, and how many lines were refused.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Accounts {
    pub(crate) entries: Vec<(String, u32)>,
    pub(crate) refused: usize,
}

/// The two tables, as read from the client.
#[derive(Debug, Clone)]
pub(crate) struct ClientAccounts {
    pub(crate) users: Accounts,
    pub(crate) groups: Accounts,
}

/// The files we wrote from [`ClientAccounts`], for the bind mounts.
#[derive(Debug, Clone)]
pub(crate) struct AccountFiles {
    pub(crate) passwd: PathBuf,
    pub(crate) group: PathBuf,
}

/// Reads and parses both files. A client without them (a chroot-ed SFTP server) is not an error:
/// borg then stores numeric ids only, as with `--numeric-ids`.
pub(crate) async fn read(client: &Client, peer: &Peer) -> Result<Option<ClientAccounts>, Error> {
    let (passwd, group) = tokio::join!(
        read_file(client, peer, "/etc/passwd"),
        read_file(client, peer, "/etc/group")
    );
    let (passwd, group) = (passwd?, group?);
    let (Some(passwd), Some(group)) = (passwd, group) else {
        warn!(
            "the client's /etc/passwd or /etc/group cannot be read over SFTP; only numeric owners are stored"
        );
        return Ok(None);
    };
    let accounts = ClientAccounts {
        users: parse(&passwd),
        groups: parse(&group),
    };
    let refused = accounts.users.refused + accounts.groups.refused;
    if refused > 0 {
        warn!(
            refused,
            "lines of the client's /etc/passwd or /etc/group that are not NAME:…:ID with a plain name were ignored"
        );
    }
    info!(
        users = accounts.users.entries.len(),
        groups = accounts.groups.entries.len(),
        "the client's user and group names"
    );
    Ok(Some(accounts))
}

/// The whole file, or `None` when the client has none (or refuses it); a file longer than
/// [`SFTP_ACCOUNTS_FILE_MAX`] is an error (the client is lying or hostile).
async fn read_file(client: &Client, peer: &Peer, path: &'static str) -> Result<Option<Vec<u8>>, Error> {
    let failed = |source| Error::Sftp {
        peer: peer.clone(),
        what: "reading the client's accounts over SFTP",
        source,
    };
    let handle = match client.open_read(path.as_bytes()).await {
        Ok(handle) => handle,
        Err(e) if e.is_status() => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let mut data = Vec::new();
    let chunk = client.max_read();
    // Bounded: every round adds at least one byte, and the total stops at the limit.
    let result = loop {
        match client.read(&handle, data.len() as u64, chunk).await {
            Ok(ReadData::Eof) => break Ok(Some(data)),
            Ok(ReadData::Bytes(bytes)) if bytes.is_empty() => break Ok(Some(data)),
            Ok(ReadData::Bytes(bytes)) => {
                if data.len() + bytes.len() > SFTP_ACCOUNTS_FILE_MAX {
                    break Err(Error::SftpAccountsTooBig {
                        peer: peer.clone(),
                        path,
                        limit: SFTP_ACCOUNTS_FILE_MAX,
                    });
                }
                data.extend_from_slice(&bytes);
            }
            Err(e) => break Err(failed(e)),
        }
    };
    let _ = client.close(handle).await;
    result
}

/// The client's host name from its `/etc/hostname` (for borg's `{hostname}`), if it has a plain
/// one; `None` otherwise.
pub(crate) async fn read_hostname(client: &Client, peer: &Peer) -> Option<String> {
    let text = read_file(client, peer, "/etc/hostname").await.ok().flatten()?;
    let name = std::str::from_utf8(&text).ok()?.trim();
    let plain = !name.is_empty()
        && name.len() <= SFTP_ACCOUNT_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    plain.then(|| name.to_owned())
}

/// `name:x:ID:…` lines: the first and third fields. Comments and blank lines are skipped; other
/// lines that do not parse are counted as refused.
pub(crate) fn parse(text: &[u8]) -> Accounts {
    let mut accounts = Accounts::default();
    for line in text.split(|&b| b == b'\n') {
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        match parse_line(line) {
            Some(entry) => accounts.entries.push(entry),
            None => accounts.refused += 1,
        }
    }
    accounts
}

fn parse_line(line: &[u8]) -> Option<(String, u32)> {
    let mut fields = line.split(|&b| b == b':');
    let name = fields.next()?;
    let _password = fields.next()?;
    let id = std::str::from_utf8(fields.next()?).ok()?;
    if !plain_name(name) || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u32 = id.parse().ok()?;
    Some((String::from_utf8(name.to_vec()).ok()?, id))
}

/// What useradd and groupadd accept (plus `$` for Samba machine accounts and `@` and `+` seen in
/// directory services): nothing that could end a field or a line, nor start an option.
fn plain_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= SFTP_ACCOUNT_NAME_MAX
        && name[0] != b'-'
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$' | b'@' | b'+'))
}

/// Writes `passwd` and `group` into `dir` (0600, replaced whole): a minimal line per entry.
pub(crate) fn write(accounts: &ClientAccounts, dir: &Path) -> Result<AccountFiles, Error> {
    let passwd = dir.join("passwd");
    let group = dir.join("group");
    let mut text = String::new();
    for (name, uid) in &accounts.users.entries {
        text.push_str(&format!("{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n"));
    }
    write_private(&passwd, text.as_bytes())?;
    let mut text = String::new();
    for (name, gid) in &accounts.groups.entries {
        text.push_str(&format!("{name}:x:{gid}:\n"));
    }
    write_private(&group, text.as_bytes())?;
    Ok(AccountFiles { passwd, group })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        context: format!("cannot write {}", path.display()),
        source,
    };
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_with_numeric_ids_are_kept() {
        let text = b"root:x:0:0:root:/root:/bin/bash\n\
            # comment\n\
            \n\
            alice:x:1000:1000:Alice,,,:/home/alice:/bin/sh\n\
            evil\nx:x:0:0::/:/bin/sh\n\
            bad name:x:1:1::/:\n\
            -opt:x:2:2::/:\n\
            neg:x:-1:0::/:\n\
            big:x:99999999999:0::/:\n\
            short:x\n\
            nonutf\xff:x:3:3::/:\n\
            machine$:x:4:4::/:\n";
        let parsed = parse(text);
        assert_eq!(
            parsed.entries,
            vec![
                ("root".to_owned(), 0),
                ("alice".to_owned(), 1000),
                ("x".to_owned(), 0),
                ("machine$".to_owned(), 4)
            ]
        );
        // A name cannot carry a line of its own: "evil" is refused, the next line stands alone.
        assert_eq!(parsed.refused, 7);
    }

    #[test]
    fn written_files_hold_only_parsed_entries() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = ClientAccounts {
            users: parse(b"root:x:0:0::/root:/bin/sh\nbob:x:1001:100::/:/bin/sh\n"),
            groups: parse(b"root:x:0:\nstaff:x:50:bob,alice\n"),
        };
        let files = write(&accounts, dir.path()).unwrap();
        let passwd = std::fs::read_to_string(&files.passwd).unwrap();
        assert_eq!(
            passwd,
            "root:x:0:0::/nonexistent:/usr/sbin/nologin\nbob:x:1001:1001::/nonexistent:/usr/sbin/nologin\n"
        );
        assert_eq!(
            std::fs::read_to_string(&files.group).unwrap(),
            "root:x:0:\nstaff:x:50:\n"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&files.group).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
