//! The five `~/.ssh/config` keys a fleet client's host alias may take: HostName, User, Port,
//! IdentityFile and ProxyJump.
//!
//! Why not a crate: `ssh2-config` is the maintained parser on crates.io, but it could not be
//! vetted in this change (its handling of `!` negation, `Match` and unknown keys against real
//! files), and only five keys are needed. This parser does what OpenSSH does for them: options
//! before the first `Host` apply to every host; a `Host` line's patterns (`*`, `?`, `!negation`,
//! several per line) select the lines after it; the first value found for a key wins
//! (IdentityFile: the first one). `Match` blocks are skipped (their conditions are not
//! evaluated, so their options are never applied), `Include` is not followed, other keys are
//! ignored.

use std::path::Path;

use super::ConfigError;

/// What the file says for one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSettings {
    /// `HostName` (`%h` is the alias).
    pub host_name: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Port`.
    pub port: Option<u16>,
    /// The first `IdentityFile` (`~/` not yet expanded).
    pub identity: Option<String>,
    /// `ProxyJump` as written (`none` or comma-separated hops).
    pub proxy_jump: Option<String>,
}

/// A parsed ssh config: blocks of (patterns, options) in file order.
#[derive(Debug, Clone, Default)]
pub struct SshConfig {
    blocks: Vec<Block>,
}

#[derive(Debug, Clone)]
struct Block {
    /// `None`: before the first Host (all hosts); `Some(empty)`: a Match block (never applies).
    patterns: Option<Vec<String>>,
    options: Vec<(String, String)>,
}

/// Reads `path`; a missing file is `None` unless `required`.
pub fn read_ssh_config(path: &Path, required: bool) -> Result<Option<SshConfig>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(SshConfig::parse(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
        Err(cause) => Err(ConfigError::Io {
            path: path.to_owned(),
            cause,
        }),
    }
}

/// Splits a line into words, honouring double quotes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

impl SshConfig {
    /// Parses the text of an ssh config file.
    pub fn parse(text: &str) -> Self {
        let mut blocks = vec![Block {
            patterns: None,
            options: Vec::new(),
        }];
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // `Key value`, `Key=value` or `Key = value`.
            let split = line
                .find(|c: char| c.is_whitespace() || c == '=')
                .unwrap_or(line.len());
            let (key, rest) = line.split_at(split);
            let rest = rest.trim_start();
            let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
            let key = key.to_ascii_lowercase();
            match key.as_str() {
                "host" => blocks.push(Block {
                    patterns: Some(words(rest).into_iter().map(|p| p.to_ascii_lowercase()).collect()),
                    options: Vec::new(),
                }),
                "match" => blocks.push(Block {
                    patterns: Some(Vec::new()),
                    options: Vec::new(),
                }),
                _ => {
                    let value = words(rest).into_iter().next().unwrap_or_default();
                    if let Some(block) = blocks.last_mut() {
                        block.options.push((key, value));
                    }
                }
            }
        }
        Self { blocks }
    }

    /// The settings for `alias`, first value per key winning.
    pub fn lookup(&self, alias: &str) -> HostSettings {
        let alias = alias.to_ascii_lowercase();
        let mut s = HostSettings::default();
        for block in &self.blocks {
            let applies = match &block.patterns {
                None => true,
                Some(patterns) => host_matches(patterns, &alias),
            };
            if !applies {
                continue;
            }
            for (key, value) in &block.options {
                let value = value.clone();
                match key.as_str() {
                    "hostname" => {
                        s.host_name.get_or_insert(value);
                    }
                    "user" => {
                        s.user.get_or_insert(value);
                    }
                    "port" if s.port.is_none() => s.port = value.parse().ok(),
                    "identityfile" => {
                        s.identity.get_or_insert(value);
                    }
                    "proxyjump" => {
                        s.proxy_jump.get_or_insert(value);
                    }
                    _ => {}
                }
            }
        }
        s
    }
}

/// OpenSSH's rule: some positive pattern matches and no negated one does.
fn host_matches(patterns: &[String], host: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        match p.strip_prefix('!') {
            Some(neg) if glob(neg.as_bytes(), host.as_bytes()) => return false,
            Some(_) => {}
            None => matched |= glob(p.as_bytes(), host.as_bytes()),
        }
    }
    matched
}

/// `*` (any run) and `?` (one character).
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
# global
ServerAliveInterval 30
Host web? !web9
    HostName %h.example.org
    User backup
    Port 2222
Host web9
    HostName nine.example.org
Match host db*
    User nobody-from-match
Host db1 db2
    HostName=10.0.0.5
    IdentityFile "~/.ssh/id db"
    IdentityFile ~/.ssh/second
    ProxyJump bastion@gw:2200,gw2
Host *
    User fallback
    Port 22
    IdentityFile ~/.ssh/id_default
"#;

    #[test]
    fn patterns_negation_first_value_wins_and_match_is_skipped() {
        let c = SshConfig::parse(FILE);
        let web1 = c.lookup("web1");
        assert_eq!(web1.host_name.as_deref(), Some("%h.example.org"));
        assert_eq!(web1.user.as_deref(), Some("backup"));
        assert_eq!(web1.port, Some(2222));
        assert_eq!(web1.identity.as_deref(), Some("~/.ssh/id_default"));
        let web9 = c.lookup("WEB9");
        assert_eq!(web9.host_name.as_deref(), Some("nine.example.org"));
        assert_eq!(web9.user.as_deref(), Some("fallback"));
        let db2 = c.lookup("db2");
        assert_eq!(db2.host_name.as_deref(), Some("10.0.0.5"));
        assert_eq!(db2.user.as_deref(), Some("fallback"), "Match blocks never apply");
        assert_eq!(db2.identity.as_deref(), Some("~/.ssh/id db"));
        assert_eq!(db2.proxy_jump.as_deref(), Some("bastion@gw:2200,gw2"));
        let other = c.lookup("elsewhere");
        assert_eq!(other.host_name, None);
        assert_eq!(other.port, Some(22));
    }

    #[test]
    fn glob_rules() {
        assert!(glob(b"*", b""));
        assert!(glob(b"a*c", b"abbbc"));
        assert!(!glob(b"a?c", b"ac"));
        assert!(host_matches(&["*".into(), "!x".into()], "y"));
        assert!(!host_matches(&["*".into(), "!x".into()], "x"));
        assert!(
            !host_matches(&["!x".into()], "y"),
            "a negation alone matches nothing"
        );
    }
}
