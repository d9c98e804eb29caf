//! The user's `borg create` arguments, made to work on this server against the mount: the paths
//! made relative to the mount root (borg runs there, so archive paths are as on the client), the
//! files cache keyed without ctime and inode (SFTP carries neither), no probes for what SFTP
//! cannot carry (flags, xattrs, ACLs), `{hostname}` the client's.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};

use crate::Error;

/// How borg records owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owners {
    /// Names from the client's files, bound over this server's in borg's mount namespace.
    ClientNames,
    /// `--numeric-ids`: no names (without root there is no private mount namespace).
    NumericOnly,
}

/// What the rewrite needs to know about the client.
#[derive(Debug, Clone)]
pub(crate) struct ClientView<'a> {
    /// The SFTP server's working directory (the login user's home): relative paths start there,
    /// as they would in a shell on the client.
    pub(crate) home: &'a [u8],
    /// The client's host name for `{hostname}` and `{fqdn}`.
    pub(crate) hostname: &'a str,
    /// How owners are recorded.
    pub(crate) owners: Owners,
}

/// `create` options that take a value as the next argument (borg 1.2, 1.4 and 2), so that the
/// value is not taken for a path.
const WITH_VALUE: &[&str] = &[
    "--lock-wait",
    "--umask",
    "--remote-path",
    "--upload-ratelimit",
    "--remote-ratelimit",
    "--upload-buffer",
    "--remote-buffer",
    "--debug-topic",
    "--debug-profile",
    "--comment",
    "--timestamp",
    "--checkpoint-interval",
    "--checkpoint-volume",
    "--chunker-params",
    "--compression",
    "-C",
    "--filter",
    "--files-cache",
    "--exclude",
    "-e",
    "--exclude-from",
    "--pattern",
    "--patterns-from",
    "--exclude-if-present",
    "--stdin-name",
    "--stdin-user",
    "--stdin-group",
    "--stdin-mode",
    "--paths-delimiter",
    "--tags",
    "--hostname",
    "--username",
];

/// What SFTP cannot carry, so borg need not ask each file for it: every probe is a call into the
/// mount (a flags ioctl alone costs the kernel an open, the ioctl and a release), about 0.5 ms per
/// file, and the answer is always "none". Added unless given.
const NOTHING_TO_PROBE: &[&str] = &["--noflags", "--noxattrs", "--noacls"];

/// Options that would read paths or run commands on this server instead of the client, or name
/// another repository.
const REFUSED: &[(&str, &str)] = &[
    ("--paths-from-stdin", "the paths would be read on this server"),
    (
        "--paths-from-command",
        "the command would run on this server, not on the client",
    ),
    (
        "--content-from-command",
        "the command would run on this server, not on the client",
    ),
    ("--repo", "the repository is borg-pull-server's --repo"),
    ("-r", "the repository is borg-pull-server's --repo"),
];

/// The arguments for the server's borg, run with the mount root as its working directory.
pub(crate) fn rewrite(args: &[OsString], client: &ClientView<'_>) -> Result<Vec<OsString>, Error> {
    let usage = |s: String| Err(super::usage(s));
    match args.first().map(OsString::as_os_str) {
        Some(c) if c == "create" => {}
        Some(other) => {
            return usage(format!(
                "only `borg create` runs over an sftp mount, not {:?}; run other commands on the server against --repo",
                other
            ))
        }
        None => return usage("no borg command given: give `create ::ARCHIVE PATH...`".into()),
    }
    let mut out = vec![OsString::from("create")];
    let mut files_cache = false;
    let mut numeric = false;
    let mut given_probes: Vec<String> = Vec::new();
    let mut archive: Option<OsString> = None;
    let mut paths = Vec::new();
    let mut rest = args[1..].iter();
    let mut only_positionals = false;
    while let Some(arg) = rest.next() {
        let bytes = arg.as_bytes();
        if !only_positionals && bytes == b"--" {
            only_positionals = true;
            continue;
        }
        if !only_positionals && bytes.starts_with(b"-") && bytes.len() > 1 {
            let name = match bytes.iter().position(|&b| b == b'=') {
                Some(eq) => &bytes[..eq],
                None => bytes,
            };
            let name = String::from_utf8_lossy(name).into_owned();
            if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == name) {
                return usage(format!("{name} cannot be used: {why}"));
            }
            files_cache |= name == "--files-cache";
            numeric |= name == "--numeric-ids" || name == "--numeric-owner";
            if NOTHING_TO_PROBE.contains(&name.as_str()) {
                given_probes.push(name.clone());
            }
            out.push(arg.clone());
            if WITH_VALUE.contains(&name.as_str()) && !bytes.contains(&b'=') {
                match rest.next() {
                    Some(value) => out.push(value.clone()),
                    None => return usage(format!("{name} needs a value")),
                }
            }
            continue;
        }
        match archive {
            None => archive = Some(archive_name(arg, client.hostname)?),
            Some(_) => paths.push(relative_path(arg.as_bytes(), client.home)?),
        }
    }
    let Some(archive) = archive else {
        return usage("no archive given: `create ::ARCHIVE PATH...`".into());
    };
    if paths.is_empty() {
        return usage("no path given: name the client's directories to back up, e.g. /etc /home".into());
    }
    if !files_cache {
        // ctime and inode numbers do not cross SFTP: keyed on them, every file would look
        // changed on every run.
        out.push("--files-cache=mtime,size".into());
    }
    if client.owners == Owners::NumericOnly && !numeric {
        out.push("--numeric-ids".into());
    }
    for probe in NOTHING_TO_PROBE {
        if !given_probes.iter().any(|given| given == probe) {
            out.push(OsString::from(probe));
        }
    }
    out.push("--".into());
    out.push(archive);
    out.extend(paths);
    Ok(out)
}

/// `::NAME` (borg 1) or `NAME` (borg 2) with the client's host name for `{hostname}` and
/// `{fqdn}`, which borg would otherwise fill with this server's. A `REPO::NAME` is refused: the
/// repository is the server's `--repo`.
fn archive_name(arg: &OsStr, hostname: &str) -> Result<OsString, Error> {
    let text = arg
        .to_str()
        .ok_or_else(|| super::usage(format!("the archive name {arg:?} is not valid UTF-8")))?;
    if let Some(at) = text.find("::") {
        if at != 0 {
            return Err(super::usage(format!(
                "{text:?} names a repository; give only ::ARCHIVE (the repository is --repo)"
            )));
        }
    }
    let short = hostname.split('.').next().unwrap_or(hostname);
    Ok(text
        .replace("{hostname}", short)
        .replace("{fqdn}", hostname)
        .into())
}

/// A client path as borg should see it from the mount root: absolute paths lose their `/`,
/// relative ones start at the SFTP server's working directory; `..` is refused (it would leave the
/// mount, into this server's file system).
pub(crate) fn relative_path(path: &[u8], home: &[u8]) -> Result<OsString, Error> {
    let mut full = Vec::new();
    if !path.starts_with(b"/") {
        full.extend_from_slice(home);
        full.push(b'/');
    }
    full.extend_from_slice(path);
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in full.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(super::usage(format!(
                    "the path {:?} has a `..`; give the client's paths without one",
                    OsStr::from_bytes(path)
                )))
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Ok(".".into());
    }
    Ok(OsString::from_vec(parts.join(&b'/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    fn view(owners: Owners) -> ClientView<'static> {
        ClientView {
            home: b"/home/op",
            hostname: "web1.example.org",
            owners,
        }
    }

    #[test]
    fn paths_become_relative_to_the_mount_root() {
        let got = rewrite(
            &args(&[
                "create",
                "--stats",
                "-e",
                "/etc/ssl",
                "::{hostname}-1",
                "/etc",
                "data",
                "/",
            ]),
            &view(Owners::ClientNames),
        )
        .unwrap();
        assert_eq!(
            got,
            args(&[
                "create",
                "--stats",
                "-e",
                "/etc/ssl",
                "--files-cache=mtime,size",
                "--noflags",
                "--noxattrs",
                "--noacls",
                "--",
                "::web1-1",
                "etc",
                "home/op/data",
                "."
            ])
        );
    }

    #[test]
    fn given_options_stay_once_and_numeric_ids_without_root() {
        let got = rewrite(
            &args(&[
                "create",
                "--files-cache",
                "size",
                "--noxattrs",
                "::a-{fqdn}",
                "/srv/x/",
            ]),
            &view(Owners::NumericOnly),
        )
        .unwrap();
        assert_eq!(
            got,
            args(&[
                "create",
                "--files-cache",
                "size",
                "--noxattrs",
                "--numeric-ids",
                "--noflags",
                "--noacls",
                "--",
                "::a-web1.example.org",
                "srv/x"
            ])
        );
    }

    #[test]
    fn what_would_act_on_this_server_is_refused() {
        for bad in [
            &["list", "::a"][..],
            &["create", "::a"],
            &["create", "::a", "/etc/../root"],
            &["create", "::a", "../x"],
            &["create", "--paths-from-command", "::a", "--", "sh"],
            &["create", "--content-from-command", "::a", "--", "sh"],
            &["create", "--paths-from-stdin", "::a"],
            &["create", "/srv/other::a", "/etc"],
            &["create", "-r", "/srv/other", "a", "/etc"],
            &["create", "-e"],
            &[],
        ] {
            let e = rewrite(&args(bad), &view(Owners::ClientNames));
            assert!(matches!(e, Err(Error::InvalidOption(_))), "{bad:?}: {e:?}");
        }
    }
}
