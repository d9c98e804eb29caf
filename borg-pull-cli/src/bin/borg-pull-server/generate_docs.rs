//! `borg-pull-server generate-docs --out DIR` (hidden): man pages and shell completions of both
//! binaries, and the fleet config's page `borg-pull.toml(5)`, for the Debian package
//! (`scripts/build-deb`). Generated from the clap definitions and the config's key table, so they
//! never drift from `--help` and the parser (`tests/docs.rs` holds both).
//!
//! clap_mangen would put each `after_help` in one "EXTRA" section as filled text: the exit-code
//! lists, pre-wrapped for `--help`, then run together into one paragraph. So the pages are
//! assembled here from clap_mangen's sections, and `after_help` is rendered by [`after_help_roff`]:
//! each exit code becomes its own `.TP` item in an EXIT STATUS section, prose is re-filled by man.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use borg_pull_cli::relay_args::RelayArgs;
use clap::CommandFactory as _;
use clap_complete::Shell;

mod fleet_config_page;

/// Arguments of `generate-docs`.
#[derive(Debug, clap::Args)]
pub struct GenerateDocsArgs {
    /// Directory to write `man/*.1`, `man/*.5` and `completions/{bash,zsh,fish}/…` into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// The fleet config's page: `man/borg-pull.toml.5`.
pub const CONFIG_PAGE: &str = "borg-pull.toml";

/// Writes every man page and completion file.
pub fn run(args: GenerateDocsArgs) -> anyhow::Result<()> {
    let commands = [crate::Cli::command(), RelayArgs::command()];
    let man = args.out.join("man");
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    for command in &commands {
        write_man_pages(command.clone(), &man)?;
        // clap_complete lists hidden subcommands too (bash and fish do): a user must not be
        // offered `generate-docs`, a packaging step.
        let mut visible = without_hidden_subcommands(command);
        for (shell, dir, name) in [
            (Shell::Bash, "bash", command.get_name().to_owned()),
            (Shell::Zsh, "zsh", format!("_{}", command.get_name())),
            (Shell::Fish, "fish", format!("{}.fish", command.get_name())),
        ] {
            let dir = args.out.join("completions").join(dir);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut visible, command.get_name().to_owned(), &mut script);
            let mut script = String::from_utf8(script).context("a completion script is not UTF-8")?;
            if shell == Shell::Bash {
                script = fix_bash_case_labels(&script, command.get_name());
            }
            fs::write(dir.join(&name), script)
                .with_context(|| format!("writing {}", dir.join(&name).display()))?;
        }
    }
    let page = man.join(format!("{CONFIG_PAGE}.5"));
    fs::write(&page, fleet_config_page::render(&version()))
        .with_context(|| format!("writing {}", page.display()))
}

fn version() -> String {
    crate::Cli::command().get_version().unwrap_or_default().to_owned()
}

/// clap_complete 4.6's bash script labels a subcommand's case
/// `borg__subcmd__pull__subcmd__server__subcmd__run` where its dispatcher sets
/// `cmd="borg__pull__server__subcmd__run"` (the binary's hyphens become the subcommand separator
/// in one place only), so no option of any subcommand completed: the labels are made to match.
fn fix_bash_case_labels(script: &str, bin: &str) -> String {
    const SEP: &str = "__subcmd__";
    let wrong = format!("{}{SEP}", bin.replace('-', SEP));
    let right = format!("{}{SEP}", bin.replace('-', "__"));
    script.replace(&wrong, &right)
}

/// `command` with its hidden subcommands left out (clap has no way to remove one, so the
/// command is rebuilt from its name, settings, arguments and visible subcommands).
fn without_hidden_subcommands(command: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new(command.get_name().to_owned())
        .subcommand_required(command.is_subcommand_required_set())
        .arg_required_else_help(command.is_arg_required_else_help_set())
        .disable_version_flag(command.is_disable_version_flag_set())
        .args(command.get_arguments().cloned())
        .subcommands(command.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(version) = command.get_version() {
        out = out.version(version.to_owned());
    }
    if let Some(about) = command.get_about() {
        out = out.about(about.clone());
    }
    out
}

/// `NAME.1` and one `NAME-SUB.1` per visible subcommand, as git and cargo lay them out.
fn write_man_pages(command: clap::Command, dir: &Path) -> anyhow::Result<()> {
    let command = command.disable_help_subcommand(true);
    let name = command.get_name().to_owned();
    let subs: Vec<String> = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| format!("{name}-{}", s.get_name()))
        .collect();
    let mut see_also: Vec<String> = subs.iter().map(|s| format!("{s}(1)")).collect();
    if name == "borg-pull-server" {
        see_also.push(format!("{CONFIG_PAGE}(5)"));
        see_also.push("borg-pull-relay(1)".into());
    } else {
        see_also.push("borg-pull-server(1)".into());
    }
    see_also.push("borg(1)".into());
    render(&command, &dir.join(format!("{name}.1")), &see_also)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{name}-{}", sub.get_name());
        let version = command.get_version().unwrap_or_default().to_owned();
        let mut see_also = vec![format!("{name}(1)")];
        if matches!(sub.get_name(), "run" | "check-config" | "status") {
            see_also.push(format!("{CONFIG_PAGE}(5)"));
        }
        see_also.push("borg(1)".into());
        let sub = sub.clone().name(full.clone()).version(version);
        render(&sub, &dir.join(format!("{full}.1")), &see_also)?;
    }
    Ok(())
}

/// One page: clap_mangen's sections, then EXIT STATUS and NOTES from `after_help`, then SEE
/// ALSO (which clap_mangen has no notion of).
fn render(command: &clap::Command, path: &Path, see_also: &[String]) -> anyhow::Result<()> {
    let mut command = command.clone();
    command.build();
    let man = clap_mangen::Man::new(command.clone());
    let section = |render: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| -> anyhow::Result<String> {
        let mut out = Vec::new();
        render(&mut out).with_context(|| format!("rendering {}", path.display()))?;
        // Each of clap_mangen's sections repeats the roff crate's preamble: once is enough.
        Ok(String::from_utf8(out)?.replace(AQ_PREAMBLE, ""))
    };
    // Our own .TH: clap_mangen's leaves the date out unquoted, so the source moved into the
    // date's place and the header read "General Commands Manual".
    let mut page = format!(
        "{AQ_PREAMBLE}.TH {} 1 \"\" \"borg-pull {}\" \"borg-pull\"\n",
        command.get_name(),
        version()
    );
    page += &section(&|w| man.render_name_section(w))?;
    page += &section(&|w| man.render_synopsis_section(w))?;
    page += &section(&|w| man.render_description_section(w))?;
    if command.get_arguments().any(|a| !a.is_hide_set()) {
        page += &section(&|w| man.render_options_section(w))?;
    }
    if command.get_subcommands().any(|s| !s.is_hide_set()) {
        page += &section(&|w| man.render_subcommands_section(w))?;
    }
    if let Some(text) = command.get_after_long_help().or(command.get_after_help()) {
        page += &after_help_roff(&text.to_string());
    }
    if command.get_version().is_some() {
        page += &section(&|w| man.render_version_section(w))?;
    }
    page += &see_also_roff(see_also);
    fs::write(path, page).with_context(|| format!("writing {}", path.display()))
}

/// The roff crate's definition of `\*(Aq`, the straight apostrophe a reader can copy into a
/// shell (a bare `'` prints as a typographic quote in UTF-8).
pub const AQ_PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// A piece of an `after_help` text.
#[derive(Debug, PartialEq)]
enum Block {
    /// Prose: its lines joined, for man to fill.
    Paragraph(String),
    /// One line of an exit-code list (`  NNN  meaning`, continued on deeper-indented lines).
    Item {
        /// The code.
        tag: String,
        /// What it means, joined.
        text: String,
    },
}

/// Splits an `after_help` text into prose paragraphs (separated by blank lines, or ended by a
/// list) and list items: a line of two to five spaces, a number and two spaces (what
/// `exit::lines` writes, and the hand-written `    0  success` lines) starts an item; a more
/// indented line continues it.
fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            out.extend(current.take());
        } else if let Some((tag, rest)) = item_start(line) {
            out.extend(current.take());
            current = Some(Block::Item {
                tag: tag.to_owned(),
                text: rest.trim().to_owned(),
            });
        } else {
            let indented = line.starts_with(' ');
            match &mut current {
                Some(Block::Item { text, .. }) if indented => {
                    text.push(' ');
                    text.push_str(line.trim());
                }
                Some(Block::Paragraph(text)) => {
                    text.push(' ');
                    text.push_str(line.trim());
                }
                _ => {
                    out.extend(current.take());
                    current = Some(Block::Paragraph(line.trim().to_owned()));
                }
            }
        }
    }
    out.extend(current);
    out
}

/// `("200", "usage error ...")` for a line that starts an exit-code item.
fn item_start(line: &str) -> Option<(&str, &str)> {
    let body = line.trim_start_matches(' ');
    let indent = line.len() - body.len();
    let digits = body.len() - body.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = &body[digits..];
    ((2..=5).contains(&indent)
        && (1..=3).contains(&digits)
        && rest.starts_with("  ")
        && !rest[2..].starts_with(' '))
    .then(|| (&body[..digits], &rest[2..]))
}

/// `after_help` as man sections: the blocks from the first one that speaks of exit codes, as
/// long as they are about exit codes, make EXIT STATUS; the rest (before and after) NOTES.
fn after_help_roff(text: &str) -> String {
    let mut exit = String::new();
    let mut notes = String::new();
    let mut state = ExitPart::Before;
    for block in blocks(text) {
        let about_exit = match &block {
            Block::Item { .. } => true,
            Block::Paragraph(p) => {
                let p = p.to_lowercase();
                match state {
                    ExitPart::Before => p.contains("exit code"),
                    _ => p.contains("exit") || p.contains("code"),
                }
            }
        };
        state = match (state, about_exit) {
            (ExitPart::Before, true) | (ExitPart::In, true) => ExitPart::In,
            (ExitPart::Before, false) => ExitPart::Before,
            _ => ExitPart::After,
        };
        let out = if state == ExitPart::In {
            &mut exit
        } else {
            &mut notes
        };
        match block {
            Block::Paragraph(p) => {
                out.push_str(".PP\n");
                out.push_str(&escape(&p));
            }
            Block::Item { tag, text } => {
                out.push_str(".TP\n\\fB");
                out.push_str(&tag);
                out.push_str("\\fR\n");
                out.push_str(&escape(&text));
            }
        }
        out.push('\n');
    }
    let mut roff = String::new();
    if !exit.is_empty() {
        roff.push_str(".SH \"EXIT STATUS\"\n");
        roff.push_str(&exit);
    }
    if !notes.is_empty() {
        roff.push_str(".SH NOTES\n");
        roff.push_str(&notes);
    }
    roff
}

/// Where [`after_help_roff`] is: exit codes are one contiguous part of every `after_help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitPart {
    Before,
    In,
    After,
}

fn see_also_roff(pages: &[String]) -> String {
    let items: Vec<String> = pages
        .iter()
        .map(|p| match p.rsplit_once('(') {
            Some((name, section)) => format!("\\fB{}\\fR({section}", escape(name)),
            None => escape(p),
        })
        .collect();
    // Left-aligned and unhyphenated: page names are not words to stretch or split.
    format!(".SH \"SEE ALSO\"\n.ad l\n.nh\n{}\n", items.join(",\n"))
}

/// Text for one roff input line: backslashes, hyphens and apostrophes escaped (`\-` and
/// `\*(Aq` are what a reader can copy into a shell), a leading `.` made literal.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    if text.starts_with('.') {
        out.push_str("\\&");
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            '\'' => out.push_str("\\*(Aq"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_lists_become_items_and_prose_stays_paragraphs() {
        let text = format!(
            "Exit codes:\n    0  success\n{}\n\n{}\n\nLogging goes to stderr.",
            borg_pull_cli::exit::lines(borg_pull_cli::exit::LISTEN).trim_end(),
            borg_pull_cli::exit::range_note()
        );
        let blocks = blocks(&text);
        let tags: Vec<&str> = blocks
            .iter()
            .filter_map(|b| match b {
                Block::Item { tag, .. } => Some(tag.as_str()),
                Block::Paragraph(_) => None,
            })
            .collect();
        let mut expected = vec!["0".to_owned()];
        expected.extend(borg_pull_cli::exit::LISTEN.iter().map(|c| c.code.to_string()));
        assert_eq!(tags, expected);
        // A continuation line joins its item: no item text is cut mid-sentence.
        let socket_unsafe = blocks
            .iter()
            .find_map(|b| match b {
                Block::Item { tag, text } if tag == "205" => Some(text.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(socket_unsafe, borg_pull_cli::exit::SOCKET_UNSAFE.meaning);
        let roff = after_help_roff(&text);
        let (exit, notes) = roff.split_once(".SH NOTES\n").unwrap();
        assert!(exit.starts_with(".SH \"EXIT STATUS\"\n"), "{roff}");
        assert!(exit.contains("outside what borg uses"), "{roff}");
        assert_eq!(notes, ".PP\nLogging goes to stderr.\n");
    }

    #[test]
    fn continuation_lines_are_not_items() {
        assert_eq!(item_start("  200  usage error"), Some(("200", "usage error")));
        assert_eq!(item_start("    0  success"), Some(("0", "success")));
        assert_eq!(item_start("       130 when it gets SIGINT"), None);
        assert_eq!(item_start("2 error; with BORG_EXIT_CODES"), None);
        assert_eq!(item_start("  200 usage"), None);
    }

    #[test]
    fn roff_escapes() {
        assert_eq!(escape(".x --y a\\b"), "\\&.x \\-\\-y a\\eb");
        assert_eq!(escape("'a'"), "\\*(Aqa\\*(Aq");
    }
}
