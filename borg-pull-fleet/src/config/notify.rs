//! `[notify]` as the config holds it: the channels (webhook, ntfy, Healthchecks, mail), the
//! events and the CA bundle, validated. Data and parsing only; sending is [`crate::notify`]'s job.
//!
//! URLs may carry tokens (a Healthchecks UUID, an ntfy topic, a webhook's secret path or query):
//! they are shown only as `scheme://host/…` ([`Endpoint`]'s `Display`), in logs, errors and
//! `Debug` output alike.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// A client's run failed (our error, borg's rc 2 or more, or retention failed).
    Failure,
    /// The first success after failures in a row, or after an overdue alert.
    Recovery,
    /// No success within the client's `max_age`.
    Overdue,
    /// Every run: its summary.
    Run,
}

impl Event {
    /// `failure`, `recovery`, `overdue`, `run`: as the config and the JSON write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Failure => "failure",
            Event::Recovery => "recovery",
            Event::Overdue => "overdue",
            Event::Run => "run",
        }
    }
}

/// The events notified when `events` is unset.
pub const DEFAULT_EVENTS: [Event; 3] = [Event::Failure, Event::Recovery, Event::Overdue];

/// An `http://` or `https://` URL from the config. Its path, query and any user info may be a
/// secret: `Display` and `Debug` show `scheme://host[:port]/…` only.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    /// `scheme://host[:port]`, without user info.
    shown: String,
}

impl Endpoint {
    /// Checks `url`: `http://` or `https://`, a host, no white space or control characters. The
    /// error never repeats the URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
                (s.to_ascii_lowercase(), rest)
            }
            _ => return Err("expected an http:// or https:// URL".into()),
        };
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "the {scheme}:// URL holds white space or control characters (percent-encode them)"
            ));
        }
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host.is_empty() || host.starts_with(':') {
            return Err(format!("the {scheme}:// URL names no host"));
        }
        Ok(Self {
            url: url.to_owned(),
            shown: format!("{scheme}://{host}"),
        })
    }

    /// The whole URL, secret parts included: only for sending.
    pub(crate) fn secret_url(&self) -> &str {
        &self.url
    }

    /// `scheme://host[:port]`: safe to show.
    pub fn origin(&self) -> &str {
        &self.shown
    }

    /// The URL with `suffix` added to its path (before any query): Healthchecks' `/start` and
    /// `/fail`.
    pub(crate) fn with_path_suffix(&self, suffix: &str) -> Endpoint {
        let (base, query) = match self.url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (self.url.as_str(), None),
        };
        let mut url = base.trim_end_matches('/').to_owned();
        url.push_str(suffix);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        Endpoint {
            url,
            shown: self.shown.clone(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/…", self.shown)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

/// The `[notify]` table, validated. Nothing set: no notification at all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NotifyConfig {
    /// `webhook`: a JSON POST per event of a run.
    pub webhook: Option<Endpoint>,
    /// `ntfy`: the topic's URL.
    pub ntfy: Option<Endpoint>,
    /// `healthchecks`: the ping URL per client, `{client}` replaced by the client's name (e.g.
    /// Healthchecks' `https://hc-ping.com/PING_KEY/{client}`); without `{client}` every client
    /// pings the same check.
    pub healthchecks: Option<Endpoint>,
    /// `mail_to`: recipients of mail through [`Self::sendmail`].
    pub mail_to: Vec<String>,
    /// `sendmail`: the program and its first arguments (`-t -oi` are added; no shell).
    pub sendmail: Vec<String>,
    /// `events`: what is sent through the webhook, ntfy and mail (Healthchecks pings are sent for
    /// every run of every client).
    pub events: Vec<Event>,
    /// `ca_file`: a PEM bundle trusted for https:// instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// `sendmail` when unset: where every Debian MTA puts its sendmail interface.
pub const DEFAULT_SENDMAIL: &str = "/usr/sbin/sendmail";

impl NotifyConfig {
    /// Whether any channel is configured.
    pub fn is_empty(&self) -> bool {
        self.webhook.is_none()
            && self.ntfy.is_none()
            && self.healthchecks.is_none()
            && self.mail_to.is_empty()
    }

    /// One line naming the channels and events, URLs shown as `scheme://host/…` only
    /// (`check-config`); `None` when nothing is configured.
    pub fn describe(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut parts = Vec::new();
        for (name, e) in [
            ("webhook", &self.webhook),
            ("ntfy", &self.ntfy),
            ("healthchecks", &self.healthchecks),
        ] {
            if let Some(e) = e {
                parts.push(format!("{name} {e}"));
            }
        }
        if !self.mail_to.is_empty() {
            parts.push(format!(
                "mail to {} via {}",
                self.mail_to.join(", "),
                self.sendmail[0]
            ));
        }
        let events: Vec<&str> = self.events.iter().map(|e| e.as_str()).collect();
        Some(format!("{}; events: {}", parts.join(", "), events.join(", ")))
    }

    /// Whether a URL is configured (its path or query may be a token).
    pub fn has_urls(&self) -> bool {
        self.webhook.is_some() || self.ntfy.is_some() || self.healthchecks.is_some()
    }

    /// Whether `event` goes out through the webhook, ntfy and mail.
    pub fn wants(&self, event: Event) -> bool {
        self.events.contains(&event)
    }
}

/// `sendmail = "/usr/sbin/sendmail"` or `["exim4", "-C", "/etc/x.conf"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawCommand {
    One(String),
    Argv(Vec<String>),
}

/// The `[notify]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    webhook: Option<String>,
    ntfy: Option<String>,
    healthchecks: Option<String>,
    mail_to: Option<Vec<String>>,
    sendmail: Option<RawCommand>,
    events: Option<Vec<Event>>,
    ca_file: Option<PathBuf>,
}

impl RawNotify {
    /// Validates the table; an error names the key and what is wrong, never a URL's secret part.
    pub(crate) fn validate(self) -> Result<NotifyConfig, (&'static str, String)> {
        let url = |key: &'static str, v: Option<String>| {
            v.map(|u| Endpoint::parse(&u).map_err(|e| (key, e))).transpose()
        };
        let webhook = url("webhook", self.webhook)?;
        let ntfy = url("ntfy", self.ntfy)?;
        let healthchecks = url("healthchecks", self.healthchecks)?;
        let mail_to = self.mail_to.unwrap_or_default();
        for to in &mail_to {
            let plain = !to.is_empty()
                && to.contains('@')
                && !to
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || c == ',');
            if !plain {
                return Err((
                    "mail_to",
                    format!("{to:?} is not one plain address (user@host, one per list item)"),
                ));
            }
        }
        let sendmail_set = self.sendmail.is_some();
        let sendmail = match self.sendmail {
            None => vec![DEFAULT_SENDMAIL.to_owned()],
            Some(RawCommand::One(p)) => vec![p],
            Some(RawCommand::Argv(argv)) => argv,
        };
        if sendmail.first().is_none_or(|p| p.is_empty()) {
            return Err(("sendmail", "names no program".into()));
        }
        if mail_to.is_empty() && sendmail_set {
            // Nothing would ever be mailed: the operator meant mail and forgot whom to.
            return Err((
                "sendmail",
                "is set but mail_to names no recipient: add mail_to = [\"ops@example.org\"]".into(),
            ));
        }
        let mut events = self.events.unwrap_or_else(|| DEFAULT_EVENTS.to_vec());
        events.sort();
        events.dedup();
        Ok(NotifyConfig {
            webhook,
            ntfy,
            healthchecks,
            mail_to,
            sendmail,
            events,
            ca_file: self.ca_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_table_validates() {
        let ok: RawNotify = toml::from_str(
            "webhook = \"http://127.0.0.1:9/hook/SECRET\"\nmail_to = [\"ops@example.org\"]\nsendmail = [\"exim4\", \"-C\", \"/x\"]\nevents = [\"run\", \"failure\", \"run\"]\n",
        )
        .unwrap();
        let c = ok.validate().unwrap();
        assert_eq!(c.events, vec![Event::Failure, Event::Run]);
        assert_eq!(c.sendmail, ["exim4", "-C", "/x"]);
        let c: NotifyConfig = toml::from_str::<RawNotify>("").unwrap().validate().unwrap();
        assert!(c.is_empty());
        assert_eq!(c.events, DEFAULT_EVENTS.to_vec());
        assert_eq!(c.sendmail, [DEFAULT_SENDMAIL]);
        let e = toml::from_str::<RawNotify>("ntfy = \"gopher://x/SECRET\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.0, "ntfy");
        assert!(!e.1.contains("SECRET"));
        let e = toml::from_str::<RawNotify>("mail_to = [\"a@b, c@d\"]")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.0, "mail_to");
        assert!(toml::from_str::<RawNotify>("events = [\"sometimes\"]").is_err());
    }
}
