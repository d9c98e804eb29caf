//! `borg-pull.toml(5)`: the fleet config's page, from the table of keys below. The parser
//! (`borg_pull_fleet::config`) is the truth; `tests/docs.rs` fails when it accepts a key this table
//! does not document, when a documented key is not accepted, and when [`EXAMPLE`] does not parse.
//! Defaults come from the parser's own constants where it has them.

use std::time::Duration;

use borg_pull_fleet::config::{DEFAULT_JOBS, DEFAULT_MAX_AGE, DEFAULT_MAX_RUNTIME, DEFAULT_STATE_DIR};
use borg_pull_fleet::schedule::{DEFAULT_EVERY, DEFAULT_RETRY};

use super::escape;

/// One key of the config.
struct Key {
    name: &'static str,
    /// The TOML type (and the values it may take).
    ty: &'static str,
    /// The value when unset; `None`: the key is required.
    default: Option<String>,
    meaning: &'static str,
}

fn key(name: &'static str, ty: &'static str, default: &str, meaning: &'static str) -> Key {
    Key {
        name,
        ty,
        default: Some(default.to_owned()),
        meaning,
    }
}

fn required(name: &'static str, ty: &'static str, meaning: &'static str) -> Key {
    Key {
        name,
        ty,
        default: None,
        meaning,
    }
}

/// `36h` for 36 hours: durations as the config writes them.
fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 86400 == 0 && s >= 86400 * 2 => format!("\"{}d\"", s / 86400),
        s if s % 3600 == 0 => format!("\"{}h\"", s / 3600),
        s if s % 60 == 0 => format!("\"{}m\"", s / 60),
        s => format!("\"{s}s\""),
    }
}

/// The keys of `[server]`.
fn server_keys() -> Vec<Key> {
    vec![
        key(
            "state_dir",
            "path",
            &format!("\"{DEFAULT_STATE_DIR}\""),
            "Where the last run's result of each client is kept (one file per client name): \
             status shows it, and check_every_runs and check_every_days count from it.",
        ),
        key(
            "prometheus",
            "path",
            "none",
            "A node_exporter textfile that run and status write (atomically) with each client's \
             results and ages; unset: no metrics.",
        ),
        key(
            "jobs",
            "integer, at least 1",
            &DEFAULT_JOBS.to_string(),
            "How many clients run pulls at once; run \\-\\-jobs N overrides it.",
        ),
        key(
            "borg",
            "path",
            "\"borg\" (looked up on PATH)",
            "The borg program on this server: borg serve for the clients, and prune, compact, \
             check and list of the repositories.",
        ),
        key(
            "ssh_config",
            "path",
            "~/.ssh/config of the user running borg\\-pull\\-server, if it exists",
            "The ssh_config(5) file whose Host entries fill, for a client whose host is an \
             alias, the HostName, User, Port, IdentityFile and ProxyJump that its entry and \
             [defaults] leave unset. When set, the file must exist.",
        ),
        key(
            "html",
            "path",
            "none",
            "A self\\-contained HTML status page (no external assets, no script) that run writes \
             at its end, atomically and mode 0644: a row per client coloured by its state (ok, \
             due, failing, overdue) with last success, next due and the last run, and charts of \
             each client's history. status \\-\\-html writes it too. It holds no secret; unset: \
             no page.",
        ),
    ]
}

/// The keys of a `[[client]]` entry, and of `[defaults]` (all but `name`).
fn client_keys() -> Vec<Key> {
    vec![
        required(
            "name",
            "string",
            "The client's name: letters, digits, '.', '_' and '\\-', unique in the file. It \
             prefixes the client's output lines and names its state file and metrics label. \
             Only in [[client]], never in [defaults].",
        ),
        required(
            "host",
            "string",
            "The client's host name, address or ~/.ssh/config alias (see ssh_config).",
        ),
        key(
            "port",
            "integer",
            "the ssh config's Port, else 22",
            "The client's sshd port.",
        ),
        key(
            "user",
            "string",
            "the ssh config's User, else the user running borg\\-pull\\-server",
            "The login user on the client. It must be able to read what borg backs up.",
        ),
        key(
            "identity",
            "path",
            "the ssh config's first IdentityFile, else OpenSSH's default keys and the agent",
            "The private key to log in to the client with.",
        ),
        key(
            "known_hosts",
            "path",
            "~/.ssh/known_hosts",
            "The known_hosts file the client's host key is checked against (as ssh does; a \
             changed or revoked key is refused with exit code 210).",
        ),
        key(
            "accept_new_host_key",
            "boolean",
            "false",
            "Record the host key of a client not yet in known_hosts, as ssh's \
             StrictHostKeyChecking=accept\\-new; a changed key is still refused.",
        ),
        key(
            "relay",
            "string",
            "\"borg\\-pull\\-relay\" (on the client's PATH)",
            "The borg\\-pull\\-relay program on the client (via = \"socket\").",
        ),
        key(
            "install_relay",
            "boolean",
            "false",
            "Copy this server's borg\\-pull\\-relay (the one next to borg\\-pull\\-server) into \
             the login user's cache on the client when it has none of this version, and use it \
             instead of relay (as pull \\-\\-install\\-relay).",
        ),
        key(
            "remote_borg",
            "string",
            "\"borg\" (on the client's PATH)",
            "The borg program on the client.",
        ),
        required(
            "repo",
            "path",
            "The client's repository on this server: an absolute path, one per client. Create \
             it with borg init (or borg repo\\-create) before the first run.",
        ),
        key(
            "via",
            "string: \"socket\", \"agent\", \"tcp\" or \"sftp\"",
            "\"socket\"",
            "How borg on the client reaches this server: \"socket\" forwards a UNIX socket to \
             the relay; \"agent\" and \"tcp\" let the client's ssh log in to this server's sshd \
             with a forwarded agent key (\"tcp\" through a forwarded TCP port), for clients whose \
             sshd forbids UNIX socket forwarding; \"sftp\" needs no borg on the client: its tree \
             is mounted here read\\-only over SFTP and this server's borg runs create in it. See \
             borg\\-pull\\-server\\-pull(1), \\-\\-via.",
        ),
        key(
            "server_ssh",
            "string: USER@HOST[:PORT]",
            "none (required with via = \"agent\" or \"tcp\")",
            "This server's sshd as the client's ssh reaches it (via = \"agent\" or \"tcp\").",
        ),
        key(
            "agent_key",
            "path",
            "none",
            "The key offered to the client through the forwarded agent (via = \"agent\" or \
             \"tcp\"); this server's authorized_keys must force borg serve for it (see \
             borg\\-pull\\-server\\-authorize(1)). Set agent_key or ephemeral_key, not both.",
        ),
        key(
            "ephemeral_key",
            "boolean",
            "false",
            "Use a fresh key for each pull instead of agent_key, added to authorized_keys for \
             the pull only (via = \"agent\" or \"tcp\").",
        ),
        key(
            "authorized_keys",
            "path",
            "~/.ssh/authorized_keys of the user running borg\\-pull\\-server",
            "The server user's authorized_keys that ephemeral_key edits.",
        ),
        key(
            "server_host_key",
            "path",
            "\"/etc/ssh/ssh_host_ed25519_key.pub\"",
            "This server's public host key, which the client's ssh is told to expect \
             (via = \"agent\" or \"tcp\").",
        ),
        key(
            "jump",
            "array of strings: [USER@]HOST[:PORT]",
            "the ssh config's ProxyJump, else none",
            "Jump hosts to reach the client through, first hop first (as ssh \\-J).",
        ),
        key(
            "cipher",
            "string: \"auto\", \"chacha20\\-poly1305\", \"aes128\\-gcm\" or \"aes256\\-gcm\"",
            "\"auto\"",
            "The SSH cipher, as pull \\-\\-cipher: \"auto\" offers aes128\\-gcm first on a CPU with \
             hardware AES (far cheaper there than chacha20\\-poly1305 for both ends) and \
             chacha20\\-poly1305 first elsewhere; a name offers only that cipher, and a client \
             whose sshd does not offer it fails (exit code 214).",
        ),
        key(
            "env",
            "table of strings",
            "none",
            "Extra environment variables for borg on the client, e.g. { BORG_FILES_CACHE_TTL = \
             \"40\" }. The tables of [defaults] and of the client are merged, the client's \
             value winning. BORG_REPO, BORG_RSH, BORGSTORE_RSH and BORG_PASSPHRASE are set by \
             borg\\-pull and refused.",
        ),
        required(
            "args",
            "array of strings, not empty",
            "borg's arguments on the client, e.g. [\"create\", \"\\-\\-stats\", \
             \"::{hostname}\\-{now}\", \"/etc\"]; the repository is given to borg as BORG_REPO.",
        ),
        key(
            "passphrase_file",
            "path",
            "none",
            "A file on this server (mode 0600 or stricter) whose first line is the repository \
             passphrase; also used by retention and status. Set passphrase_file or passcommand, \
             not both; a client's own choice replaces the one in [defaults]. Unset (and no \
             passcommand): the repository is unencrypted, or BORG_PASSPHRASE or \
             BORG_PASSCOMMAND of the borg\\-pull\\-server process is used. The passphrase itself \
             never goes in the config.",
        ),
        key(
            "passcommand",
            "string",
            "none",
            "A command run on this server by sh \\-c, as BORG_PASSCOMMAND, whose output is the \
             repository passphrase.",
        ),
        key(
            "max_runtime",
            "duration",
            &duration(DEFAULT_MAX_RUNTIME),
            "How long borg on the client may run; past it, it is stopped and cleaned up (exit \
             code 217), as pull \\-\\-max\\-runtime.",
        ),
        key(
            "storage_quota",
            "string, e.g. \"500G\"",
            "none",
            "The most the repository may hold (borg serve \\-\\-storage\\-quota; via = \"socket\" \
             only).",
        ),
        key(
            "prune",
            "inline table, see PRUNE KEYS",
            "none (no prune)",
            "borg prune on this server after a successful backup, e.g. { keep_daily = 7, \
             keep_weekly = 4 }.",
        ),
        key(
            "compact",
            "boolean",
            "false",
            "borg compact on this server after a successful prune.",
        ),
        key(
            "check_every_runs",
            "integer",
            "none",
            "borg check on this server after every N successful backups.",
        ),
        key(
            "check_every_days",
            "integer",
            "none",
            "borg check on this server after a successful backup when the last check is N days \
             old or there was none.",
        ),
        key(
            "max_age",
            "duration",
            &duration(DEFAULT_MAX_AGE),
            "status flags the client as stale (exit code 208) when its newest archive is older, \
             or when it has none; the metrics carry the same age.",
        ),
        key(
            "every",
            "duration",
            &duration(DEFAULT_EVERY),
            "run \\-\\-due (the hourly borg\\-pull\\-run.timer) pulls the client when its last \
             success started this long ago (less 3%, so an hourly run a little early or late \
             keeps the hour) or it never succeeded; status shows it as due from then.",
        ),
        key(
            "window",
            "string \"HH:MM\\-HH:MM\"",
            "none (any time)",
            "run \\-\\-due starts the client's pull only in these hours of this server's local \
             time, e.g. \"22:00\\-06:00\" (an end before the start wraps midnight; 24:00 may end a \
             range). A pull that started inside may run past its end.",
        ),
        key(
            "blackout",
            "array of \"HH:MM\\-HH:MM\"",
            "[] (none)",
            "Hours of this server's local time in which run \\-\\-due starts no pull of the \
             client, e.g. [\"08:00\\-18:00\"]. Together with window they must leave some time \
             of the day.",
        ),
        key(
            "retry",
            "duration",
            &duration(DEFAULT_RETRY),
            "After a failed pull, run \\-\\-due waits this long before the next attempt, \
             doubled for each failure in a row, at most every. A client that could not be \
             reached at all (no SSH connection) has no wait: it is tried at the next run. status \
             shows it as failing; with no success within max_age, as overdue.",
        ),
    ]
}

/// The keys of `prune = { ... }`: borg prune's `--keep-*` options.
fn prune_keys() -> Vec<Key> {
    let keep = |name, what| key(name, "integer", "none", what);
    vec![
        key(
            "keep_within",
            "string, e.g. \"2d\"",
            "none",
            "Keep every archive within this interval (borg prune \\-\\-keep\\-within).",
        ),
        keep("keep_last", "Keep the last N archives (\\-\\-keep\\-last)."),
        keep("keep_hourly", "Keep N hourly archives (\\-\\-keep\\-hourly)."),
        keep("keep_daily", "Keep N daily archives (\\-\\-keep\\-daily)."),
        keep("keep_weekly", "Keep N weekly archives (\\-\\-keep\\-weekly)."),
        keep("keep_monthly", "Keep N monthly archives (\\-\\-keep\\-monthly)."),
        keep("keep_yearly", "Keep N yearly archives (\\-\\-keep\\-yearly)."),
    ]
}

/// The keys of `[notify]`.
fn notify_keys() -> Vec<Key> {
    vec![
        key(
            "webhook",
            "string, an http:// or https:// URL",
            "none",
            "A JSON POST per event of a run: {\"event\", \"clients\": [{\"event\", \"client\", \
             \"message\"}], \"summary\"}, the summary being run \\-\\-json's array (null from \
             status \\-\\-notify).",
        ),
        key(
            "ntfy",
            "string, an http:// or https:// URL",
            "none",
            "An ntfy topic's URL: one plain\\-text message per event, with Title, Priority (high \
             for failure and overdue) and Tags headers.",
        ),
        key(
            "healthchecks",
            "string, an http:// or https:// URL",
            "none",
            "A Healthchecks\\-style ping URL per client, {client} replaced by the client's name \
             (e.g. https://hc\\-ping.com/PING_KEY/{client}): URL/start when its pull starts, the \
             URL on success, URL/fail on failure, with the client's last log lines as the body \
             (at most 10,000 bytes). Sent for every run, whatever events says.",
        ),
        key(
            "mail_to",
            "array of strings, one address each",
            "none",
            "Recipients of a mail per event, handed to sendmail.",
        ),
        key(
            "sendmail",
            "string, or an array: the program and its first arguments",
            &format!("\"{}\"", borg_pull_fleet::notify::DEFAULT_SENDMAIL),
            "The MTA's sendmail interface, run without a shell with \\-t \\-oi added and the \
             message on stdin. Needs mail_to.",
        ),
        key(
            "events",
            "array of \"failure\", \"recovery\", \"overdue\", \"run\"",
            "[\"failure\", \"recovery\", \"overdue\"]",
            "What the webhook, ntfy and mail tell: a failed run of a client; its first success \
             after failures in a row or an overdue alert; no success within its max_age (once, \
             then again after a day while it lasts; from run and status \\-\\-notify); every \
             run's summary.",
        ),
        key(
            "ca_file",
            "path",
            "the system's /etc/ssl/certs/ca\\-certificates.crt",
            "PEM certificates trusted for https:// notifications.",
        ),
    ]
}

/// The page's example; `tests/docs.rs` parses it with the real parser.
pub const EXAMPLE: &str = r#"# /etc/borg-pull/fleet.toml
[server]
state_dir = "/var/lib/borg-pull"
prometheus = "/var/lib/prometheus/node-exporter/borg_pull.prom"
jobs = 4
html = "/var/www/html/borg-pull.html"

[defaults]
user = "root"
identity = "/etc/borg-pull/id_ed25519"
known_hosts = "/etc/borg-pull/known_hosts"
passphrase_file = "/etc/borg-pull/passphrase"
args = ["create", "--stats", "--exclude-caches",
        "::{hostname}-{now}", "/etc", "/home", "/root"]
max_runtime = "12h"
prune = { keep_daily = 7, keep_weekly = 4, keep_monthly = 6 }
compact = true
check_every_days = 7
max_age = "36h"
every = "24h"         # run --due (hourly): a backup a day
retry = "1h"          # after a failure: 1h, 2h, 4h ... at most every

[notify]
ntfy = "https://ntfy.example.org/borg-backups"
mail_to = ["ops@example.org"]

[[client]]
name = "web1"
host = "web1.example.org"
repo = "/srv/borg/web1"

[[client]]
name = "db1"
host = "db1"          # an alias in ~/.ssh/config
repo = "/srv/borg/db1"
args = ["create", "::{hostname}-{now}", "/var/backups/postgres"]
window = "22:00-06:00"  # starts only at night (local time)

[[client]]
name = "legacy"       # its sshd forbids UNIX socket forwarding
host = "legacy.example.org"
repo = "/srv/borg/legacy"
via = "tcp"
server_ssh = "borg@localhost"
ephemeral_key = true
authorized_keys = "/var/lib/borg-pull/.ssh/authorized_keys"
"#;

/// The section headings of the key lists (`tests/docs.rs` reads the keys under each).
pub const SERVER_SECTION: &str = "SERVER KEYS";
/// See [`SERVER_SECTION`].
pub const CLIENT_SECTION: &str = "CLIENT KEYS";
/// See [`SERVER_SECTION`].
pub const PRUNE_SECTION: &str = "PRUNE KEYS";
/// See [`SERVER_SECTION`].
pub const NOTIFY_SECTION: &str = "NOTIFY KEYS";

fn keys_roff(out: &mut String, keys: &[Key]) {
    for k in keys {
        out.push_str(&format!(".TP\n\\fB{}\\fR (", escape(k.name)));
        // `ty` and `default` may hold roff escapes already (`\-`), so they are not escaped again.
        out.push_str(k.ty);
        out.push_str(")\n");
        out.push_str(k.meaning);
        match &k.default {
            Some(d) => out.push_str(&format!("\n.br\nDefault: {d}.\n")),
            None => out.push_str("\n.br\nRequired.\n"),
        }
    }
}

/// The page, as troff.
pub fn render(version: &str) -> String {
    let mut out = String::from(super::AQ_PREAMBLE);
    out.push_str(&format!(
        ".TH BORG-PULL.TOML 5 \"\" \"borg-pull {version}\" \"borg-pull\"\n"
    ));
    out.push_str(
        ".SH NAME\nborg\\-pull.toml \\- the fleet config of borg\\-pull\\-server run, \
         check\\-config and status\n",
    );
    out.push_str(
        ".SH SYNOPSIS\n\\fB/etc/borg\\-pull/fleet.toml\\fR, or any file given as \
         \\fB\\-\\-config\\fR \\fIFILE\\fR\n",
    );
    out.push_str(
        ".SH DESCRIPTION\n\
         A TOML file naming every client that \\fBborg\\-pull\\-server run\\fR pulls: a \
         [server] table and a [defaults] table (both optional), and one [[client]] table per \
         client.\n\
         .PP\n\
         Every client key but name may also be set in [defaults]; a client's own value wins, \
         env tables are merged. Where a client's host is an alias in the ssh config \
         (ssh_config in [server]), its HostName, User, Port, IdentityFile and ProxyJump fill \
         what the client's entry and [defaults] leave unset.\n\
         .PP\n\
         A duration is a string: a number above 0 followed by s, m, h or d (a bare number: \
         seconds), e.g. \"36h\". A path may start with ~/ only where the ssh config gives it.\n\
         .PP\n\
         Unknown keys, wrong types and values that are not allowed are errors that name the \
         file, the line and the key; \\fBborg\\-pull\\-server check\\-config \\-\\-config\\fR \
         \\fIFILE\\fR finds them (exit code 200) and, with \\fB\\-\\-connect\\fR, also tries \
         every client.\n",
    );
    out.push_str(&format!(
        ".SH \"{SERVER_SECTION}\"\nThe [server] table: this server.\n"
    ));
    keys_roff(&mut out, &server_keys());
    out.push_str(&format!(
        ".SH \"{CLIENT_SECTION}\"\nThe keys of a [[client]] table, and of [defaults] (all but name).\n"
    ));
    keys_roff(&mut out, &client_keys());
    out.push_str(&format!(
        ".SH \"{PRUNE_SECTION}\"\nThe keys of prune = {{ ... }}, borg prune's \\-\\-keep\\-* \
         options. Unset, or all 0: no prune.\n"
    ));
    keys_roff(&mut out, &prune_keys());
    out.push_str(&format!(
        ".SH \"{NOTIFY_SECTION}\"\nThe [notify] table (optional): alerts by webhook, ntfy, \
         Healthchecks pings and mail. A notification never holds or fails a run: each is bounded \
         (10 s, tried twice) and a failure is one warning. URLs are shown as scheme://host/... \
         only, never with their path or query.\n"
    ));
    keys_roff(&mut out, &notify_keys());
    out.push_str(".SH EXAMPLE\n.PP\n.nf\n.RS 4\n");
    for line in EXAMPLE.lines() {
        out.push_str(&escape(line));
        out.push('\n');
    }
    out.push_str(".RE\n.fi\n");
    out.push_str(
        ".SH FILES\n\
         .TP\n/etc/borg\\-pull/fleet.toml\n\
         The config the shipped borg\\-pull\\-run.service uses.\n\
         .TP\n/usr/share/doc/borg\\-pull/examples/fleet.toml\n\
         A commented example.\n",
    );
    out.push_str(
        ".SH \"SEE ALSO\"\n\
         .ad l\n\
         .nh\n\
         \\fBborg\\-pull\\-server\\fR(1),\n\
         \\fBborg\\-pull\\-server\\-run\\fR(1),\n\
         \\fBborg\\-pull\\-server\\-check\\-config\\fR(1),\n\
         \\fBborg\\-pull\\-server\\-status\\fR(1),\n\
         \\fBborg\\-pull\\-server\\-pull\\fR(1),\n\
         \\fBssh_config\\fR(5),\n\
         \\fBborg\\fR(1)\n",
    );
    out
}
