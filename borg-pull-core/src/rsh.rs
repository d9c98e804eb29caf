//! The ssh-style argv that borg appends to `BORG_RSH`.
//!
//! borg runs `BORG_RSH` split like a shell would, then appends `[-p PORT] [user@]host` and the remote
//! command (`borg serve --umask=077 --info ...`, or `borg serve --rest --backend ...` for borg 2). A
//! user's `BORG_RSH` may carry further ssh options in front. `borg-pull-relay` connects to a fixed
//! socket, so none of this decides anything: it is parsed only to accept exactly what ssh accepts
//! and to log it. Nothing here is ever passed to a shell.
//!
//! ```
//! use borg_pull_core::rsh::RshArgs;
//!
//! let argv = ["-p", "2222", "backup@nas", "borg", "serve", "--umask=077", "--info"];
//! let rsh = RshArgs::parse(argv).unwrap();
//! assert_eq!(rsh.host.as_deref(), Some("nas"));
//! assert_eq!(rsh.user.as_deref(), Some("backup"));
//! assert_eq!(rsh.port, Some(2222));
//! assert_eq!(rsh.remote_command, ["borg", "serve", "--umask=077", "--info"]);
//! ```

use std::ffi::{OsStr, OsString};

use crate::error::{Error, Result};

/// ssh(1) options that take an argument (`-p 22` or glued `-p22`); every other letter is a flag.
const OPTIONS_WITH_ARGUMENT: &str = "BbcDEeFIiJLlmOoPpQRSWw";

/// What borg appended to `BORG_RSH`, split the way ssh(1) splits its own argv.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RshArgs {
    /// The destination host without user and port; `None` when no destination was given.
    pub host: Option<String>,
    /// The user from `-l user`, `user@host` or an `ssh://` destination (the first `-l` wins, then
    /// the destination, as in ssh).
    pub user: Option<String>,
    /// The port from `-p PORT` (the first one) or else an `ssh://host:PORT` destination.
    pub port: Option<u16>,
    /// Everything after the destination and any options following it: the command borg wants run
    /// remotely.
    pub remote_command: Vec<OsString>,
    /// ssh options that were accepted and ignored, each as one string (`-o X=Y`, `-4`, `-i F`).
    pub ignored_options: Vec<String>,
}

impl RshArgs {
    /// Parses the arguments that follow the relay's own options, as ssh(1) does: options, the
    /// destination, more options (ssh reads options after the destination too, up to the first
    /// word that is not one, unless `--` came before the destination), then the remote command.
    /// The first `-p` and `-l` win, and beat a port or user in the destination.
    ///
    /// Fails only where ssh itself would refuse the argv: an option missing its argument, a port
    /// that is not a number in 1..=65535, or a destination `@host` with an empty user.
    pub fn parse<I, T>(args: I) -> Result<RshArgs>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut parsed = RshArgs::default();
        let mut args = args.into_iter().map(Into::into).peekable();
        let mut have_destination = false;
        while let Some(arg) = args.peek() {
            let text = arg.to_string_lossy().into_owned();
            if text == "--" {
                args.next();
                if !have_destination {
                    if let Some(destination) = args.next() {
                        parsed.set_destination(&destination)?;
                    }
                }
                break;
            }
            if text.len() > 1 && text.starts_with('-') {
                args.next();
                parsed.option(&text, &mut args)?;
            } else if !have_destination {
                let destination = args.next().expect("peeked");
                parsed.set_destination(&destination)?;
                have_destination = true;
            } else {
                break;
            }
        }
        parsed.remote_command.extend(args);
        Ok(parsed)
    }

    /// Handles one option word: a cluster of flags (`-4Cv`), possibly ending in an option whose
    /// argument is glued (`-p2222`, `-oBatchMode=yes`) or is the next word (`-p 2222`).
    fn option(&mut self, word: &str, rest: &mut impl Iterator<Item = OsString>) -> Result<()> {
        if word.starts_with("--") {
            // ssh has no long options; `ssh --foo` appears in borg's own tests, so accept it quietly.
            self.ignored_options.push(word.to_owned());
            return Ok(());
        }
        for (at, letter) in word.char_indices().skip(1) {
            if !OPTIONS_WITH_ARGUMENT.contains(letter) {
                continue;
            }
            let glued = &word[at + letter.len_utf8()..];
            let value = if glued.is_empty() {
                let next = rest.next().ok_or_else(|| Error::RshArgs {
                    arg: word.to_owned(),
                    reason: "this ssh option needs an argument".into(),
                })?;
                next.to_string_lossy().into_owned()
            } else {
                glued.to_owned()
            };
            return self.option_with_value(&word[..at + letter.len_utf8()], letter, value);
        }
        self.ignored_options.push(word.to_owned());
        Ok(())
    }

    fn option_with_value(&mut self, flags: &str, letter: char, value: String) -> Result<()> {
        // ssh keeps the first -p and -l and ignores later ones (without checking them).
        match letter {
            'p' if self.port.is_none() => self.port = Some(parse_port(&value)?),
            'l' if self.user.is_none() => self.user = Some(value.clone()),
            _ => {}
        }
        self.ignored_options.push(format!("{flags} {value}"));
        Ok(())
    }

    /// `[user@]host`, or ssh's URI form `ssh://[user@]host[:port]`.
    fn set_destination(&mut self, destination: &OsStr) -> Result<()> {
        let destination = destination.to_string_lossy();
        let (uri, rest) = match destination.strip_prefix("ssh://") {
            Some(rest) => (true, rest.trim_end_matches('/')),
            None => (false, &*destination),
        };
        let host = match rest.rsplit_once('@') {
            Some(("", _)) if !uri => {
                return Err(Error::RshArgs {
                    arg: destination.to_string(),
                    reason: "the destination has an empty user name before '@'".into(),
                })
            }
            Some((user, host)) => {
                // An earlier `-l` wins, as in ssh.
                self.user.get_or_insert_with(|| user.to_owned());
                host
            }
            None => rest,
        };
        let host = match host.rsplit_once(':').filter(|_| uri && !host.ends_with(']')) {
            Some((host, port)) => {
                // Checked even when an earlier `-p` wins, as ssh checks the URI.
                let port = parse_port(port)?;
                self.port.get_or_insert(port);
                host
            }
            None => host,
        };
        self.host = Some(host.trim_start_matches('[').trim_end_matches(']').to_owned());
        Ok(())
    }
}

fn parse_port(value: &str) -> Result<u16> {
    match value.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(Error::RshArgs {
            arg: value.to_owned(),
            reason: "not a port number (1-65535)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// argv, user, host, port, remote command.
    type Case = (
        &'static [&'static str],
        Option<&'static str>,
        Option<&'static str>,
        Option<u16>,
        &'static [&'static str],
    );

    /// argv shapes from borg's `ssh_cmd` + `borg_cmd`
    /// (testsuite/repository.py `test_ssh_cmd`, `test_borg_cmd`), borg 2's `--rest --backend`, and
    /// ssh options a user's BORG_RSH may add in front.
    #[rustfmt::skip]
    const CASES: &[Case] = &[
        (&["example.com", "borg", "serve", "--info"], None, Some("example.com"), None, &["borg", "serve", "--info"]),
        (&["user@example.com", "borg", "serve"], Some("user"), Some("example.com"), None, &["borg", "serve"]),
        (&["-p", "1234", "user@example.com", "borg", "serve"], Some("user"), Some("example.com"), Some(1234), &["borg", "serve"]),
        (&["--foo", "example.com", "borg", "serve"], None, Some("example.com"), None, &["borg", "serve"]),
        (&["-i", "foo", "example.com", "borg", "serve"], None, Some("example.com"), None, &["borg", "serve"]),
        (
            &["x", "borg-0.28.2", "serve", "--info", "--debug-topic=borg.debug.repository_compaction"],
            None, Some("x"), None,
            &["borg-0.28.2", "serve", "--info", "--debug-topic=borg.debug.repository_compaction"],
        ),
        (
            &["-p", "22", "borg@x", "borg", "serve", "--umask=077", "--debug", "--storage-quota=314159265"],
            Some("borg"), Some("x"), Some(22),
            &["borg", "serve", "--umask=077", "--debug", "--storage-quota=314159265"],
        ),
        (
            &["x", "borg", "serve", "--rest", "--backend", "FILE:/srv/repo"],
            None, Some("x"), None,
            &["borg", "serve", "--rest", "--backend", "FILE:/srv/repo"],
        ),
        (&["-oBatchMode=yes", "-o", "X=Y", "-4", "-C", "-v", "h", "borg"], None, Some("h"), None, &["borg"]),
        (&["-l", "alice", "h", "borg"], Some("alice"), Some("h"), None, &["borg"]),
        (&["-4Cvp2200", "h"], None, Some("h"), Some(2200), &[]),
        // ssh reads options after the destination too (up to the first non-option); the first -p wins.
        (&["-Cp", "2201", "h", "-p", "9"], None, Some("h"), Some(2201), &[]),
        (&["h", "-p", "9", "-l", "u", "borg", "-p", "1"], Some("u"), Some("h"), Some(9), &["borg", "-p", "1"]),
        (&["--", "h", "-p", "9"], None, Some("h"), None, &["-p", "9"]),
        (&["h", "--", "-p", "9"], None, Some("h"), None, &["-p", "9"]),
        // The first -l beats user@; the first -p beats a later one and the URI's port.
        (&["-l", "alice", "bob@h", "borg"], Some("alice"), Some("h"), None, &["borg"]),
        (&["-p", "2200", "-p", "junk", "ssh://bob@h:2022", "borg"], Some("bob"), Some("h"), Some(2200), &["borg"]),
        (&["-o", "Port=1", "--", "-weird-host", "borg"], None, Some("-weird-host"), None, &["borg"]),
        (&["ssh://bob@h:2022", "borg"], Some("bob"), Some("h"), Some(2022), &["borg"]),
        (&["ssh://[::1]:2022/", "borg"], None, Some("::1"), Some(2022), &["borg"]),
        (&["::1", "borg"], None, Some("::1"), None, &["borg"]),
        (&[], None, None, None, &[]),
    ];

    #[test]
    fn parses_every_argv_shape_borg_produces() {
        for (argv, user, host, port, command) in CASES {
            let rsh = RshArgs::parse(argv.iter()).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(rsh.user.as_deref(), *user, "user of {argv:?}");
            assert_eq!(rsh.host.as_deref(), *host, "host of {argv:?}");
            assert_eq!(rsh.port, *port, "port of {argv:?}");
            assert_eq!(rsh.remote_command, *command, "remote command of {argv:?}");
        }
    }

    #[test]
    fn keeps_ignored_options_for_logging() {
        let rsh = RshArgs::parse(["-oA=B", "-4", "-i", "k", "h"]).unwrap();
        assert_eq!(rsh.ignored_options, ["-o A=B", "-4", "-i k"]);
    }

    #[test]
    fn refuses_what_ssh_refuses() {
        for argv in [
            &["-p"][..],
            &["-p", "http", "h"],
            &["-p", "0", "h"],
            &["ssh://h:99999"],
            &["-o"],
            &["h", "-p"],
            &["h", "-p", "x", "borg"],
            &["@h", "borg"],
        ] {
            let err = RshArgs::parse(argv.iter()).expect_err(&format!("{argv:?} must fail"));
            assert!(matches!(err, Error::RshArgs { .. }), "{argv:?}: {err}");
        }
    }

    #[test]
    fn remote_command_is_kept_byte_exact() {
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(vec![b'-', 0xff, b' ', b';']);
        let rsh = RshArgs::parse([OsString::from("h"), "borg".into(), odd.clone()]).unwrap();
        assert_eq!(rsh.remote_command, [OsString::from("borg"), odd.clone()]);
        // Right after the destination ssh would read it as options; after `--` it is command.
        let rsh = RshArgs::parse([OsString::from("h"), "--".into(), odd.clone()]).unwrap();
        assert_eq!(rsh.remote_command, [odd]);
    }
}
