//! Hints that name command-line flags, added by the binaries to library errors.
//!
//! Library errors carry data (a path, a program, a host) but no flag names: the same call may come
//! from a config file or another program. The binary knows which flag sets what, so it appends the
//! fix here. While the libraries' own messages still name some flags, a hint whose flag the message
//! already mentions is left out, so nothing is said twice. Hints are chosen by the error's type and
//! fields, never by its text.

use std::error::Error as StdError;

use borg_pull_core::error::Chain;

/// A fix to append to an error message; `flag` is what makes it redundant when already present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The flag or variable the hint is about (`--borg`, `BORG_PULL_SOCKET`, ...).
    pub flag: &'static str,
    /// The whole hint, e.g. "pass --borg PATH".
    pub text: String,
}

impl Hint {
    fn new(flag: &'static str, text: impl Into<String>) -> Self {
        Self {
            flag,
            text: text.into(),
        }
    }
}

/// The hint for one error of `borg_pull_core`, if a flag fixes it.
pub fn core(err: &borg_pull_core::Error) -> Option<Hint> {
    use borg_pull_core::Error as E;
    match err {
        E::UnsupportedByBorg { .. } => Some(Hint::new(
            "--storage-quota",
            "drop --storage-quota (borg 2 has none; use a filesystem quota) or use borg 1.x",
        )),
        E::CannotRefuseDeletes { .. } => Some(Hint::new(
            "--borg",
            "serve with borg 2.0.0b17 or later, or 2.0.0b9 or earlier (--borg PATH); listen --allow-delete \
             serves it anyway, letting clients delete",
        )),
        E::BorgNotFound { .. }
        | E::SpawnBorg { .. }
        | E::SpawnBorgVersion { .. }
        | E::BorgVersionUnknown { .. } => Some(Hint::new(
            "--borg",
            "pass the borg program's path with --borg PATH",
        )),
        E::SocketInUse { .. } | E::SocketPathOccupied { .. } => {
            Some(Hint::new("--socket", "or choose another --socket"))
        }
        E::StorageQuotaInvalid { .. } => Some(Hint::new(
            "--storage-quota",
            "give --storage-quota as a size of at least 10M, e.g. 500G",
        )),
        E::NotASocket { .. }
        | E::SocketMissing { .. }
        | E::SocketRefused { .. }
        | E::SocketConnect { .. } => Some(Hint::new(
            "--socket",
            "point --socket or BORG_PULL_SOCKET at the listener's socket",
        )),
        _ => None,
    }
}

/// The hint for one error of `borg_pull_tunnel`, if a flag fixes it.
pub fn tunnel(err: &borg_pull_tunnel::Error) -> Option<Hint> {
    use borg_pull_tunnel::Error as E;
    match err {
        E::UnknownHostKey(_) | E::HostKeyChanged(_) | E::HostKeyTypeUnknown(_) => Some(Hint::new(
            "--accept-new-host-key",
            "--accept-new-host-key records a key not yet in known_hosts",
        )),
        E::IdentityEncrypted { .. } => Some(Hint::new(
            "--identity-passphrase-file",
            "give the key's passphrase with --identity-passphrase-file FILE or \
             BORG_PULL_IDENTITY_PASSPHRASE",
        )),
        E::NoIdentity { agent: None, .. } => Some(Hint::new("-i FILE", "pass the private key with -i FILE")),
        E::NoIdentity { agent: Some(_), .. } => Some(Hint::new(
            "-i FILE",
            "pass the private key with -i FILE, or add it to the agent (ssh-add)",
        )),
        E::JumpHost { source, .. } => tunnel(source),
        e @ E::AuthFailed { .. } if e.agent_keys_left_out() => Some(Hint::new(
            "-i FILE",
            "pass the key the client authorises with -i FILE (then it is the only key offered)",
        )),
        E::AuthCutOff { .. } => Some(Hint::new(
            "-i FILE",
            "pass the key the client authorises with -i FILE (then it is the only key offered)",
        )),
        E::BorgVersionMismatch { .. } | E::BorgGenerationMismatch { .. } => Some(Hint::new(
            "--remote-borg",
            "point --remote-borg at the client's matching borg, or --borg at this server's",
        )),
        E::NoKnownHostsFile => Some(Hint::new("--known-hosts", "pass --known-hosts FILE")),
        E::RemoteProgramMissing { role, .. } => {
            let option = match role {
                borg_pull_tunnel::RemoteProgram::Relay => "--relay",
                borg_pull_tunnel::RemoteProgram::Borg => "--remote-borg",
                borg_pull_tunnel::RemoteProgram::Ssh => "--remote-ssh",
                borg_pull_tunnel::RemoteProgram::Tar => "--remote-tar",
            };
            Some(Hint::new(
                option,
                format!("install it there or pass its full path on the client with {option} PATH"),
            ))
        }
        E::ServerHostKey { .. } => Some(Hint::new(
            "--server-host-key",
            "pass this server's public host key (a .pub file) with --server-host-key",
        )),
        E::TcpForwardDenied { .. } => Some(Hint::new(
            "--via",
            "or use --via socket or --via agent, which need no TCP forwarding on the client",
        )),
        E::MaxRuntime { .. } | E::RestoreMaxRuntime { .. } | E::SftpMaxRuntime { .. } => Some(Hint::new(
            "--max-runtime",
            "raise --max-runtime if the run needs longer",
        )),
        E::SftpMount {
            source:
                borg_pull_tunnel::jobs::sftp_pull::MountError::MountPoint { .. }
                | borg_pull_tunnel::jobs::sftp_pull::MountError::StaleMount { .. },
            ..
        } => Some(Hint::new(
            "--sftp-dir",
            "or pass another directory for the mount points with --sftp-dir DIR",
        )),
        E::Serve(inner) => core(inner),
        E::ClientSsh { cause, .. } => {
            use borg_pull_tunnel::error::ClientSshCause as C;
            match cause {
                C::HostKey => Some(Hint::new(
                    "--server-host-key",
                    "pass the public host key of the sshd at --server-ssh with --server-host-key",
                )),
                C::Auth => Some(Hint::new(
                    "--agent-key",
                    "authorize the --agent-key's public key for --server-ssh's user (borg-pull-server \
                     authorize --install), or use --ephemeral-key",
                )),
                C::Connect => Some(Hint::new(
                    "--server-ssh",
                    "check --server-ssh USER@HOST[:PORT]: the server's sshd as the client reaches it \
                     (--via agent) or as this server does (--via tcp)",
                )),
                C::NotBorgServe => Some(Hint::new(
                    "authorize",
                    "write the key's entry with borg-pull-server authorize --repo REPO --key KEY.pub --install",
                )),
            }
        }
        E::RemoteDirUnusable { purpose, .. } => Some(Hint::new(
            "--remote-dir",
            match purpose {
                borg_pull_tunnel::error::RemoteDirUse::RunBorg => {
                    "create it on the client and let the login user search it (chmod +x), or pass \
                     another directory with --remote-dir DIR"
                }
                borg_pull_tunnel::error::RemoteDirUse::Restore => {
                    "create it on the client and let the login user write to it, or pass another \
                     directory with --remote-dir DIR"
                }
            },
        )),
        E::CipherNotOffered { choice, .. } if choice.is_forced() => Some(Hint::new(
            "--cipher auto",
            "drop --cipher (or pass --cipher auto) to let the client's sshd choose among ours",
        )),
        _ => None,
    }
}

/// The hint for one error of a client of `run` / `check-config`: the fix is a key of the fleet
/// config, not a flag.
pub fn fleet(err: &borg_pull_tunnel::Error) -> Option<Hint> {
    use borg_pull_tunnel::Error as E;
    let key = |key: &'static str, text: &str| Some(Hint::new(key, text));
    match err {
        E::UnknownHostKey(_) | E::HostKeyTypeUnknown(_) => key(
            "accept_new_host_key =",
            "accept_new_host_key = true records a key not yet in known_hosts",
        ),
        E::IdentityEncrypted { .. } => key(
            "in BORG_PULL_IDENTITY_PASSPHRASE",
            "give the key's passphrase in BORG_PULL_IDENTITY_PASSPHRASE",
        ),
        E::NoIdentity { .. } => key(
            "identity =",
            "set identity = FILE for the client or in [defaults]",
        ),
        E::JumpHost { source, .. } => fleet(source),
        e @ E::AuthFailed { .. } if e.agent_keys_left_out() => key(
            "identity =",
            "set identity = FILE (the key the client authorises; then it is the only key offered)",
        ),
        E::AuthCutOff { .. } => key(
            "identity =",
            "set identity = FILE (the key the client authorises; then it is the only key offered)",
        ),
        E::NoKnownHostsFile => key("known_hosts =", "set known_hosts = FILE"),
        E::RemoteProgramMissing { role, .. } => match role {
            borg_pull_tunnel::RemoteProgram::Relay => key(
                "relay =",
                "install it there or set relay = PATH (its full path on the client)",
            ),
            borg_pull_tunnel::RemoteProgram::Borg => key(
                "remote_borg =",
                "install it there or set remote_borg = PATH (its full path on the client)",
            ),
            borg_pull_tunnel::RemoteProgram::Ssh | borg_pull_tunnel::RemoteProgram::Tar => None,
        },
        E::ServerHostKey { .. } => key(
            "server_host_key =",
            "set server_host_key = FILE.pub (this server's public host key)",
        ),
        E::TcpForwardDenied { .. } => key(
            "via =",
            "or use via = \"socket\" or \"agent\", which need no TCP forwarding on the client",
        ),
        E::MaxRuntime { .. } | E::SftpMaxRuntime { .. } => {
            key("max_runtime =", "raise max_runtime if the run needs longer")
        }
        E::Serve(borg_pull_core::Error::BorgNotFound { .. } | borg_pull_core::Error::SpawnBorg { .. }) => {
            key("borg = PATH in [server]", "set borg = PATH in [server]")
        }
        E::Serve(borg_pull_core::Error::StorageQuotaInvalid { .. }) => key(
            "storage_quota =",
            "give storage_quota as a size of at least 10M, e.g. \"500G\"",
        ),
        E::ClientSsh { cause, .. } => {
            use borg_pull_tunnel::error::ClientSshCause as C;
            match cause {
                C::HostKey => key(
                    "server_host_key =",
                    "set server_host_key = FILE.pub (the host key of the sshd at server_ssh)",
                ),
                C::Auth => key(
                    "agent_key =",
                    "authorize agent_key's public key for server_ssh's user (borg-pull-server \
                     authorize --install), or use ephemeral_key = true",
                ),
                C::Connect => key(
                    "server_ssh =",
                    "check server_ssh = \"USER@HOST[:PORT]\": the server's sshd as the client (agent) \
                     or this server (tcp) reaches it",
                ),
                C::NotBorgServe => None,
            }
        }
        E::CipherNotOffered { choice, .. } if choice.is_forced() => key(
            "cipher = \"auto\"",
            "remove cipher (or set cipher = \"auto\") to let the client's sshd choose among ours",
        ),
        _ => None,
    }
}

/// [`render`] for a client of `run` / `check-config`: the hint names the config key ([`fleet`]).
pub fn render_fleet(err: &borg_pull_tunnel::Error) -> String {
    append(Chain(err).to_string(), fleet(err))
}

/// The hint for an error of `borg-pull-server authorize` (its flags differ from pull's).
pub fn authorize(err: &borg_pull_tunnel::Error) -> Option<Hint> {
    use borg_pull_tunnel::error::EntryPart;
    use borg_pull_tunnel::Error as E;
    match err {
        E::PublicKeyFile { .. } => Some(Hint::new(
            "--key",
            "pass the public key (the .pub file) with --key FILE.pub",
        )),
        E::ForcedCommandInvalid {
            what: EntryPart::BorgProgram,
            ..
        } => Some(Hint::new("--borg", "pass another --borg PROGRAM")),
        E::ForcedCommandInvalid {
            what: EntryPart::RepositoryPath,
            ..
        }
        | E::Serve(borg_pull_core::Error::RepoNotAbsolute { .. }) => Some(Hint::new(
            "--repo",
            "pass the repository's absolute path with --repo",
        )),
        E::ForcedCommandInvalid {
            what: EntryPart::Argument | EntryPart::KeyComment | EntryPart::Line,
            ..
        } => None,
        E::AuthorizedKeysUnsafe { .. } | E::AuthorizedKeysIo { .. } => Some(Hint::new(
            "--authorized-keys",
            "or point --authorized-keys at another file",
        )),
        _ => None,
    }
}

/// The hint for the first error in `err`'s chain that has one.
pub fn for_chain(err: &(dyn StdError + 'static)) -> Option<Hint> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        let found = if let Some(e) = e.downcast_ref::<borg_pull_tunnel::Error>() {
            tunnel(e)
        } else if let Some(e) = e.downcast_ref::<borg_pull_core::Error>() {
            core(e)
        } else {
            None
        };
        if found.is_some() {
            return found;
        }
        cause = e.source();
    }
    None
}

/// `message` with `hint` appended, unless the message already names the hint's flag.
pub fn append(message: String, hint: Option<Hint>) -> String {
    match hint {
        Some(hint) if !message.contains(hint.flag) => format!("{message}; {}", hint.text),
        _ => message,
    }
}

/// The error chain on one line (`outer: inner: innermost`; each library error says its cause once,
/// in its message or as its source), then the hint.
pub fn render(err: &(dyn StdError + 'static)) -> String {
    append(Chain(err).to_string(), for_chain(err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_hint_is_appended_once() {
        let err = borg_pull_core::Error::BorgNotFound {
            program: PathBuf::from("/nope/borg"),
        };
        let text = render(&err);
        assert_eq!(text.matches("--borg").count(), 1, "{text}");
        let bare = append("cannot find borg program \"/nope/borg\"".into(), core(&err));
        assert!(
            bare.ends_with("; pass the borg program's path with --borg PATH"),
            "{bare}"
        );
    }

    #[test]
    fn tunnel_errors_get_their_flags() {
        use borg_pull_tunnel::Error as E;
        let missing = E::RemoteProgramMissing {
            program: "borg-pull-relay".into(),
            role: borg_pull_tunnel::RemoteProgram::Relay,
            peer: borg_pull_tunnel::error::Peer::new("h", 22),
            why: "no such file".into(),
        };
        assert_eq!(tunnel(&missing).unwrap().flag, "--relay");
        let no_identity = E::NoIdentity {
            tried: vec![],
            agent: None,
        };
        assert_eq!(tunnel(&no_identity).unwrap().flag, "-i FILE");
        let enc = E::IdentityEncrypted {
            path: PathBuf::from("k"),
        };
        assert!(tunnel(&enc)
            .unwrap()
            .text
            .contains("BORG_PULL_IDENTITY_PASSPHRASE"));
        let wrapped = E::Serve(borg_pull_core::Error::BorgNotFound {
            program: PathBuf::from("b"),
        });
        assert_eq!(tunnel(&wrapped).unwrap().flag, "--borg");
        let at_jump_host = E::JumpHost {
            peer: borg_pull_tunnel::error::Peer::new("bastion", 22),
            source: Box::new(E::NoIdentity {
                tried: vec![],
                agent: Some(PathBuf::from("/run/agent.sock")),
            }),
        };
        assert!(tunnel(&at_jump_host).unwrap().text.contains("ssh-add"));
        assert_eq!(tunnel(&E::Interrupted), None);
    }

    #[test]
    fn sftp_errors_get_their_flags_by_type() {
        use borg_pull_tunnel::Error as E;
        let peer = || borg_pull_tunnel::error::Peer::new("h", 22);
        let late = E::SftpMaxRuntime {
            peer: peer(),
            secs: 1,
        };
        assert_eq!(tunnel(&late).unwrap().flag, "--max-runtime");
        assert_eq!(fleet(&late).unwrap().flag, "max_runtime =");
        let stale = E::SftpMount {
            peer: peer(),
            source: borg_pull_tunnel::jobs::sftp_pull::MountError::StaleMount {
                path: PathBuf::from("/run/borg-pull/sftp/c/root"),
                source: std::io::Error::other("busy"),
            },
        };
        assert_eq!(tunnel(&stale).unwrap().flag, "--sftp-dir");
        // What is missing is named by the error itself; no flag fixes it.
        let no_fuse = E::SftpMount {
            peer: peer(),
            source: borg_pull_tunnel::jobs::sftp_pull::MountError::NoFusermount,
        };
        assert_eq!(tunnel(&no_fuse), None);
        assert_eq!(tunnel(&E::SftpSubsystemRefused { peer: peer() }), None);
    }

    #[test]
    fn client_ssh_causes_get_their_flags_and_keys() {
        use borg_pull_tunnel::error::ClientSshCause as C;
        let err = |cause| borg_pull_tunnel::Error::ClientSsh {
            peer: borg_pull_tunnel::error::Peer::new("web1", 22),
            server: "backup@srv port 22".into(),
            cause,
            said: "Host key verification failed.".into(),
        };
        for (cause, flag, config_key) in [
            (C::HostKey, "--server-host-key", Some("server_host_key =")),
            (C::Auth, "--agent-key", Some("agent_key =")),
            (C::Connect, "--server-ssh", Some("server_ssh =")),
            (C::NotBorgServe, "authorize", None),
        ] {
            let hint = tunnel(&err(cause.clone())).unwrap();
            assert_eq!(hint.flag, flag);
            assert_eq!(fleet(&err(cause.clone())).map(|h| h.flag), config_key);
            // The not-borg-serve message already names `authorize`: the hint is left out.
            let text = render(&err(cause.clone()));
            let appended = usize::from(cause != C::NotBorgServe);
            assert_eq!(text.matches(&hint.text).count(), appended, "{text}");
        }
    }

    /// The chain is walked, each level said once: a jump host, the connection it failed at, the
    /// operating system's reason.
    #[test]
    fn render_says_each_cause_of_the_chain_once() {
        use borg_pull_tunnel::error::Peer;
        let e = borg_pull_tunnel::Error::JumpHost {
            peer: Peer::new("bastion", 2222),
            source: Box::new(borg_pull_tunnel::Error::Connect {
                peer: Peer::new("web1", 22),
                source: std::io::Error::other("connection refused"),
            }),
        };
        assert_eq!(
            render(&e),
            "jump host bastion port 2222: cannot connect to web1 port 22: connection refused"
        );
        assert_eq!(render_fleet(&e), render(&e));
    }

    /// `authorize` picks its hint by which part of the entry is unusable, not by message text.
    #[test]
    fn authorize_hints_follow_the_part_of_the_entry() {
        use borg_pull_tunnel::error::EntryPart;
        let invalid = |what| borg_pull_tunnel::Error::ForcedCommandInvalid {
            what,
            value: "x".into(),
            why: "it contains a NUL byte",
        };
        let flag = |what| authorize(&invalid(what)).map(|h| h.flag);
        assert_eq!(flag(EntryPart::BorgProgram), Some("--borg"));
        assert_eq!(flag(EntryPart::RepositoryPath), Some("--repo"));
        assert_eq!(flag(EntryPart::KeyComment), None);
        assert!(invalid(EntryPart::BorgProgram)
            .to_string()
            .starts_with("the borg program \"x\""));
    }

    #[test]
    fn relay_socket_errors_name_the_socket_option() {
        let err = borg_pull_core::Error::SocketMissing {
            path: PathBuf::from("/run/x.sock"),
        };
        let text = render(&err);
        assert!(text.contains("--socket or BORG_PULL_SOCKET"), "{text}");
    }
}

#[cfg(test)]
mod fleet_tests {
    use super::*;

    /// In a fleet, hints name config keys, never command-line flags.
    #[test]
    fn fleet_hints_name_keys() {
        let e = borg_pull_tunnel::Error::NoKnownHostsFile;
        let text = render_fleet(&e);
        assert!(text.ends_with("; set known_hosts = FILE"), "{text}");
        assert!(!text.contains("--"), "{text}");
        let e = borg_pull_tunnel::Error::Interrupted;
        assert_eq!(render_fleet(&e), e.to_string());
    }
}

#[cfg(test)]
mod key_budget_tests {
    use super::*;
    use borg_pull_tunnel::Error as E;
    use std::path::PathBuf;

    fn auth_failed(agent_keys: usize, agent_keys_held: u32) -> E {
        E::AuthFailed {
            user: "u".into(),
            peer: borg_pull_tunnel::error::Peer::new("h", 22),
            identity: PathBuf::new(),
            agent: Some(PathBuf::from("/run/a.sock")),
            agent_keys,
            agent_keys_held,
        }
    }

    /// Keys left out by the bound, or sshd ending the login: name the key (a flag for pull, a
    /// config key in a fleet); all keys offered and refused: the usual message alone.
    #[test]
    fn a_bounded_or_cut_off_login_says_how_to_name_the_key() {
        let left_out = auth_failed(5, 9);
        assert!(render(&left_out).ends_with(
            "; pass the key the client authorises with -i FILE (then it is the only key offered)"
        ));
        assert!(render_fleet(&left_out).contains("; set identity = FILE"));
        let all = auth_failed(3, 3);
        assert_eq!(render(&all), all.to_string());
        let cut_off = E::AuthCutOff {
            user: "u".into(),
            peer: borg_pull_tunnel::error::Peer::new("h", 22),
            offered: 3,
            said: "Too many authentication failures".into(),
        };
        assert!(render(&cut_off).contains("with -i FILE"));
        assert!(render_fleet(&cut_off).contains("set identity = FILE"));
    }
}
