//! The client's side of an SFTP restore: each tar entry written under the restore's directory
//! with SFTP requests only (nothing runs on the client).
//!
//! - Directories: created (0700, so their content can be written whatever their mode), their
//!   modes, times and owners set at the end, deepest first, as tar does.
//! - Regular files: written to a fresh temporary name in their directory (`CREAT|EXCL`: never
//!   through an existing file or symlink), with the data pipelined (one chunk read from borg
//!   while the previous one is in flight, each chunk at most the client crate's write window),
//!   then modes, times and owners set and renamed over the final name (`posix-rename`), so a
//!   file is either the old one or the whole new one.
//! - Hard links: `hardlink@openssh.com` to a file restored in this run, never to anything else.
//! - Symlinks: created last, after every other entry: a restored symlink (`a -> /etc`) can never
//!   redirect a later entry (`a/passwd`). Their times and owners are not set (SFTP v3 has no
//!   lsetstat; setstat follows the link).
//! - Devices and FIFOs: SFTP cannot create them; skipped and reported.
//!
//! An entry whose name is unsafe ([`super::names`]) is refused and reported; one the client
//! refuses (an SFTP status) is reported with its path and status; the run goes on with the next.
//! What ends the run: the SFTP session ending, a request past its deadline (the client stalls),
//! a bound of ours, a broken tar stream.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};

use borg_pull_core::text::escape_for_log;
use borg_pull_sftp::{Attrs, Client, Error as SftpError, FileType, OpenFlags};
use tokio::io::AsyncRead;
use tracing::warn;

use super::names::{parent, Target, Unsafe};
use super::tar_reader::{Header, Kind, TarError, TarReader};
use crate::limits::{SFTP_RESTORE_DEFERRED_MAX, SFTP_RESTORE_REMEMBERED_MAX, SFTP_RESTORE_REPORTS_MAX};

/// Whether owners (uid/gid) are set: only a root login can give files away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// Set each entry's uid and gid from the archive (the login user is root on the client).
    FromArchive,
    /// Leave them to the login user.
    LoginUser,
}

/// Counts of what one restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Entries restored.
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Entries refused for unsafe names (absolute, `..`, too long).
    pub refused: u64,
    /// Entries the client refused to write (or left incomplete).
    pub failed: u64,
    /// Entries SFTP cannot create (devices, FIFOs, unknown kinds).
    pub skipped: u64,
}

/// What ends a restore before the end of the archive.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// borg's tar stream is broken or cannot be read.
    #[error(transparent)]
    Tar(#[from] TarError),
    /// The SFTP session ended, or a request got no answer in time.
    #[error(transparent)]
    Sftp(SftpError),
    /// The archive needs more deferred work than we keep in memory.
    #[error(
        "the archive has more {what} than this restore keeps in memory ({limit} bytes of paths); \
         restore it in parts (give PATHs)"
    )]
    TooMany {
        /// What.
        what: &'static str,
        /// The bound.
        limit: usize,
    },
}

/// A directory whose attributes are set at the end.
struct DeferredDir {
    path: Vec<u8>,
    attrs: Attrs,
    owner: Option<(u32, u32)>,
}

/// A symlink created at the end.
struct DeferredLink {
    path: Vec<u8>,
    target: Vec<u8>,
}

/// The writer's state over one restore.
pub struct Writer<'a> {
    client: &'a Client,
    target: &'a Target,
    owners: Owners,
    /// Bytes of file data read from borg per pipelined step.
    chunk: usize,
    dirs: Vec<DeferredDir>,
    links: Vec<DeferredLink>,
    deferred_bytes: usize,
    /// [`SFTP_RESTORE_DEFERRED_MAX`] (smaller in tests).
    deferred_max: usize,
    /// [`SFTP_RESTORE_REMEMBERED_MAX`] (smaller in tests).
    remembered_max: usize,
    /// Hashes of the files restored in this run (keyed per run): hard links may only point here.
    restored: HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
    /// A per-run part of temporary names.
    run_id: u64,
    next_temp: u64,
    reports: u64,
    /// What was done so far.
    pub written: Written,
}

/// An entry's own failure: reported, the run goes on. Anything else is [`Fatal`].
enum EntryFailure {
    /// The client refused a request (an SFTP status).
    Refused(SftpError),
    /// Something that ends the run.
    Fatal(Fatal),
}

impl From<SftpError> for EntryFailure {
    fn from(e: SftpError) -> Self {
        if e.is_status() {
            EntryFailure::Refused(e)
        } else {
            EntryFailure::Fatal(Fatal::Sftp(e))
        }
    }
}

impl From<TarError> for EntryFailure {
    fn from(e: TarError) -> Self {
        EntryFailure::Fatal(Fatal::Tar(e))
    }
}

impl<'a> Writer<'a> {
    /// A writer into `target` on `client`.
    pub fn new(client: &'a Client, target: &'a Target, owners: Owners, chunk: usize) -> Self {
        let hasher = std::collections::hash_map::RandomState::new();
        let mut h = hasher.build_hasher();
        h.write_u32(std::process::id());
        Writer {
            client,
            target,
            owners,
            chunk: chunk.max(1),
            dirs: Vec::new(),
            links: Vec::new(),
            deferred_bytes: 0,
            deferred_max: SFTP_RESTORE_DEFERRED_MAX,
            remembered_max: SFTP_RESTORE_REMEMBERED_MAX,
            restored: HashSet::new(),
            run_id: h.finish(),
            hasher,
            next_temp: 0,
            reports: 0,
            written: Written::default(),
        }
    }

    /// Writes every entry of `tar`, then the symlinks, then the directories' attributes.
    pub async fn write_all<R: AsyncRead + Unpin>(&mut self, tar: &mut TarReader<R>) -> Result<(), Fatal> {
        let mut data = vec![0u8; self.chunk];
        let mut ahead = vec![0u8; self.chunk];
        // Each pass consumes one header of a finite stream.
        while let Some(header) = tar.next_header().await? {
            self.entry(tar, header, &mut data, &mut ahead).await?;
        }
        self.finish().await
    }

    async fn entry<R: AsyncRead + Unpin>(
        &mut self,
        tar: &mut TarReader<R>,
        h: Header,
        data: &mut Vec<u8>,
        ahead: &mut Vec<u8>,
    ) -> Result<(), Fatal> {
        let path = match self.target.place(&h.name) {
            Ok(Some(path)) => path,
            // `.`: the directory itself keeps its own attributes.
            Ok(None) => return Ok(()),
            Err(why) => {
                self.refuse(&h.name, why);
                return Ok(());
            }
        };
        let done = match &h.kind {
            Kind::Directory => self.directory(path, &h).await,
            Kind::File => self.file(tar, &path, &h, data, ahead).await,
            // Counted when created, at the end.
            Kind::Symlink(target) => self.defer_link(path, target.clone()).map(|()| false),
            Kind::HardLink(existing) => self.hard_link(&path, existing).await,
            Kind::Special(kind) => {
                self.written.skipped += 1;
                self.report(format_args!(
                    "skipped {}: a {kind} cannot be created over SFTP",
                    escape_for_log(&h.name)
                ));
                return Ok(());
            }
            Kind::Unknown(flag) => {
                self.written.skipped += 1;
                self.report(format_args!(
                    "skipped {}: tar entry type {:?} is not restored over SFTP",
                    escape_for_log(&h.name),
                    char::from(*flag)
                ));
                return Ok(());
            }
        };
        match done {
            Ok(true) => self.written.entries += 1,
            Ok(false) => {}
            Err(EntryFailure::Refused(e)) => {
                self.written.failed += 1;
                self.report(format_args!("cannot restore {}: {e}", escape_for_log(&h.name)));
            }
            Err(EntryFailure::Fatal(e)) => return Err(e),
        }
        Ok(())
    }

    fn refuse(&mut self, name: &[u8], why: Unsafe) {
        if why == Unsafe::TooLong {
            // Not an attack: the client could not take it either.
            self.written.failed += 1;
            self.report(format_args!("cannot restore {}: {why}", escape_for_log(name)));
            return;
        }
        self.written.refused += 1;
        self.report(format_args!(
            "refused {}: {why}; it could land outside the restore's directory",
            escape_for_log(name)
        ));
    }

    /// One line of the run's report, up to [`SFTP_RESTORE_REPORTS_MAX`] of them.
    fn report(&mut self, line: std::fmt::Arguments<'_>) {
        self.reports += 1;
        if self.reports <= SFTP_RESTORE_REPORTS_MAX {
            warn!("{line}");
        } else if self.reports == SFTP_RESTORE_REPORTS_MAX + 1 {
            warn!("more entries not restored; the counts at the end say how many");
        }
    }

    fn defer(&mut self, bytes: usize, what: &'static str) -> Result<(), Fatal> {
        self.deferred_bytes += bytes + std::mem::size_of::<DeferredDir>();
        if self.deferred_bytes > self.deferred_max {
            return Err(Fatal::TooMany {
                what,
                limit: self.deferred_max,
            });
        }
        Ok(())
    }

    fn attrs_of(&self, h: &Header) -> (Attrs, Option<(u32, u32)>) {
        let mode = match self.owners {
            Owners::FromArchive => h.mode & 0o7777,
            // As tar without -p: no setuid/setgid for files a user restores as their own.
            Owners::LoginUser => h.mode & 0o1777,
        };
        let time = u32::try_from(h.mtime).unwrap_or(u32::MAX);
        let attrs = Attrs {
            permissions: Some(mode),
            atime: Some(time),
            mtime: Some(time),
            ..Attrs::default()
        };
        let owner = (self.owners == Owners::FromArchive).then_some((h.uid, h.gid));
        (attrs, owner)
    }

    /// Owner first, mode and times after: chown clears setuid bits, and OpenSSH's setstat
    /// applies the mode before the owner.
    async fn set_attrs(
        &self,
        path: &[u8],
        attrs: &Attrs,
        owner: Option<(u32, u32)>,
    ) -> Result<(), SftpError> {
        if let Some((uid, gid)) = owner {
            let ids = Attrs {
                uid: Some(uid),
                gid: Some(gid),
                ..Attrs::default()
            };
            self.client.setstat(path, &ids).await?;
        }
        self.client.setstat(path, attrs).await
    }

    async fn directory(&mut self, path: Vec<u8>, h: &Header) -> Result<bool, EntryFailure> {
        let private = Attrs {
            permissions: Some(0o700),
            ..Attrs::default()
        };
        let mut made = self.client.mkdir(&path, &private).await;
        if matches!(made, Err(SftpError::NoSuchFile { .. })) && self.make_parents(&path).await? {
            made = self.client.mkdir(&path, &private).await;
        }
        if let Err(e) = made {
            if !e.is_status() {
                return Err(e.into());
            }
            // An existing directory is restored into (tar does the same); anything else there
            // is the failure.
            match self.client.lstat(&path).await {
                // A read-only one (an earlier restore's 0555) is opened for us until its mode is
                // set at the end; best effort: a directory of someone else's stays as it is.
                Ok(a) if a.file_type() == FileType::Directory => {
                    if a.mode().is_some_and(|m| m & 0o300 != 0o300) {
                        let _ = self.client.setstat(&path, &private).await;
                    }
                }
                _ => return Err(e.into()),
            }
        }
        self.defer(path.len(), "directories")
            .map_err(EntryFailure::Fatal)?;
        let (attrs, owner) = self.attrs_of(h);
        self.dirs.push(DeferredDir { path, attrs, owner });
        Ok(true)
    }

    /// Makes the missing directories above `path` (inside the restore's directory), as tar does
    /// for an archive that lacks their entries (borg stores no parents of the paths it was
    /// given): 0755, not deferred. `false` if there was nothing to make; symlinks are not yet
    /// restored, so none of these can lead elsewhere.
    async fn make_parents(&self, path: &[u8]) -> Result<bool, EntryFailure> {
        let base = self.target.dir().len();
        let parent = parent(path);
        if parent.len() <= base {
            return Ok(false);
        }
        let open = Attrs {
            permissions: Some(0o755),
            ..Attrs::default()
        };
        // One mkdir per component below the directory: a path has few.
        for (i, &b) in parent.iter().enumerate().skip(base + 1) {
            if b == b'/' {
                self.mkdir_if_missing(&parent[..i], &open).await?;
            }
        }
        self.mkdir_if_missing(parent, &open).await?;
        Ok(true)
    }

    async fn mkdir_if_missing(&self, dir: &[u8], attrs: &Attrs) -> Result<(), EntryFailure> {
        match self.client.mkdir(dir, attrs).await {
            Ok(()) => Ok(()),
            // Most often: it exists. Otherwise the retried request fails with the cause.
            Err(e) if e.is_status() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn temp_name(&mut self, path: &[u8]) -> Vec<u8> {
        self.next_temp += 1;
        let mut temp = parent(path).to_vec();
        if !temp.ends_with(b"/") {
            temp.push(b'/');
        }
        temp.extend_from_slice(format!(".borg-pull-{:016x}-{}", self.run_id, self.next_temp).as_bytes());
        temp
    }

    fn remember(&mut self, path: &[u8]) {
        if self.restored.len() < self.remembered_max {
            let hash = self.hash(path);
            self.restored.insert(hash);
        }
    }

    fn hash(&self, path: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(path);
        h.finish()
    }

    async fn file<R: AsyncRead + Unpin>(
        &mut self,
        tar: &mut TarReader<R>,
        path: &[u8],
        h: &Header,
        data: &mut Vec<u8>,
        ahead: &mut Vec<u8>,
    ) -> Result<bool, EntryFailure> {
        let temp = self.temp_name(path);
        let create = OpenFlags(OpenFlags::WRITE.0 | OpenFlags::CREATE.0 | OpenFlags::EXCLUSIVE.0);
        let private = Attrs {
            permissions: Some(0o600),
            ..Attrs::default()
        };
        let mut opened = self.client.open_write(&temp, create, &private).await;
        if matches!(opened, Err(SftpError::NoSuchFile { .. })) && self.make_parents(path).await? {
            opened = self.client.open_write(&temp, create, &private).await;
        }
        let handle = opened?;
        let copied = self.copy(tar, &handle, data, ahead).await;
        let closed = self.client.close(handle).await;
        let placed = match (copied, closed) {
            (Ok(()), Ok(())) => {
                let (attrs, owner) = self.attrs_of(h);
                match self.set_attrs(&temp, &attrs, owner).await {
                    Ok(()) => self.place(&temp, path).await,
                    Err(e) => Err(e),
                }
            }
            (Err(EntryFailure::Fatal(e)), _) => return Err(EntryFailure::Fatal(e)),
            (Err(EntryFailure::Refused(e)), _) | (Ok(()), Err(e)) => Err(e),
        };
        match placed {
            Ok(()) => {
                self.remember(path);
                Ok(true)
            }
            Err(e) => {
                if e.is_status() {
                    // Best effort: the failure reported is the one that matters.
                    let _ = self.client.remove(&temp).await;
                }
                Err(e.into())
            }
        }
    }

    /// Copies the current entry's data into `handle`: each chunk's WRITEs in flight while the
    /// next chunk is read from borg.
    async fn copy<R: AsyncRead + Unpin>(
        &mut self,
        tar: &mut TarReader<R>,
        handle: &borg_pull_sftp::Handle,
        data: &mut Vec<u8>,
        ahead: &mut Vec<u8>,
    ) -> Result<(), EntryFailure> {
        let mut offset = 0u64;
        let mut n = tar.read_data(data).await?;
        // Each pass consumes a chunk of the entry's finite data.
        while n > 0 {
            let (wrote, read) = tokio::join!(
                self.client.write(handle, offset, &data[..n]),
                tar.read_data(ahead)
            );
            wrote?;
            self.written.bytes += n as u64;
            offset += n as u64;
            n = read?;
            std::mem::swap(data, ahead);
        }
        Ok(())
    }

    /// Moves a finished temporary file over `path`.
    async fn place(&self, temp: &[u8], path: &[u8]) -> Result<(), SftpError> {
        if self.client.extensions().posix_rename() {
            return self.client.posix_rename(temp, path).await;
        }
        // Plain SFTP rename fails over an existing name: remove it first (not a directory).
        match self.client.remove(path).await {
            Ok(()) | Err(SftpError::NoSuchFile { .. }) => {}
            Err(e) => return Err(e),
        }
        self.client.rename(temp, path).await
    }

    async fn hard_link(&mut self, path: &[u8], existing: &[u8]) -> Result<bool, EntryFailure> {
        let existing = match self.target.place(existing) {
            Ok(Some(p)) => p,
            Ok(None) | Err(_) => {
                self.written.refused += 1;
                self.report(format_args!(
                    "refused the hard link {} to {}: its target is not a file of this restore",
                    escape_for_log(path),
                    escape_for_log(existing)
                ));
                return Ok(false);
            }
        };
        if !self.restored.contains(&self.hash(&existing)) {
            self.written.failed += 1;
            self.report(format_args!(
                "cannot restore the hard link {}: its target {} was not restored in this run",
                escape_for_log(path),
                escape_for_log(&existing)
            ));
            return Ok(false);
        }
        let temp = self.temp_name(path);
        let mut linked = self.client.hardlink(&existing, &temp).await;
        if matches!(linked, Err(SftpError::NoSuchFile { .. })) && self.make_parents(path).await? {
            linked = self.client.hardlink(&existing, &temp).await;
        }
        linked?;
        if let Err(e) = self.place(&temp, path).await {
            let _ = self.client.remove(&temp).await;
            return Err(e.into());
        }
        // rename(2) of a link onto another link of the same file leaves both: drop ours.
        match self.client.remove(&temp).await {
            Ok(()) | Err(SftpError::NoSuchFile { .. }) => {}
            Err(e) if e.is_status() => {}
            Err(e) => return Err(e.into()),
        }
        self.remember(path);
        Ok(true)
    }

    fn defer_link(&mut self, path: Vec<u8>, target: Vec<u8>) -> Result<(), EntryFailure> {
        self.defer(path.len() + target.len(), "symlinks")
            .map_err(EntryFailure::Fatal)?;
        self.links.push(DeferredLink { path, target });
        Ok(())
    }

    /// The symlinks, then the directories' attributes deepest first (their content, symlinks
    /// included, is in place by then, and a read-only directory's mode comes last).
    async fn finish(&mut self) -> Result<(), Fatal> {
        // The symlinks made so far: a later one below one of them would be made through it.
        let mut made = HashSet::new();
        for link in std::mem::take(&mut self.links) {
            if self.below_any(&link.path, &made) {
                self.written.refused += 1;
                self.report(format_args!(
                    "refused the symlink {}: it is below a symlink of this restore, which could \
                     lead outside the restore's directory",
                    escape_for_log(&link.path)
                ));
                continue;
            }
            match self.symlink(&link).await {
                Ok(()) => {
                    made.insert(self.hash(&link.path));
                    self.written.entries += 1;
                }
                Err(EntryFailure::Refused(e)) => {
                    self.written.failed += 1;
                    self.report(format_args!(
                        "cannot restore the symlink {}: {e}",
                        escape_for_log(&link.path)
                    ));
                }
                Err(EntryFailure::Fatal(e)) => return Err(e),
            }
        }
        let mut dirs = std::mem::take(&mut self.dirs);
        // Deeper paths first; a directory's own attributes after its subdirectories'.
        dirs.sort_by(|a, b| b.path.cmp(&a.path));
        for dir in dirs {
            if let Err(e) = self.set_attrs(&dir.path, &dir.attrs, dir.owner).await {
                if !e.is_status() {
                    return Err(Fatal::Sftp(e));
                }
                self.written.failed += 1;
                self.report(format_args!(
                    "cannot set the mode and times of the directory {}: {e}",
                    escape_for_log(&dir.path)
                ));
            }
        }
        Ok(())
    }

    /// Whether a directory above `path` (below the restore's directory) is one of `links`.
    fn below_any(&self, path: &[u8], links: &HashSet<u64>) -> bool {
        let base = self.target.dir().len();
        path.iter()
            .enumerate()
            .skip(base + 1)
            .any(|(i, &b)| b == b'/' && links.contains(&self.hash(&path[..i])))
    }

    async fn symlink(&self, link: &DeferredLink) -> Result<(), EntryFailure> {
        let mut made = self.client.symlink(&link.path, &link.target).await;
        if matches!(made, Err(SftpError::NoSuchFile { .. })) && self.make_parents(&link.path).await? {
            made = self.client.symlink(&link.path, &link.target).await;
        }
        let first = match made {
            Ok(()) => return Ok(()),
            Err(e) if e.is_status() => e,
            Err(e) => return Err(e.into()),
        };
        // Something is there: tar replaces a file or a symlink, never a directory.
        match self.client.lstat(&link.path).await {
            Ok(a) if matches!(a.file_type(), FileType::Symlink | FileType::Regular) => {
                self.client.remove(&link.path).await?;
                self.client.symlink(&link.path, &link.target).await?;
                Ok(())
            }
            _ => Err(first.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::sftp_restore::tar_reader::tests::{end, entry};

    /// OpenSSH's sftp-server as a child, and a client on it.
    async fn sftp_server() -> (tokio::process::Child, Client) {
        let mut child = tokio::process::Command::new("/usr/lib/openssh/sftp-server")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("/usr/lib/openssh/sftp-server (openssh-sftp-server)");
        let stream = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let client = Client::start(stream, borg_pull_sftp::Limits::default())
            .await
            .unwrap();
        (child, client)
    }

    #[tokio::test]
    async fn deferred_work_past_its_bound_ends_the_restore_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (_child, client) = sftp_server().await;
        let target = Target::new(tmp.path().as_os_str().as_encoded_bytes());
        let mut w = Writer::new(&client, &target, Owners::LoginUser, 4096);
        w.deferred_max = 200;
        let mut tar = Vec::new();
        for i in 0..10 {
            tar.extend(entry(format!("dir{i}/").as_bytes(), b'5', b"", b""));
        }
        tar.extend(end());
        let r = w.write_all(&mut TarReader::new(tar.as_slice())).await;
        assert!(
            matches!(
                r,
                Err(Fatal::TooMany {
                    what: "directories",
                    limit: 200
                })
            ),
            "{r:?}"
        );
        assert!(w.written.entries < 10, "{:?}", w.written);
    }

    #[tokio::test]
    async fn hard_links_to_files_past_the_remembered_bound_are_reported_not_made() {
        let tmp = tempfile::tempdir().unwrap();
        let (_child, client) = sftp_server().await;
        let target = Target::new(tmp.path().as_os_str().as_encoded_bytes());
        let mut w = Writer::new(&client, &target, Owners::LoginUser, 4096);
        w.remembered_max = 1;
        let mut tar = entry(b"first", b'0', b"1", b"");
        tar.extend(entry(b"second", b'0', b"2", b""));
        tar.extend(entry(b"to first", b'1', b"", b"first"));
        tar.extend(entry(b"to second", b'1', b"", b"second"));
        tar.extend(end());
        w.write_all(&mut TarReader::new(tar.as_slice())).await.unwrap();
        assert_eq!((w.written.entries, w.written.failed), (3, 1), "{:?}", w.written);
        assert!(tmp.path().join("to first").exists());
        assert!(!tmp.path().join("to second").exists());
    }
}
