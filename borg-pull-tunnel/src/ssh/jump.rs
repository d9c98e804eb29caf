//! Jump hosts (`ssh -J` semantics): the hosts a [`crate::ssh::session::Session`] goes through, each
//! reached over a `direct-tcpip` channel of the one before, to reach the client.

use crate::{Error, Result};

/// One jump host, as `ssh -J [USER@]HOST[:PORT]` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    /// Login user on the jump host; `None` logs in as the destination's user.
    pub user: Option<String>,
    /// Host name or address (an IPv6 address without brackets).
    pub host: String,
    /// sshd's TCP port (22).
    pub port: u16,
}

impl JumpHost {
    /// Parses `[USER@]HOST[:PORT]`; an IPv6 address is written `[::1]` or `[::1]:2222` (a bare
    /// `::1` is a host without port).
    ///
    /// ```
    /// use borg_pull_tunnel::ssh::jump::JumpHost;
    /// let hop = JumpHost::parse("admin@[::1]:2222").unwrap();
    /// assert_eq!((hop.user.as_deref(), hop.host.as_str(), hop.port), (Some("admin"), "::1", 2222));
    /// assert_eq!(JumpHost::parse("bastion").unwrap().port, 22);
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |why: &str| {
            Error::InvalidOption(format!("jump host {text:?}: {why}; expected [USER@]HOST[:PORT]"))
        };
        let (user, rest) = match text.rsplit_once('@') {
            Some(("", _)) => return Err(invalid("empty user")),
            Some((user, rest)) => (Some(user.to_owned()), rest),
            None => (None, text),
        };
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("no closing `]`"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(after.strip_prefix(':').ok_or_else(|| invalid("text after `]`"))?),
                ),
            }
        } else if rest.matches(':').count() > 1 {
            (rest, None)
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/') {
            return Err(invalid("no usable host"));
        }
        let port = match port {
            None => 22,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(invalid("the port is not a number from 1 to 65535")),
            },
        };
        Ok(Self {
            user,
            host: host.to_owned(),
            port,
        })
    }
}

impl std::str::FromStr for JumpHost {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl std::fmt::Display for JumpHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if self.port != 22 {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (Option<String>, String, u16) {
        let hop = JumpHost::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        (hop.user, hop.host, hop.port)
    }

    #[test]
    fn user_host_and_port_forms_parse_like_ssh_j() {
        let some = |u: &str| Some(u.to_owned());
        assert_eq!(parsed("bastion"), (None, "bastion".into(), 22));
        assert_eq!(parsed("bastion:2222"), (None, "bastion".into(), 2222));
        assert_eq!(parsed("ops@bastion"), (some("ops"), "bastion".into(), 22));
        assert_eq!(
            parsed("ops@10.0.0.1:2200"),
            (some("ops"), "10.0.0.1".into(), 2200)
        );
        assert_eq!(parsed("[::1]:22"), (None, "::1".into(), 22));
        assert_eq!(parsed("[::1]"), (None, "::1".into(), 22));
        assert_eq!(
            parsed("ops@[fe80::1]:2022"),
            (some("ops"), "fe80::1".into(), 2022)
        );
        assert_eq!(parsed("::1"), (None, "::1".into(), 22));
        // The last `@` separates the user, as in OpenSSH.
        assert_eq!(parsed("a@b@host"), (some("a@b"), "host".into(), 22));
    }

    #[test]
    fn unusable_jump_hosts_are_refused_with_the_text() {
        for bad in [
            "",
            "@host",
            "user@",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            "[::1",
            "[::1]x",
            "[]:22",
            "a b",
        ] {
            match JumpHost::parse(bad) {
                Err(Error::InvalidOption(text)) => assert!(text.contains(&format!("{bad:?}")), "{text}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["bastion", "ops@bastion:2222", "[::1]:2022", "ops@[fe80::1]"] {
            assert_eq!(JumpHost::parse(text).unwrap().to_string(), text);
        }
    }
}
