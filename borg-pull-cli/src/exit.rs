//! The one exit-code table of both binaries, and the `--help` text made from it.
//!
//! borg owns 0-127 (with `BORG_EXIT_CODES=modern`, borg 1.4 and 2 use 3-99 for errors and
//! 100-127 for warnings) and 128+N for "killed by signal N" (N up to 64, so up to 192). `pull`
//! passes borg's code through unchanged, so our own codes live in 200-254, where a caller can tell
//! "borg said 74" from "the connection was lost". 255 stays what ssh means by it: the relay, which
//! borg runs in place of ssh, exits 255 on every failure, and borg reports that as a failed
//! connection.

use std::fmt::Write as _;

/// One exit code of ours: its number and what it means (one line of `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// The process exit status.
    pub code: u8,
    /// What it means, as shown in `--help`.
    pub meaning: &'static str,
}

impl From<Code> for std::process::ExitCode {
    fn from(code: Code) -> Self {
        std::process::ExitCode::from(code.code)
    }
}

/// The first code of our block; everything below belongs to borg (or to a signal).
pub const FIRST: u8 = 200;

/// The command line is wrong (unknown option, relative --repo, no --socket, ...).
pub const USAGE: Code = Code {
    code: 200,
    meaning: "usage error (bad option or argument, relative --repo, NUL byte in an argument)",
};
/// Any failure not listed on its own: an internal or SSH protocol error.
pub const FAILURE: Code = Code {
    code: 201,
    meaning: "any other failure (an internal error; in pull also an SSH protocol error)",
};
/// Stopped by SIGINT/SIGTERM. Not 130 (128+SIGINT): `pull` passes borg's 130 through when borg on
/// the client is killed or interrupted by SIGINT, and that must stay distinguishable.
pub const INTERRUPTED: Code = Code {
    code: 202,
    meaning: "interrupted by SIGINT/SIGTERM; a second signal exits at once (not 130: borg exits \
              130 when it gets SIGINT, and pull passes that through)",
};
/// The borg program on this server cannot be found or started.
pub const BORG_UNAVAILABLE: Code = Code {
    code: 203,
    meaning: "the borg program on this server was not found or cannot run (--borg)",
};
/// The operating system refused (bind, socket passed by systemd, signal set-up).
pub const OS_ERROR: Code = Code {
    code: 204,
    meaning: "operating system error (bind, socket passed by systemd, signal set-up; in authorize and pull --ephemeral-key: \
              the authorized_keys file cannot be read or written, or is unsafe to edit)",
};
/// The listener's socket cannot be created safely.
pub const SOCKET_UNSAFE: Code = Code {
    code: 205,
    meaning: "the socket cannot be created safely (directory missing, group/other-writable or \
              owned by another user; a non-socket file in the way)",
};
/// Another listener serves the socket; retry once it has stopped.
pub const SOCKET_IN_USE: Code = Code {
    code: 206,
    meaning: "the socket is in use by another running listener",
};
/// The client's host key is unknown, changed or revoked.
pub const HOST_KEY: Code = Code {
    code: 210,
    meaning: "host key verification failed (unknown host, changed or revoked key)",
};
/// The identity cannot be used or the client refused it.
pub const AUTH: Code = Code {
    code: 211,
    meaning: "identity unusable or authentication refused",
};
/// The repository passphrase could not be obtained on this server.
pub const PASSPHRASE: Code = Code {
    code: 212,
    meaning: "the repository passphrase could not be obtained",
};
/// No SSH connection to the client or a jump host (DNS, refused, timeout).
pub const CONNECT: Code = Code {
    code: 213,
    meaning: "cannot connect to the client or a jump host (DNS, refused, timeout; a jump host \
              that cannot reach the next host)",
};
/// The client cannot run the pull: forward refused, relay or borg missing, socket dir failed.
pub const CLIENT_SETUP: Code = Code {
    code: 214,
    meaning: "the client's sshd refused the UNIX socket or TCP forward or agent forwarding, the \
              relay, ssh or borg is missing on the client, its borg's major version differs from \
              the server's, --remote-dir is missing or not searchable, or setting up the private \
              directory there failed (restore-tar: tar cannot run on the client, or the directory \
              is missing or not writable), or the client's sshd does not offer the cipher forced with --cipher",
};
/// The connection to the client was lost (keepalives unanswered).
pub const CONNECTION_LOST: Code = Code {
    code: 215,
    meaning: "connection to the client lost (keepalives unanswered)",
};
/// The client broke a bound the server sets: it did not answer a request in time, sent an
/// oversized packet, flooded us with channel opens or printed endless helper output.
pub const CLIENT_MISBEHAVED: Code = Code {
    code: 216,
    meaning: "the client did not answer in time or broke a limit (oversized packets, a flood of \
              channel opens, endless output); the connection was ended",
};
/// borg on the client ran past --max-runtime; it was stopped and everything cleaned up.
pub const MAX_RUNTIME: Code = Code {
    code: 217,
    meaning: "borg on the client (restore-tar: the stream into tar) ran longer than --max-runtime; \
              it was stopped and cleaned up",
};
/// Every failure of `borg-pull-relay`, as ssh(1) uses for connection errors.
pub const RELAY_FAILURE: Code = Code {
    code: 255,
    meaning: "any failure (as ssh: borg reports it as a failed connection)",
};

/// `authorize --install`: the key already has an authorized_keys entry with other options.
pub const AUTHORIZED_KEYS_CONFLICT: Code = Code {
    code: 207,
    meaning: "authorized_keys already has an entry for the key with other options (it is never \
              changed; the message names its line)",
};

/// `status`: some client's newest archive is older than its `max_age`, or it has none.
pub const STALE: Code = Code {
    code: 208,
    meaning: "a client is stale: its repository has no archive, or its newest archive is older \
              than its max_age",
};
/// `status`: some client's repository could not be read on this server.
pub const REPO_UNREADABLE: Code = Code {
    code: 209,
    meaning: "a client's repository could not be read on this server (missing, locked, wrong \
              passphrase, borg failed); the table or JSON says which and why",
};

/// The client's sshd closed the connection before key exchange: OpenSSH >= 9.8's
/// PerSourcePenalties (after failed logins from this server) or MaxStartups. Not [`CONNECT`]: the
/// fix is waiting or the client's `PerSourcePenaltyExemptList`, not the network.
pub const REFUSED_BEFORE_KEX: Code = Code {
    code: 220,
    meaning: "the client's sshd closed the connection before key exchange (OpenSSH >= 9.8 \
              PerSourcePenalties after failed logins, or MaxStartups); wait for the penalty to expire \
              or add this server to the client's PerSourcePenaltyExemptList",
};

/// `pull --via agent/tcp`: the server's sshd logged the agent key in but ran something other than
/// borg serve for it.
pub const NOT_BORG_SERVE: Code = Code {
    code: 219,
    meaning: "--via agent/tcp: the server's sshd ran something other than borg serve for the agent \
              key (its forced command in authorized_keys)",
};

/// `pull --via sftp`: the client's tree cannot be mounted on this server.
pub const SFTP_MOUNT: Code = Code {
    code: 221,
    meaning: "--via sftp: the client's tree cannot be mounted here (no /dev/fuse as root, no \
              fusermount3 from fuse3 otherwise, an unusable mount point or a stale mount that \
              will not go)",
};

/// `restore-tar --via sftp`: entries with unsafe names were refused, the rest restored.
pub const RESTORE_UNSAFE_NAMES: Code = Code {
    code: 222,
    meaning: "restore-tar --via sftp: entries whose names could land outside DIR (absolute, `..`) \
              were refused, each named in the log; the rest was restored",
};

/// `restore-tar --via sftp`: the client refused some writes, the rest restored.
pub const RESTORE_WRITES_REFUSED: Code = Code {
    code: 223,
    meaning: "restore-tar --via sftp: the client refused to write some entries (each named in \
              the log with its SFTP status: permissions, a full disk); the rest was restored",
};

/// Every code of ours, in both binaries.
pub const ALL: &[Code] = &[
    USAGE,
    FAILURE,
    INTERRUPTED,
    BORG_UNAVAILABLE,
    OS_ERROR,
    SOCKET_UNSAFE,
    SOCKET_IN_USE,
    HOST_KEY,
    AUTH,
    PASSPHRASE,
    CONNECT,
    CLIENT_SETUP,
    CONNECTION_LOST,
    CLIENT_MISBEHAVED,
    MAX_RUNTIME,
    RELAY_FAILURE,
    AUTHORIZED_KEYS_CONFLICT,
    STALE,
    REPO_UNREADABLE,
    REFUSED_BEFORE_KEX,
    NOT_BORG_SERVE,
    SFTP_MOUNT,
    RESTORE_UNSAFE_NAMES,
    RESTORE_WRITES_REFUSED,
];

/// The codes `borg-pull-server pull` can exit with (besides borg's own).
pub const PULL: &[Code] = &[
    USAGE,
    FAILURE,
    INTERRUPTED,
    BORG_UNAVAILABLE,
    OS_ERROR,
    HOST_KEY,
    AUTH,
    PASSPHRASE,
    CONNECT,
    CLIENT_SETUP,
    CONNECTION_LOST,
    CLIENT_MISBEHAVED,
    MAX_RUNTIME,
    REFUSED_BEFORE_KEX,
    NOT_BORG_SERVE,
    SFTP_MOUNT,
];

/// The codes `borg-pull-server restore-tar` can exit with (besides borg's and tar's own).
pub const RESTORE: &[Code] = &[
    USAGE,
    FAILURE,
    INTERRUPTED,
    BORG_UNAVAILABLE,
    OS_ERROR,
    HOST_KEY,
    AUTH,
    PASSPHRASE,
    CONNECT,
    CLIENT_SETUP,
    CONNECTION_LOST,
    CLIENT_MISBEHAVED,
    MAX_RUNTIME,
    REFUSED_BEFORE_KEX,
    RESTORE_UNSAFE_NAMES,
    RESTORE_WRITES_REFUSED,
];

/// The codes `borg-pull-server listen` can exit with (0 also after a clean stop on a signal).
pub const LISTEN: &[Code] = &[
    USAGE,
    FAILURE,
    BORG_UNAVAILABLE,
    OS_ERROR,
    SOCKET_UNSAFE,
    SOCKET_IN_USE,
];

/// The codes `borg-pull-server authorize` can exit with.
pub const AUTHORIZE: &[Code] = &[USAGE, FAILURE, OS_ERROR, AUTHORIZED_KEYS_CONFLICT];

/// The codes `borg-pull-server status` can exit with: an unreadable repository wins over a
/// stale client (both are alarms; the unreadable one needs a person).
pub const STATUS: &[Code] = &[USAGE, FAILURE, OS_ERROR, STALE, REPO_UNREADABLE];

/// The codes of `borg-pull-relay`.
pub const RELAY: &[Code] = &[RELAY_FAILURE];

/// `--help` lines for `codes`: "  NNN  meaning", wrapped at 100 columns.
pub fn lines(codes: &[Code]) -> String {
    let mut out = String::new();
    for code in codes {
        let mut line = format!("  {:>3} ", code.code);
        for word in code.meaning.split_whitespace() {
            if line.len() + 1 + word.len() > 100 {
                let _ = writeln!(out, "{line}");
                line = " ".repeat(6);
            }
            line.push(' ');
            line.push_str(word);
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

/// The range sentence every `--help` shows.
pub fn range_note() -> String {
    format!(
        "borg-pull's own codes are {FIRST}-254 (255: the relay, as ssh), outside what borg uses\n\
         (0-127, and 128+N for signal N), so they never collide with borg's, modern exit codes\n\
         (BORG_EXIT_CODES=modern) included."
    )
}

/// The code of a kind of tunnel error under `pull`, `restore-tar`, `run` and `check-config` (see
/// [`PULL`]). Exhaustive, as every mapping here: a new kind does not compile until it has a code.
pub fn for_pull_kind(kind: borg_pull_tunnel::error::ErrorKind) -> Code {
    use borg_pull_tunnel::error::ErrorKind as K;
    match kind {
        K::Usage => USAGE,
        K::Internal | K::Protocol | K::Server => FAILURE,
        K::Interrupted => INTERRUPTED,
        K::BorgUnavailable => BORG_UNAVAILABLE,
        // --ephemeral-key: the server user's authorized_keys cannot be edited safely.
        K::Os | K::AuthorizedKeysConflict => OS_ERROR,
        K::HostKey => HOST_KEY,
        K::Auth => AUTH,
        K::Passphrase => PASSPHRASE,
        K::Connect => CONNECT,
        // Like a refused forward, a cipher the client's sshd lacks: a person fixes its set-up (or
        // our --cipher); retrying does not.
        K::ClientSetup => CLIENT_SETUP,
        K::ConnectionLost => CONNECTION_LOST,
        K::ClientMisbehaved => CLIENT_MISBEHAVED,
        K::MaxRuntime => MAX_RUNTIME,
        K::RefusedBeforeKex => REFUSED_BEFORE_KEX,
        K::NotBorgServe => NOT_BORG_SERVE,
        K::Mount => SFTP_MOUNT,
    }
}

/// The exit status of a `restore-tar --via sftp` that ran: 0 restored, 1 a warning (borg's, or
/// entries SFTP cannot create skipped), borg's own code when it failed, else ours.
pub fn for_sftp_restore(verdict: borg_pull_tunnel::jobs::sftp_restore::Verdict) -> u8 {
    use borg_pull_tunnel::jobs::sftp_restore::Verdict as V;
    match verdict {
        V::Restored => 0,
        V::Warning => 1,
        V::BorgFailed(rc) => u8::try_from(rc).unwrap_or(FAILURE.code),
        V::UnsafeNames => RESTORE_UNSAFE_NAMES.code,
        V::WritesRefused => RESTORE_WRITES_REFUSED.code,
    }
}

/// Our own failures of `pull` and its kin map to codes 200 and up (see [`PULL`]); a jump host's
/// failure has its cause's code.
pub fn for_pull_error(e: &borg_pull_tunnel::Error) -> Code {
    for_pull_kind(e.kind())
}

/// The code of a kind of core error under `listen` (see [`LISTEN`]).
pub fn for_listen_kind(kind: borg_pull_core::error::ErrorKind) -> Code {
    use borg_pull_core::error::ErrorKind as K;
    match kind {
        K::Usage => USAGE,
        K::BorgUnavailable => BORG_UNAVAILABLE,
        K::SocketUnsafe => SOCKET_UNSAFE,
        K::SocketInUse => SOCKET_IN_USE,
        K::Os => OS_ERROR,
        K::Relay | K::BorgFailed => FAILURE,
    }
}

/// `listen`'s code for an error of borg-pull-core.
pub fn for_listen_error(e: &borg_pull_core::Error) -> Code {
    for_listen_kind(e.kind())
}

/// The code of a kind of tunnel error under `authorize` (see [`AUTHORIZE`]): an existing entry
/// with other options has its own code there, and nothing connects.
pub fn for_authorize_kind(kind: borg_pull_tunnel::error::ErrorKind) -> Code {
    use borg_pull_tunnel::error::ErrorKind as K;
    match kind {
        K::Usage => USAGE,
        K::Os => OS_ERROR,
        K::AuthorizedKeysConflict => AUTHORIZED_KEYS_CONFLICT,
        K::Internal
        | K::Protocol
        | K::Server
        | K::Interrupted
        | K::BorgUnavailable
        | K::HostKey
        | K::Auth
        | K::Passphrase
        | K::Connect
        | K::ClientSetup
        | K::ConnectionLost
        | K::ClientMisbehaved
        | K::MaxRuntime
        | K::RefusedBeforeKex
        | K::NotBorgServe
        | K::Mount => FAILURE,
    }
}

/// `authorize`'s code for an error of borg-pull-tunnel.
pub fn for_authorize_error(e: &borg_pull_tunnel::Error) -> Code {
    for_authorize_kind(e.kind())
}

/// `check-config`'s code for a client's repository that will not open for `run`.
pub fn for_repo_problem(e: &borg_pull_fleet::check::RepoProblem) -> Code {
    use borg_pull_fleet::check::RepoProblemKind as K;
    match e.kind() {
        K::Passphrase => PASSPHRASE,
        K::BorgUnavailable => BORG_UNAVAILABLE,
        K::Unreadable => REPO_UNREADABLE,
    }
}

/// The code of a fleet config that cannot be used (`run`, `check-config`, `status`).
pub fn for_config_error(e: &borg_pull_fleet::config::ConfigError) -> Code {
    use borg_pull_fleet::config::ConfigErrorKind as K;
    match e.kind() {
        K::Unreadable | K::Invalid => USAGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers in a `--help` text: the first word of each indented line that is a number.
    fn codes_in(help: &str) -> Vec<u8> {
        help.lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    #[test]
    fn help_lists_exactly_the_table() {
        for table in [PULL, RESTORE, LISTEN, RELAY, AUTHORIZE, STATUS, ALL] {
            let listed = codes_in(&lines(table));
            let expected: Vec<u8> = table.iter().map(|c| c.code).collect();
            assert_eq!(listed, expected, "{}", lines(table));
        }
    }

    #[test]
    fn every_subcommand_code_is_in_the_table() {
        for code in PULL
            .iter()
            .chain(RESTORE)
            .chain(LISTEN)
            .chain(RELAY)
            .chain(AUTHORIZE)
            .chain(STATUS)
        {
            assert!(ALL.contains(code), "{code:?} missing from ALL");
        }
    }

    #[test]
    fn codes_are_unique_and_outside_borgs_range() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ALL {
            assert!(seen.insert(code.code), "{} used twice", code.code);
            // borg: 0-127, and 128+N for signals up to 64 (192).
            assert!(code.code >= FIRST, "{code:?} collides with borg's codes");
        }
    }

    #[test]
    fn a_close_before_key_exchange_has_its_own_code_even_behind_a_jump_host() {
        use borg_pull_tunnel::error::KexStage;
        use borg_pull_tunnel::Error as E;
        let closed = E::ClosedBeforeKex {
            peer: borg_pull_tunnel::error::Peer::new("c", 22),
            stage: KexStage::NoBanner,
        };
        assert_eq!(for_pull_error(&closed), REFUSED_BEFORE_KEX);
        let behind = E::JumpHost {
            peer: borg_pull_tunnel::error::Peer::new("j", 22),
            source: Box::new(closed),
        };
        assert_eq!(for_pull_error(&behind), REFUSED_BEFORE_KEX);
        assert!(PULL.contains(&REFUSED_BEFORE_KEX) && RESTORE.contains(&REFUSED_BEFORE_KEX));
        let cut_off = E::AuthCutOff {
            user: "u".into(),
            peer: borg_pull_tunnel::error::Peer::new("c", 22),
            offered: 3,
            said: String::new(),
        };
        assert_eq!(for_pull_error(&cut_off), AUTH);
    }

    /// The numbers are an interface (scripts test them): changing one is a breaking change.
    #[test]
    fn codes_are_stable() {
        let pinned: Vec<(u8, &str)> = ALL.iter().map(|c| (c.code, &c.meaning[..8])).collect();
        assert_eq!(
            pinned,
            [
                (200, "usage er"),
                (201, "any othe"),
                (202, "interrup"),
                (203, "the borg"),
                (204, "operatin"),
                (205, "the sock"),
                (206, "the sock"),
                (210, "host key"),
                (211, "identity"),
                (212, "the repo"),
                (213, "cannot c"),
                (214, "the clie"),
                (215, "connecti"),
                (216, "the clie"),
                (217, "borg on "),
                (255, "any fail"),
                (207, "authoriz"),
                (208, "a client"),
                (209, "a client"),
                (220, "the clie"),
                (219, "--via ag"),
                (221, "--via sf"),
                (222, "restore-"),
                (223, "restore-"),
            ]
        );
    }

    use borg_pull_core::error::ErrorKind as CoreKind;
    use borg_pull_tunnel::error::ErrorKind as K;

    /// One named test per code: the kinds that exit with it under `pull` (and `restore-tar`,
    /// `run`, `check-config`), and that the code is in `pull`'s table.
    macro_rules! pull_codes {
        ($($name:ident: [$($kind:ident),+] => $code:ident,)*) => {$(
            #[test]
            fn $name() {
                for kind in [$(K::$kind),+] {
                    assert_eq!(for_pull_kind(kind), $code, "{kind:?}");
                }
                assert!(PULL.contains(&$code), "{:?} not in pull's table", $code);
            }
        )*};
    }

    pull_codes! {
        pull_usage_errors_exit_200: [Usage] => USAGE,
        pull_internal_protocol_and_server_failures_exit_201: [Internal, Protocol, Server] => FAILURE,
        pull_interrupted_exits_202: [Interrupted] => INTERRUPTED,
        pull_borg_unavailable_exits_203: [BorgUnavailable] => BORG_UNAVAILABLE,
        pull_os_errors_and_authorized_keys_conflicts_exit_204: [Os, AuthorizedKeysConflict] => OS_ERROR,
        pull_host_key_failures_exit_210: [HostKey] => HOST_KEY,
        pull_auth_failures_exit_211: [Auth] => AUTH,
        pull_passphrase_failures_exit_212: [Passphrase] => PASSPHRASE,
        pull_connect_failures_exit_213: [Connect] => CONNECT,
        pull_client_setup_failures_exit_214: [ClientSetup] => CLIENT_SETUP,
        pull_a_lost_connection_exits_215: [ConnectionLost] => CONNECTION_LOST,
        pull_a_misbehaving_client_exits_216: [ClientMisbehaved] => CLIENT_MISBEHAVED,
        pull_max_runtime_exits_217: [MaxRuntime] => MAX_RUNTIME,
        pull_not_borg_serve_exits_219: [NotBorgServe] => NOT_BORG_SERVE,
        pull_a_close_before_key_exchange_exits_220: [RefusedBeforeKex] => REFUSED_BEFORE_KEX,
        pull_an_sftp_tree_that_cannot_be_mounted_exits_221: [Mount] => SFTP_MOUNT,
    }

    #[test]
    fn sftp_restores_exit_with_borgs_code_or_their_own() {
        use borg_pull_tunnel::jobs::sftp_restore::Verdict as V;
        assert_eq!(for_sftp_restore(V::Restored), 0);
        assert_eq!(for_sftp_restore(V::Warning), 1);
        assert_eq!(for_sftp_restore(V::BorgFailed(2)), 2);
        assert_eq!(for_sftp_restore(V::BorgFailed(143)), 143);
        assert_eq!(for_sftp_restore(V::UnsafeNames), 222);
        assert_eq!(for_sftp_restore(V::WritesRefused), 223);
        assert!(RESTORE.contains(&RESTORE_UNSAFE_NAMES) && RESTORE.contains(&RESTORE_WRITES_REFUSED));
    }

    #[test]
    fn sftp_restore_failures_reuse_restore_tars_codes() {
        use borg_pull_tunnel::jobs::sftp_restore::SftpError as S;
        use borg_pull_tunnel::Error as E;
        let peer = || borg_pull_tunnel::error::Peer::new("c", 22);
        let sftp = |source| E::SftpRestore { peer: peer(), source };
        assert_eq!(
            for_pull_error(&E::SftpRestoreSubsystemRefused { peer: peer() }),
            CLIENT_SETUP
        );
        assert_eq!(
            for_pull_error(&sftp(S::Closed { reason: "EOF".into() })),
            CONNECTION_LOST
        );
        assert_eq!(for_pull_error(&sftp(S::Shutdown)), FAILURE);
        assert_eq!(
            for_pull_error(&E::SftpRestoreMaxRuntime {
                peer: peer(),
                secs: 1
            }),
            MAX_RUNTIME
        );
        assert_eq!(
            for_pull_error(&E::SftpRestoreTooMany {
                what: "symlinks",
                limit: 1
            }),
            USAGE
        );
        assert_eq!(for_pull_error(&E::RestoreStream { message: "x".into() }), FAILURE);
    }

    #[test]
    fn listen_maps_core_kinds_to_its_table() {
        for (kind, code) in [
            (CoreKind::Usage, USAGE),
            (CoreKind::BorgUnavailable, BORG_UNAVAILABLE),
            (CoreKind::SocketUnsafe, SOCKET_UNSAFE),
            (CoreKind::SocketInUse, SOCKET_IN_USE),
            (CoreKind::Os, OS_ERROR),
            (CoreKind::Relay, FAILURE),
            (CoreKind::BorgFailed, FAILURE),
        ] {
            assert_eq!(for_listen_kind(kind), code, "{kind:?}");
            assert!(LISTEN.contains(&code), "{code:?}");
        }
    }

    #[test]
    fn authorize_gives_a_conflict_its_own_code_and_the_rest_its_table() {
        assert_eq!(
            for_authorize_kind(K::AuthorizedKeysConflict),
            AUTHORIZED_KEYS_CONFLICT
        );
        assert_eq!(for_pull_kind(K::AuthorizedKeysConflict), OS_ERROR);
        assert_eq!(for_authorize_kind(K::Usage), USAGE);
        assert_eq!(for_authorize_kind(K::Os), OS_ERROR);
        for kind in [K::Internal, K::HostKey, K::Connect, K::ClientSetup, K::Passphrase] {
            assert_eq!(for_authorize_kind(kind), FAILURE, "{kind:?}");
        }
    }

    #[test]
    fn check_config_maps_repository_problems_by_kind() {
        use borg_pull_fleet::check::RepoProblem as P;
        let repo = || std::path::PathBuf::from("/srv/borg/web1");
        let wrong = P::WrongPassphrase {
            repo: repo(),
            from: "passphrase_file /p".into(),
            said: String::new(),
        };
        let no_borg = P::BorgUnavailable {
            borg: "borg".into(),
            repo: repo(),
            said: String::new(),
        };
        assert_eq!(for_repo_problem(&wrong), PASSPHRASE);
        assert_eq!(for_repo_problem(&no_borg), BORG_UNAVAILABLE);
        assert_eq!(for_repo_problem(&P::Missing { repo: repo() }), REPO_UNREADABLE);
    }

    /// A task that ended abnormally was an "invalid option" (exit 200) before the kinds; it is an
    /// internal failure.
    #[test]
    fn a_failed_background_task_exits_201_not_as_a_usage_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let source = rt.block_on(async {
            let task = tokio::spawn(std::future::pending::<()>());
            task.abort();
            task.await.expect_err("aborted")
        });
        let e = borg_pull_tunnel::Error::BackgroundTask {
            task: "reading the relay to install",
            source,
        };
        assert_eq!(for_pull_error(&e), FAILURE);
    }
}
