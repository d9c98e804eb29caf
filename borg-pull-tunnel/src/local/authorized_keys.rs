//! `authorized_keys` entries that force `borg serve` for one key: the line, its quoting, installing
//! it idempotently, and ephemeral entries that live only as long as the process that made them.
//!
//! The entry is the one Borg's docs describe for a server that only serves one repository:
//!
//! ```text
//! command="borg serve --append-only --restrict-to-repository /srv/borg/web1",restrict ssh-ed25519 AAAA… comment
//! ```
//!
//! Two parsers read the command before it runs, and both must give back exactly our argv:
//!
//! 1. sshd reads the option value with `opt_dequote()` (OpenSSH `auth-options.c`): it starts after
//!    the opening `"`, ends at the first `"` not preceded by a backslash, and turns `\"` into `"`.
//!    Nothing else is an escape: a backslash before any other character (a backslash included) is
//!    kept as it is. So writing each `"` as `\"` and leaving every other byte alone round-trips, as
//!    long as the command does not end in a backslash (that one would escape the closing quote);
//!    ours never does, because a word holding a backslash is single-quoted and so ends in `'`.
//! 2. sshd then runs the dequoted string with the login user's shell, `$SHELL -c COMMAND`, so each
//!    word is quoted for a POSIX shell: left bare when it only has characters no shell treats
//!    specially, otherwise in single quotes (`'` written as `'\''`). Spaces, quotes, `$`, backticks
//!    and backslashes in a repository path survive; NUL, newline and carriage return cannot be in an
//!    authorized_keys line at all and are refused.
//!
//! Every change to the file happens under an exclusive `flock` of a lock file beside it
//! (`.NAME.borg-pull.lock`), so concurrent pulls, in this process or others, never lose each
//! other's lines. Appends use `O_APPEND`; removals write a temporary file in the same directory
//! (same mode and owner) and rename it over the original, so sshd never reads half a file. Lines we
//! did not make are kept byte for byte, comments and blank lines included. A symbolic link,
//! something other than a regular file, or a file group or others may write to is refused.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use russh::keys::PublicKey;
use tracing::{debug, warn};

use crate::error::EntryPart;
use crate::{Error, Result};

/// The first word of the comment of every entry [`add_ephemeral`] makes.
pub(crate) const EPHEMERAL_TAG: &str = "borg-pull-ephemeral";

/// Largest authorized_keys file we read (OpenSSH itself has no limit; a file this big is a mistake).
const MAX_AUTHORIZED_KEYS: u64 = 16 << 20;

/// Largest `.pub` file we read (an RSA 16384-bit key line is about 2.8 KiB).
const MAX_PUBLIC_KEY_FILE: u64 = 64 << 10;

/// What the forced command runs: `BORG serve --append-only --restrict-to-repository REPO`
/// (without `--append-only` when `allow_delete`).
///
/// ```
/// use borg_pull_tunnel::local::authorized_keys::ForcedCommand;
/// let mut forced = ForcedCommand::new("/srv/borg/it's \"web\"")?;
/// assert_eq!(
///     forced.command()?,
///     r#"borg serve --append-only --restrict-to-repository '/srv/borg/it'\''s "web"'"#
/// );
/// forced.allow_delete = true;
/// assert_eq!(forced.command()?, "borg serve --restrict-to-repository '/srv/borg/it'\\''s \"web\"'");
/// # Ok::<(), borg_pull_tunnel::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedCommand {
    /// The borg program on this server (`borg` by default, looked up on the login user's PATH).
    pub borg: OsString,
    /// The one repository the key may use (absolute).
    pub repo: PathBuf,
    /// Let the key's user delete, prune and compact (no `--append-only`).
    pub allow_delete: bool,
}

impl ForcedCommand {
    /// `borg serve --append-only --restrict-to-repository REPO`; `repo` must be absolute and hold
    /// no NUL, newline or carriage return.
    pub fn new(repo: impl Into<PathBuf>) -> Result<Self> {
        let forced = Self {
            borg: OsString::from("borg"),
            repo: repo.into(),
            allow_delete: false,
        };
        forced.command()?;
        Ok(forced)
    }

    /// The words of the command, unquoted.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv = vec![self.borg.clone(), OsString::from("serve")];
        if !self.allow_delete {
            argv.push(OsString::from("--append-only"));
        }
        argv.push(OsString::from("--restrict-to-repository"));
        argv.push(self.repo.clone().into_os_string());
        argv
    }

    /// The command as the login user's shell gets it (`sh -c COMMAND`): each word quoted for a
    /// POSIX shell when it needs to be.
    pub fn command(&self) -> Result<String> {
        if !self.repo.is_absolute() {
            return Err(Error::Serve(borg_pull_core::Error::RepoNotAbsolute {
                path: self.repo.clone(),
            }));
        }
        let argv = self.argv();
        let mut words = Vec::with_capacity(argv.len());
        for (i, word) in argv.iter().enumerate() {
            let what = match i {
                0 => EntryPart::BorgProgram,
                _ if i == argv.len() - 1 => EntryPart::RepositoryPath,
                _ => EntryPart::Argument,
            };
            words.push(shell_word(checked_text(what, word.as_bytes())?));
        }
        Ok(words.join(" "))
    }

    /// The whole authorized_keys line: `command="…",restrict TYPE BASE64 COMMENT` (no comment when
    /// `comment` is empty).
    pub fn line(&self, key: &PublicKey, comment: &str) -> Result<String> {
        let command = self.command()?;
        checked_text(EntryPart::KeyComment, comment.as_bytes())?;
        // sshd's opt_dequote() only un-escapes `\"` (see the module docs).
        let option = command.replace('"', "\\\"");
        let mut line = format!("command=\"{option}\",restrict {}", key_text(key)?);
        if !comment.is_empty() {
            line.push(' ');
            line.push_str(comment);
        }
        Ok(line)
    }
}

/// `TYPE BASE64` of `key`, without its comment.
fn key_text(key: &PublicKey) -> Result<String> {
    let blob = key
        .to_bytes()
        .map_err(|e| Error::InvalidOption(format!("cannot encode public key: {e}")))?;
    Ok(format!(
        "{} {}",
        key.algorithm().as_str(),
        data_encoding::BASE64.encode(&blob)
    ))
}

/// `bytes` as text, refusing what cannot be in an authorized_keys line.
fn checked_text(what: EntryPart, bytes: &[u8]) -> Result<&str> {
    let value = || String::from_utf8_lossy(bytes).into_owned();
    let why = if bytes.contains(&0) {
        "it contains a NUL byte"
    } else if bytes.contains(&b'\n') || bytes.contains(&b'\r') {
        "it contains a line break, and an authorized_keys entry is one line"
    } else {
        return std::str::from_utf8(bytes).map_err(|_| Error::ForcedCommandInvalid {
            what,
            value: value(),
            why: "it is not valid UTF-8",
        });
    };
    Err(Error::ForcedCommandInvalid {
        what,
        value: value(),
        why,
    })
}

/// `word` for a POSIX shell: bare when only harmless characters, else single-quoted. `=` and `~`
/// are not harmless (an assignment in the command's first word, tilde expansion).
fn shell_word(word: &str) -> String {
    let bare = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+:,./-".contains(&b));
    if bare {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Reads one OpenSSH public key line (`TYPE BASE64 [COMMENT]`) and its comment.
pub fn read_public_key(path: &Path) -> Result<(PublicKey, String)> {
    let bad = |why: String| Error::PublicKeyFile {
        path: path.to_owned(),
        why,
    };
    let file = File::open(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PUBLIC_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PUBLIC_KEY_FILE {
        return Err(bad(format!(
            "it is larger than {MAX_PUBLIC_KEY_FILE} bytes, so not a public key file"
        )));
    }
    let text = String::from_utf8_lossy(&bytes);
    if text.contains("PRIVATE KEY") {
        return Err(bad(format!(
            "it holds a private key; give the public key beside it ({}.pub) instead",
            path.display()
        )));
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let line = match lines.as_slice() {
        [line] => *line,
        [] => return Err(bad("it holds no public key line".into())),
        more => {
            return Err(bad(format!(
                "it holds {} lines; a public key file has exactly one (`TYPE BASE64 COMMENT`)",
                more.len()
            )))
        }
    };
    let key = PublicKey::from_openssh(line).map_err(|e| {
        let first = line.split_whitespace().next().unwrap_or("");
        bad(format!(
            "{first:?} is not a public key type this program knows, or the key is damaged ({e}); \
             expected one line `TYPE BASE64 COMMENT` as ssh-keygen writes to a .pub file"
        ))
    })?;
    let comment = key.comment().to_string();
    Ok((key, comment))
}

/// One entry of an authorized_keys file, split into its parts (borrowed from the line).
#[derive(Debug, PartialEq, Eq)]
struct Entry<'a> {
    options: &'a str,
    key_type: &'a str,
    blob: &'a str,
    comment: &'a str,
}

impl Entry<'_> {
    fn same_key(&self, other: &Entry<'_>) -> bool {
        self.key_type == other.key_type && self.blob == other.blob
    }
}

/// Splits an authorized_keys line; `None` for blank lines, comments and lines we cannot read
/// (sshd skips those too).
fn parse_entry(line: &str) -> Option<Entry<'_>> {
    let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\r' || c == '\n');
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (options, rest) = if looks_like_key_type(first_word(line)) {
        ("", line)
    } else {
        // Options end at the first space or tab outside double quotes (`\"` inside does not end
        // the quote), as in OpenSSH's sshkey_advance_past_options().
        let mut quoted = false;
        let mut end = None;
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if quoted && bytes.get(i + 1) == Some(&b'"') => i += 1,
                b'"' => quoted = !quoted,
                b' ' | b'\t' if !quoted => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let end = end?;
        (&line[..end], line[end..].trim_start_matches([' ', '\t']))
    };
    let mut parts = rest.splitn(3, [' ', '\t']);
    let key_type = parts.next()?;
    let blob = parts.next()?.trim();
    if key_type.is_empty() || blob.is_empty() {
        return None;
    }
    let comment = parts.next().unwrap_or("").trim_matches([' ', '\t']);
    Some(Entry {
        options,
        key_type,
        blob,
        comment,
    })
}

fn first_word(line: &str) -> &str {
    line.split([' ', '\t']).next().unwrap_or("")
}

/// Whether `word` names an SSH key type (then the line has no options).
fn looks_like_key_type(word: &str) -> bool {
    word.starts_with("ssh-")
        || word.starts_with("ecdsa-sha2-")
        || word.starts_with("sk-")
        || word.ends_with("@openssh.com")
}

/// Adds `line` to `file` unless the same key already has an entry with the same options; `true`
/// when added. Comments of existing entries do not matter. An existing entry for the key with
/// other options is an error naming its line: sshd uses the first entry that matches a key, so
/// appending would either change nothing or, after a later edit, widen or narrow what the key may
/// do without anyone deciding it.
///
/// Creates the file (mode 0600) and its directory (mode 0700) when missing; an existing file keeps
/// its mode and owner.
pub fn install(file: &Path, line: &str) -> Result<bool> {
    checked_text(EntryPart::Line, line.as_bytes())?;
    let new = parse_entry(line).ok_or_else(|| Error::ForcedCommandInvalid {
        what: EntryPart::Line,
        value: line.to_owned(),
        why: "it is not an entry of the form `[OPTIONS] TYPE BASE64 [COMMENT]`",
    })?;
    let _lock = Lock::acquire(file)?;
    let mut keys = open_authorized_keys(file)?;
    let content = read_all(&mut keys, file)?;
    for (number, existing) in content.split(|&b| b == b'\n').enumerate() {
        let existing = String::from_utf8_lossy(existing);
        let Some(entry) = parse_entry(&existing) else {
            continue;
        };
        if entry.same_key(&new) {
            if entry.options == new.options {
                debug!(file = %file.display(), line = number + 1, "entry already present");
                return Ok(false);
            }
            return Err(Error::AuthorizedKeysConflict {
                path: file.to_owned(),
                line: number + 1,
                existing: if entry.options.is_empty() {
                    "no options at all".to_owned()
                } else {
                    entry.options.to_owned()
                },
            });
        }
    }
    let mut add = Vec::with_capacity(line.len() + 2);
    if !content.is_empty() && !content.ends_with(b"\n") {
        add.push(b'\n');
    }
    add.extend_from_slice(line.as_bytes());
    add.push(b'\n');
    // O_APPEND and one write: the line lands whole at the end, under the lock.
    keys.write_all(&add)
        .and_then(|()| keys.sync_all())
        .map_err(|source| io_error("append to", file, source))?;
    Ok(true)
}

/// An entry [`add_ephemeral`] made; removed by [`EphemeralEntry::remove`] or, best effort, when
/// dropped.
#[derive(Debug)]
pub(crate) struct EphemeralEntry {
    file: PathBuf,
    /// The entry's comment, unique to it: `borg-pull-ephemeral pid=… start=… id=…`.
    tag: String,
    removed: bool,
}

impl EphemeralEntry {
    /// The authorized_keys file the entry is in.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The entry's comment, which identifies it.
    #[cfg(test)]
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Removes the entry (and nothing else); fine if it is already gone.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        self.remove_now()
    }

    fn remove_now(&self) -> Result<()> {
        let removed = edit_removing(&self.file, |entry| entry.comment == self.tag)?;
        if removed == 0 {
            debug!(file = %self.file.display(), tag = %self.tag, "ephemeral entry already gone");
        }
        Ok(())
    }
}

impl Drop for EphemeralEntry {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.remove_now() {
                warn!(
                    "cannot remove ephemeral authorized_keys entry {:?}: {e:#}",
                    self.tag
                );
            }
        }
    }
}

/// Adds an entry for `key` with `forced` whose comment names this process (pid and start time)
/// and a random id, so [`remove_stale_ephemeral`] can tell when its maker is gone.
pub(crate) fn add_ephemeral(file: &Path, forced: &ForcedCommand, key: &PublicKey) -> Result<EphemeralEntry> {
    let pid = std::process::id();
    let start =
        process_start_time(pid).map_err(|source| io_error("read", Path::new("/proc/self/stat"), source))?;
    let tag = format!("{EPHEMERAL_TAG} pid={pid} start={start} id={}", random_id()?);
    let line = forced.line(key, &tag)?;
    if !install(file, &line)? {
        // A fresh key and a random id: an identical entry means someone copied ours.
        return Err(unsafe_file(
            file,
            format!("it already holds an entry with this run's own comment {tag:?}; remove it"),
        ));
    }
    Ok(EphemeralEntry {
        file: file.to_owned(),
        tag,
        removed: false,
    })
}

/// Removes entries made by [`add_ephemeral`] whose process no longer exists (no process with that
/// pid, or one that started at another time); returns how many. Every other line stays byte for
/// byte, and so does an ephemeral entry whose comment we cannot read. The pid is looked up in this
/// process's `/proc`, so pulls sharing one authorized_keys file must share a pid namespace.
pub(crate) fn remove_stale_ephemeral(file: &Path) -> Result<usize> {
    match fs::symlink_metadata(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        _ => {}
    }
    // Without /proc every maker would look dead: refuse rather than remove live entries.
    process_start_time(std::process::id())
        .map_err(|source| io_error("read", Path::new("/proc/self/stat"), source))?;
    edit_removing(file, |entry| match ephemeral_maker(entry.comment) {
        Some((pid, start)) => process_start_time(pid).ok() != Some(start),
        None => false,
    })
}

/// `(pid, start)` from an ephemeral entry's comment.
fn ephemeral_maker(comment: &str) -> Option<(u32, u64)> {
    let mut words = comment.split(' ');
    if words.next()? != EPHEMERAL_TAG {
        return None;
    }
    let pid = words.next()?.strip_prefix("pid=")?.parse().ok()?;
    let start = words.next()?.strip_prefix("start=")?.parse().ok()?;
    words.next()?.strip_prefix("id=")?;
    words.next().is_none().then_some((pid, start))
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot. A pid and
/// this together name one process, even after the pid is reused.
fn process_start_time(pid: u32) -> std::io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces and parentheses.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| std::io::Error::other("unexpected /proc/PID/stat format"))?;
    after
        .split_whitespace()
        .nth(19) // fields 3.. follow the name; 22 - 3
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| std::io::Error::other("unexpected /proc/PID/stat format"))
}

/// 64 random bits in hex, from the kernel.
fn random_id() -> Result<String> {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| io_error("read", Path::new("/dev/urandom"), source))?;
    Ok(data_encoding::HEXLOWER.encode(&bytes))
}

/// Under the lock, drops the entries `remove` says to and rewrites the file atomically (only if
/// anything was dropped); returns how many.
fn edit_removing(file: &Path, remove: impl Fn(&Entry<'_>) -> bool) -> Result<usize> {
    let _lock = Lock::acquire(file)?;
    let mut keys = match open_existing(file) {
        Ok(keys) => keys,
        Err(Error::AuthorizedKeysIo { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(0)
        }
        Err(e) => return Err(e),
    };
    let content = read_all(&mut keys, file)?;
    let mut kept = Vec::with_capacity(content.len());
    let mut removed = 0;
    for line in content.split_inclusive(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        if parse_entry(&text).is_some_and(|entry| remove(&entry)) {
            removed += 1;
        } else {
            kept.extend_from_slice(line);
        }
    }
    if removed > 0 {
        replace(file, &keys, &kept)?;
    }
    Ok(removed)
}

/// Writes `content` to a temporary file beside `file` with `file`'s mode and owner, and renames it
/// over `file`.
fn replace(file: &Path, old: &File, content: &[u8]) -> Result<()> {
    let meta = old
        .metadata()
        .map_err(|source| io_error("inspect", file, source))?;
    let dir = parent_dir(file);
    let mut name = OsString::from(".");
    name.push(file.file_name().unwrap_or_default());
    name.push(format!(".borg-pull.tmp.{}.{}", std::process::id(), random_id()?));
    let temp = dir.join(name);
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&temp)
            .map_err(|source| io_error("create", &temp, source))?;
        if meta.uid() != rustix::process::geteuid().as_raw()
            || meta.gid() != rustix::process::getegid().as_raw()
        {
            std::os::unix::fs::fchown(&out, Some(meta.uid()), Some(meta.gid()))
                .map_err(|source| io_error("give the owner of the original to", &temp, source))?;
        }
        out.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|source| io_error("set the mode of", &temp, source))?;
        out.write_all(content)
            .and_then(|()| out.sync_all())
            .map_err(|source| io_error("write", &temp, source))?;
        fs::rename(&temp, file).map_err(|source| io_error("replace", file, source))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    } else if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    result
}

fn parent_dir(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::AuthorizedKeysIo {
        action,
        path: path.to_owned(),
        source,
    }
}

fn unsafe_file(path: &Path, why: String) -> Error {
    Error::AuthorizedKeysUnsafe {
        path: path.to_owned(),
        why,
    }
}

/// The exclusive lock on `.NAME.borg-pull.lock` beside the file; released when dropped (closed).
struct Lock {
    _file: File,
}

impl Lock {
    /// Makes the directory (0700) when missing, then waits for the lock.
    fn acquire(file: &Path) -> Result<Lock> {
        let dir = parent_dir(file);
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {
                debug!(dir = %dir.display(), "created directory");
                give_to_owner_of(dir.parent().unwrap_or(Path::new("/")), dir, None)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(io_error("create directory", dir, source)),
        }
        let meta = fs::metadata(dir).map_err(|source| io_error("inspect directory", dir, source))?;
        if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
            return Err(unsafe_file(
                file,
                format!(
                    "its directory {} may be written by anyone (mode {:04o}), so anyone could replace \
                     the file; fix: chmod 700 {}",
                    dir.display(),
                    meta.mode() & 0o7777,
                    dir.display()
                ),
            ));
        }
        let mut name = OsString::from(".");
        name.push(file.file_name().unwrap_or_default());
        name.push(".borg-pull.lock");
        let path = dir.join(name);
        let open = |create_new: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(create_new)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
        };
        let lock = match open(true) {
            Ok(lock) => {
                give_to_owner_of(dir, &path, Some(&lock))?;
                lock
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                open(false).map_err(|source| io_error("open lock file", &path, source))?
            }
            Err(source) => return Err(io_error("create lock file", &path, source)),
        };
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_error("lock", &path, e.into()))?;
        Ok(Lock { _file: lock })
    }
}

/// Opens (creating 0600 if missing) for reading and appending, refusing unsafe files. Called
/// under the lock, so nobody else creates the file in between.
fn open_authorized_keys(file: &Path) -> Result<File> {
    let missing = matches!(fs::symlink_metadata(file), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    let keys = open_checked(
        file,
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600),
    )?;
    if missing {
        give_to_owner_of(parent_dir(file), file, Some(&keys))?;
    }
    Ok(keys)
}

/// When root creates a file or directory in another user's directory (installing for the backup
/// user, e.g. with sudo), it goes to that directory's owner: sshd reads authorized_keys as the
/// user, and the user's own later runs must open the lock file.
fn give_to_owner_of(dir: &Path, path: &Path, opened: Option<&File>) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let meta = fs::metadata(dir).map_err(|source| io_error("inspect directory", dir, source))?;
    if meta.uid() == 0 {
        return Ok(());
    }
    let (uid, gid) = (Some(meta.uid()), Some(meta.gid()));
    match opened {
        Some(file) => std::os::unix::fs::fchown(file, uid, gid),
        None => std::os::unix::fs::lchown(path, uid, gid),
    }
    .map_err(|source| io_error("give the directory's owner", path, source))
}

/// Opens an existing file for reading, refusing unsafe files.
fn open_existing(file: &Path) -> Result<File> {
    open_checked(file, OpenOptions::new().read(true))
}

fn open_checked(file: &Path, options: &mut OpenOptions) -> Result<File> {
    let opened = options
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(file);
    let keys = match opened {
        Ok(keys) => keys,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(unsafe_file(
                file,
                "it is a symbolic link; give the path of the real file".to_owned(),
            ))
        }
        Err(source) => return Err(io_error("open", file, source)),
    };
    let meta = keys
        .metadata()
        .map_err(|source| io_error("inspect", file, source))?;
    if !meta.file_type().is_file() {
        return Err(unsafe_file(file, "it is not a regular file".to_owned()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_file(
            file,
            format!(
                "group or others may write to it (mode {mode:04o}), so they could authorize any key \
                 (and sshd's StrictModes ignores such a file); fix: chmod 600 {}",
                file.display()
            ),
        ));
    }
    Ok(keys)
}

fn read_all(keys: &mut File, file: &Path) -> Result<Vec<u8>> {
    let mut content = Vec::new();
    keys.take(MAX_AUTHORIZED_KEYS + 1)
        .read_to_end(&mut content)
        .map_err(|source| io_error("read", file, source))?;
    if content.len() as u64 > MAX_AUTHORIZED_KEYS {
        return Err(unsafe_file(
            file,
            format!("it is larger than {MAX_AUTHORIZED_KEYS} bytes, which no authorized_keys file should be"),
        ));
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::public::{Ed25519PublicKey, KeyData};
    use std::process::Command;

    /// A distinct ed25519 public key per `n` (any 32 bytes are a valid public key encoding).
    fn key(n: u32) -> PublicKey {
        let mut bytes = [7u8; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        PublicKey::new(KeyData::Ed25519(Ed25519PublicKey(bytes)), "")
    }

    /// What sshd's opt_dequote() makes of the option value in `line` (the C code, transcribed).
    fn opt_dequote(line: &str) -> String {
        let start = line.find("command=\"").unwrap() + "command=\"".len();
        let s = &line.as_bytes()[start..];
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() && s[i] != b'"' {
            if s[i] == b'\\' && s.get(i + 1) == Some(&b'"') {
                i += 1;
            }
            out.push(s[i]);
            i += 1;
        }
        assert!(i < s.len(), "missing end quote in {line}");
        assert!(line[start + i + 1..].starts_with(",restrict "), "{line}");
        String::from_utf8(out).unwrap()
    }

    /// The words a real `sh -c` makes of `command` (with `printf %s\n "$@"` standing in for borg).
    fn sh_words(command: &str) -> Vec<String> {
        let script = format!("set -- {}; printf '%s\\n' \"$@\"", command);
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn hostile_repository_paths_survive_sshd_and_the_shell() {
        for repo in [
            "/srv/borg/plain",
            "/srv/with space/r",
            "/srv/it's/r",
            "/srv/\"double\"/r",
            "/srv/$HOME/${x}/$(id)/`id`",
            "/srv/back\\slash/r\\",
            "/srv/back\\\"quote/r",
            "/srv/\\\\\"\\/r",
            "/srv/;&|<>*?[]{}!#~=%/r",
            "/srv/tab\there/r",
            "/srv/ünïcödé/r",
        ] {
            let mut forced = ForcedCommand::new(repo).unwrap();
            for allow_delete in [false, true] {
                forced.allow_delete = allow_delete;
                let line = forced.line(&key(1), "a comment").unwrap();
                assert!(!line.contains('\n'));
                let command = opt_dequote(&line);
                assert_eq!(command, forced.command().unwrap());
                let words = sh_words(&command);
                let expected: Vec<String> = forced
                    .argv()
                    .into_iter()
                    .map(|w| w.into_string().unwrap())
                    .collect();
                assert_eq!(words, expected, "{line}");
                let entry = parse_entry(&line).unwrap();
                assert_eq!(entry.key_type, "ssh-ed25519");
                assert_eq!(entry.comment, "a comment");
                assert!(entry.options.starts_with("command=\""), "{entry:?}");
            }
        }
    }

    #[test]
    fn plain_words_stay_bare_and_the_flags_are_borgs() {
        let forced = ForcedCommand::new("/srv/borg/web1").unwrap();
        assert_eq!(
            forced.command().unwrap(),
            "borg serve --append-only --restrict-to-repository /srv/borg/web1"
        );
        let mut forced = ForcedCommand::new("/a b").unwrap();
        forced.allow_delete = true;
        forced.borg = "/opt/borg=1/borg".into();
        assert_eq!(
            forced.command().unwrap(),
            "'/opt/borg=1/borg' serve --restrict-to-repository '/a b'"
        );
    }

    #[test]
    fn unusable_values_are_refused() {
        assert!(matches!(
            ForcedCommand::new("relative/repo"),
            Err(Error::Serve(borg_pull_core::Error::RepoNotAbsolute { .. }))
        ));
        for bad in ["/a\nb", "/a\rb", "/a\0b"] {
            assert!(
                matches!(ForcedCommand::new(bad), Err(Error::ForcedCommandInvalid { .. })),
                "{bad:?}"
            );
        }
        let forced = ForcedCommand::new("/r").unwrap();
        assert!(forced.line(&key(1), "two\nlines").is_err());
    }

    #[test]
    fn options_with_quoted_spaces_are_parsed() {
        let e = parse_entry("  command=\"a \\\" b\",from=\"x y\" ssh-ed25519 AAAA c d  ").unwrap();
        assert_eq!(e.options, "command=\"a \\\" b\",from=\"x y\"");
        assert_eq!((e.key_type, e.blob, e.comment), ("ssh-ed25519", "AAAA", "c d"));
        let e = parse_entry("ssh-rsa BBBB").unwrap();
        assert_eq!((e.options, e.comment), ("", ""));
        assert_eq!(parse_entry("# ssh-rsa BBBB"), None);
        assert_eq!(parse_entry("   "), None);
    }

    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn install_is_idempotent_keeps_other_lines_and_refuses_a_different_entry() {
        let dir = private_dir();
        let file = dir.path().join("ssh/authorized_keys");
        let forced = ForcedCommand::new("/srv/r").unwrap();
        let line = forced.line(&key(1), "k1").unwrap();
        assert!(install(&file, &line).unwrap());
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(
            fs::metadata(file.parent().unwrap()).unwrap().mode() & 0o7777,
            0o700
        );
        // A different comment is the same entry.
        assert!(!install(&file, &forced.line(&key(1), "other").unwrap()).unwrap());
        let mut other = fs::read(&file).unwrap();
        other.extend_from_slice(b"# a comment\n\nssh-ed25519 AAAAplain login\n");
        fs::write(&file, &other).unwrap();
        let mut delete = forced.clone();
        delete.allow_delete = true;
        match install(&file, &delete.line(&key(1), "k1").unwrap()) {
            Err(Error::AuthorizedKeysConflict { line: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(install(&file, &forced.line(&key(2), "k2").unwrap()).unwrap());
        let after = fs::read(&file).unwrap();
        assert!(after.starts_with(&other), "earlier lines changed");
        // A file without a final newline gets one before our line.
        fs::write(&file, b"ssh-ed25519 AAAAplain login").unwrap();
        assert!(install(&file, &line).unwrap());
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            format!("ssh-ed25519 AAAAplain login\n{line}\n")
        );
    }

    #[test]
    fn unsafe_files_are_refused() {
        let dir = private_dir();
        let line = ForcedCommand::new("/r").unwrap().line(&key(1), "").unwrap();
        let real = dir.path().join("real");
        fs::write(&real, b"").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            install(&link, &line),
            Err(Error::AuthorizedKeysUnsafe { .. })
        ));
        fs::set_permissions(&real, fs::Permissions::from_mode(0o666)).unwrap();
        let err = install(&real, &line).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert_eq!(fs::read(&real).unwrap(), b"");
        assert!(matches!(
            install(dir.path(), &line),
            Err(Error::AuthorizedKeysIo { .. } | Error::AuthorizedKeysUnsafe { .. })
        ));
    }

    #[test]
    fn ephemeral_entries_are_removed_and_only_they() {
        let dir = private_dir();
        let file = dir.path().join("authorized_keys");
        let before = b"# keep me \n\n  ssh-ed25519 AAAAx  spaced\t\nno newline at end";
        fs::write(&file, before).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        let forced = ForcedCommand::new("/srv/r").unwrap();
        let a = add_ephemeral(&file, &forced, &key(1)).unwrap();
        let b = add_ephemeral(&file, &forced, &key(2)).unwrap();
        assert!(a
            .tag()
            .starts_with(&format!("borg-pull-ephemeral pid={} start=", std::process::id())));
        assert_ne!(a.tag(), b.tag());
        // Both makers (us) are alive: nothing is stale.
        assert_eq!(remove_stale_ephemeral(&file).unwrap(), 0);
        a.remove().unwrap();
        let text = fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&key_text(&key(1)).unwrap()));
        assert!(text.contains(b.tag()));
        drop(b); // best-effort removal on drop
        let after = fs::read(&file).unwrap();
        // The missing final newline was added by the first append; the rest is byte for byte.
        assert_eq!(after, [&before[..], b"\n"].concat());
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o640, "mode kept");
    }

    #[test]
    fn stale_entries_are_recognised_by_pid_and_start_time() {
        let dir = private_dir();
        let file = dir.path().join("authorized_keys");
        let forced = ForcedCommand::new("/srv/r").unwrap();
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let start = process_start_time(child.id()).unwrap();
        let dead_tag = format!("{EPHEMERAL_TAG} pid={} start={start} id=00", child.id());
        assert!(install(&file, &forced.line(&key(1), &dead_tag).unwrap()).unwrap());
        // Same pid, another start time: a reused pid, its maker is gone too.
        let reused_tag = format!("{EPHEMERAL_TAG} pid={} start={} id=01", child.id(), start + 1);
        assert!(install(&file, &forced.line(&key(2), &reused_tag).unwrap()).unwrap());
        let mine = add_ephemeral(&file, &forced, &key(3)).unwrap();
        let odd = format!("{EPHEMERAL_TAG} pid=1 start=x id=02");
        assert!(install(&file, &forced.line(&key(4), &odd).unwrap()).unwrap());
        // While the child lives, only the reused-pid entry is stale.
        assert_eq!(remove_stale_ephemeral(&file).unwrap(), 1);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(remove_stale_ephemeral(&file).unwrap(), 1);
        let text = fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&dead_tag) && !text.contains(&reused_tag), "{text}");
        assert!(text.contains(mine.tag()) && text.contains(&odd), "{text}");
        mine.remove().unwrap();
        assert_eq!(remove_stale_ephemeral(&dir.path().join("missing")).unwrap(), 0);
    }

    /// Where [`ephemeral_child`] adds its entry; only set in the child process.
    const CHILD_FILE: &str = "BORG_PULL_TEST_EPHEMERAL_FILE";

    /// Not a test on its own: the child of [`a_killed_process_leaves_an_entry_the_next_run_removes`],
    /// which adds an ephemeral entry, says so, and waits to be killed.
    #[test]
    #[ignore = "run by a_killed_process_leaves_an_entry_the_next_run_removes"]
    fn ephemeral_child() {
        let Some(file) = std::env::var_os(CHILD_FILE) else {
            return;
        };
        let forced = ForcedCommand::new("/srv/child").unwrap();
        let entry = add_ephemeral(Path::new(&file), &forced, &key(42)).unwrap();
        println!("added {}", entry.tag());
        std::thread::sleep(std::time::Duration::from_secs(120));
        drop(entry);
    }

    #[test]
    fn a_killed_process_leaves_an_entry_the_next_run_removes() {
        use std::io::BufRead as _;
        let dir = private_dir();
        let file = dir.path().join("authorized_keys");
        fs::write(&file, b"# first\nssh-ed25519 AAAAx other\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let forced = ForcedCommand::new("/srv/r").unwrap();
        let mine = add_ephemeral(&file, &forced, &key(1)).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "local::authorized_keys::tests::ephemeral_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_FILE, &file)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let tag = loop {
            line.clear();
            assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "the child ended early");
            if let Some(tag) = line.trim_end().strip_prefix("added ") {
                break tag.to_owned();
            }
        };
        assert!(tag.contains(&format!("pid={} ", child.id())), "{tag}");
        // Alive: not stale.
        assert_eq!(remove_stale_ephemeral(&file).unwrap(), 0);
        // SIGKILL: no Drop, the entry stays behind.
        child.kill().unwrap();
        child.wait().unwrap();
        let with_entry = fs::read_to_string(&file).unwrap();
        assert!(with_entry.contains(&tag), "{with_entry}");
        assert_eq!(remove_stale_ephemeral(&file).unwrap(), 1);
        let after = fs::read_to_string(&file).unwrap();
        let expected: String = with_entry
            .split_inclusive('\n')
            .filter(|l| !l.contains(&tag))
            .collect();
        assert_eq!(after, expected);
        assert!(after.starts_with("# first\nssh-ed25519 AAAAx other\n") && after.contains(mine.tag()));
        mine.remove().unwrap();
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            "# first\nssh-ed25519 AAAAx other\n"
        );
    }

    #[test]
    fn concurrent_adds_lose_nothing() {
        let dir = private_dir();
        let file = dir.path().join("authorized_keys");
        let forced = ForcedCommand::new("/srv/r").unwrap();
        let entries: Vec<EphemeralEntry> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|t| {
                    let (file, forced) = (&file, &forced);
                    s.spawn(move || {
                        (0..8)
                            .map(|i| add_ephemeral(file, forced, &key(t * 100 + i)).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let text = fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 128);
        for entry in &entries {
            assert!(text.contains(entry.tag()));
        }
        // Concurrent removals (atomic rewrites) lose nothing either.
        let (half, rest): (Vec<_>, Vec<_>) = entries.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        std::thread::scope(|s| {
            for (_, entry) in half {
                s.spawn(move || entry.remove().unwrap());
            }
        });
        let text = fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 64);
        for (_, entry) in &rest {
            assert!(text.contains(entry.tag()));
        }
    }

    #[test]
    fn public_key_files_are_checked() {
        let dir = private_dir();
        let path = dir.path().join("k.pub");
        let good = format!("{} user@host\n", key_text(&key(5)).unwrap());
        fs::write(&path, &good).unwrap();
        let (read, comment) = read_public_key(&path).unwrap();
        assert_eq!(read.key_data(), key(5).key_data());
        assert_eq!(comment, "user@host");
        for (content, needle) in [
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n".to_owned(),
                "private key",
            ),
            (format!("{good}{good}"), "2 lines"),
            ("ssh-nonsense AAAA x\n".to_owned(), "ssh-nonsense"),
            (String::new(), "no public key"),
        ] {
            fs::write(&path, &content).unwrap();
            let err = read_public_key(&path).unwrap_err().to_string();
            assert!(err.contains(needle), "{content:?}: {err}");
        }
    }
}
