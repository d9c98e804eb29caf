//! The per-client directory on this server: `WORK/sftp/<client-id>/` (0700) holding the mount
//! point `root` and our `passwd` and `group` files. The path is the same on every run for the same
//! client, because borg's files cache is keyed by path: another path would make every file look
//! new.

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::Error;

/// The default work directory: `$RUNTIME_DIRECTORY` (a systemd unit's) or `/run/borg-pull` for
/// root, `$XDG_RUNTIME_DIR/borg-pull` or `~/.local/state/borg-pull` for another user. The caller
/// reads the variables (the library reads none).
pub fn default_work_dir(
    is_root: bool,
    runtime_directory: Option<PathBuf>,
    xdg_runtime_dir: Option<PathBuf>,
    home: Option<&Path>,
) -> Option<PathBuf> {
    if let Some(dir) = runtime_directory.filter(|d| d.is_absolute()) {
        return Some(dir);
    }
    if is_root {
        return Some("/run/borg-pull".into());
    }
    xdg_runtime_dir
        .filter(|d| d.is_absolute())
        .map(|d| d.join("borg-pull"))
        .or_else(|| home.map(|h| h.join(".local/state/borg-pull")))
}

/// A name for the client that is one path component: `USER@HOST_PORT` with anything but
/// `[A-Za-z0-9._@-]` replaced, and a hash of the exact triple so that two clients never share one.
pub(crate) fn client_id(user: &str, host: &str, port: u16) -> String {
    use sha2::Digest as _;
    let exact = format!("{user}@{host}:{port}");
    let hash = sha2::Sha256::digest(exact.as_bytes());
    let safe: String = format!("{user}@{host}_{port}")
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{safe}-{:02x}{:02x}{:02x}{:02x}",
        hash[0], hash[1], hash[2], hash[3]
    )
}

/// Makes `work/sftp/<id>` (each level we create 0700; the last two always) and returns it.
pub(crate) fn client_dir(work: &Path, id: &str) -> Result<PathBuf, Error> {
    let dir = work.join("sftp").join(id);
    let io = |context: String| move |source| Error::Io { context, source };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(format!(
            "cannot create {} (choose another --sftp-dir)",
            dir.display()
        )))?;
    for private in [work.join("sftp"), dir.clone()] {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("cannot make {} private (0700)", private.display())))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_one_stable_component_per_client() {
        let a = client_id("backup", "web1.example.org", 22);
        assert_eq!(a, client_id("backup", "web1.example.org", 22));
        assert!(a.starts_with("backup@web1.example.org_22-"));
        assert_ne!(a, client_id("backup", "web1.example.org", 2222));
        // Two hosts that differ only in replaced characters still differ.
        let (x, y) = (client_id("u", "a/b", 22), client_id("u", "a_b", 22));
        assert_ne!(x, y);
        assert!(!x.contains('/') && x != ".." && !x.is_empty());
        assert!(!client_id("u", "::1", 22).contains(':'));
    }

    #[test]
    fn the_client_dir_is_private() {
        let work = tempfile::tempdir().unwrap();
        let dir = client_dir(work.path(), "c1").unwrap();
        assert_eq!(dir, work.path().join("sftp/c1"));
        for d in [work.path().join("sftp"), dir] {
            assert_eq!(std::fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700);
        }
    }

    #[test]
    fn default_work_dirs() {
        let home = Path::new("/home/op");
        assert_eq!(
            default_work_dir(true, None, None, None),
            Some("/run/borg-pull".into())
        );
        assert_eq!(
            default_work_dir(true, Some("/run/borg-pull-unit".into()), None, None),
            Some("/run/borg-pull-unit".into())
        );
        assert_eq!(
            default_work_dir(false, None, Some("/run/user/1000".into()), Some(home)),
            Some("/run/user/1000/borg-pull".into())
        );
        assert_eq!(
            default_work_dir(false, None, None, Some(home)),
            Some("/home/op/.local/state/borg-pull".into())
        );
        assert_eq!(default_work_dir(false, None, None, None), None);
    }
}
