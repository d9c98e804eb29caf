//! What `borg-pull-server generate-docs` writes for the package: the man pages rendered by the real
//! `man` and `groff` at 80 columns (no line wider, one item per exit code), the fleet config's page
//! `borg-pull.toml(5)` against the real config parser (every key it accepts documented, every
//! documented key accepted, the example parses), and the shell completions loaded into real bash
//! (no hidden `generate-docs`).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use borg_pull_cli::exit::{self, Code};
use common::{assert_ok, TestCommand, TestDir};

const SERVER: &str = env!("CARGO_BIN_EXE_borg-pull-server");

/// The width the pages must fit: a classic terminal.
const WIDTH: usize = 80;

/// Runs `generate-docs` into a fresh directory.
fn generate(dir: &TestDir) -> PathBuf {
    let out = dir.join("docs");
    let run = TestCommand::new(SERVER)
        .arg("generate-docs")
        .arg("--out")
        .arg(&out)
        .output();
    assert_ok(&run, "generate-docs");
    out
}

fn require_man_tools() {
    for tool in ["man", "groff", "bash"] {
        assert!(
            common::require_tool(tool),
            "{tool} is missing: apt-get install man-db groff-base bash"
        );
    }
}

/// `page` as `man -l` shows it on an 80-column terminal (no pager, no formatting).
fn man(page: &Path) -> String {
    let out = TestCommand::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", WIDTH.to_string())
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env_remove("MAN_KEEP_FORMATTING")
        .env_remove("MANROFFOPT")
        .env("LANG", "C.UTF-8")
        .output();
    assert_ok(&out, &format!("man -l {}", page.display()));
    out.stdout_text()
}

/// `page` through groff with every warning on; its stderr must be empty.
fn groff(page: &Path) -> String {
    let out = TestCommand::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
        .arg(format!("-rLL={WIDTH}n"))
        .arg(page)
        .output();
    assert_ok(&out, &format!("groff {}", page.display()));
    assert_eq!(out.stderr_text(), "", "groff warns about {}", page.display());
    out.stdout_text()
}

/// The lines of a rendered section: from the heading line `name` to the next heading (a line
/// that starts at column 0).
fn section<'a>(rendered: &'a str, name: &str) -> Vec<&'a str> {
    rendered
        .lines()
        .skip_while(|l| l.trim_end() != name)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect()
}

/// The exit codes a page's man(7) `.TP` items show: a line of the section that starts with a
/// number at the paragraph indent.
fn listed_codes(rendered: &str) -> Vec<u8> {
    section(rendered, "EXIT STATUS")
        .iter()
        .filter_map(|l| {
            let body = l.strip_prefix("       ")?;
            if body.starts_with(' ') {
                return None;
            }
            let (number, rest) = body.split_once(' ')?;
            (rest.starts_with(' ') || rest.is_empty())
                .then(|| number.parse().ok())
                .flatten()
        })
        .collect()
}

/// How the source writes `text` on one roff line.
fn roff_escaped(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .replace('\'', "\\*(Aq")
}

#[test]
fn man_pages_fit_80_columns_and_list_each_exit_code_as_its_own_item() {
    require_man_tools();
    let dir = TestDir::new();
    let docs = generate(&dir);
    let mut pages: Vec<PathBuf> = fs::read_dir(docs.join("man"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // The package installs these; a subcommand added later gets its page by itself.
    for expected in [
        "borg-pull-server.1",
        "borg-pull-server-pull.1",
        "borg-pull-server-run.1",
        "borg-pull-relay.1",
        "borg-pull.toml.5",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.contains("generate-docs")),
        "a page for the hidden command: {names:?}"
    );

    for page in &pages {
        for (how, rendered) in [("man -l", man(page)), ("groff", groff(page))] {
            let wide: Vec<&str> = rendered.lines().filter(|l| l.chars().count() > WIDTH).collect();
            assert!(
                wide.is_empty(),
                "{} rendered by {how} has lines over {WIDTH} columns:\n{}",
                page.display(),
                wide.join("\n")
            );
            assert!(
                rendered.lines().count() > 10,
                "{how} rendered almost nothing:\n{rendered}"
            );
            // The header names the manual: the .TH line has all its fields in place.
            let header = rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            assert!(
                header.contains("borg-pull") && !header.contains("General Commands"),
                "{} by {how}: header {header:?}",
                page.display()
            );
        }
    }

    // Each table's codes, in order, each on its own item; the hand-written 0 lines too.
    let tables: [(&str, Option<&str>, &[Code]); 7] = [
        ("borg-pull-server-listen.1", Some("0"), exit::LISTEN),
        ("borg-pull-server-pull.1", None, exit::PULL),
        ("borg-pull-server-restore-tar.1", None, exit::RESTORE),
        ("borg-pull-server-status.1", Some("0"), exit::STATUS),
        ("borg-pull-server-authorize.1", Some("0"), exit::AUTHORIZE),
        ("borg-pull-server-run.1", None, exit::PULL),
        ("borg-pull-relay.1", Some("0"), exit::RELAY),
    ];
    for (name, zero, table) in tables {
        let page = docs.join("man").join(name);
        let rendered = man(&page);
        let mut expected: Vec<u8> = zero.iter().map(|z| z.parse().unwrap()).collect();
        expected.extend(table.iter().map(|c| c.code));
        assert_eq!(
            listed_codes(&rendered),
            expected,
            "{name}: the EXIT STATUS items\n{rendered}"
        );
        // Each item holds its whole meaning on one source line: never cut, never run into the
        // next code.
        let source = fs::read_to_string(&page).unwrap();
        for code in table {
            let item = format!(
                ".TP\n\\fB{}\\fR\n{}\n",
                code.code,
                roff_escaped(
                    code.meaning
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .as_str()
                )
            );
            assert!(source.contains(&item), "{name}: no item\n{item}in\n{source}");
        }
        // The prose that is not about exit codes (logging) is not in EXIT STATUS.
        let status = section(&rendered, "EXIT STATUS").join("\n");
        assert!(
            !status.contains("stderr"),
            "{name}: logging under EXIT STATUS:\n{rendered}"
        );
    }

    // The top page points to the config's page and the relay's.
    let top = man(&docs.join("man/borg-pull-server.1"));
    let see_also = section(&top, "SEE ALSO").join(" ");
    for wanted in [
        "borg-pull.toml(5)",
        "borg-pull-relay(1)",
        "borg-pull-server-run(1)",
    ] {
        assert!(see_also.contains(wanted), "SEE ALSO lacks {wanted}:\n{top}");
    }
    assert!(
        !top.contains("generate-docs"),
        "the hidden command is on the page:\n{top}"
    );
}

/// `(table, keys)` of the structs the config parser deserialises with `deny_unknown_fields`:
/// exactly the keys it accepts. Read from the parser's source, so a new field shows up here.
fn parser_keys(file: &str, header: &str) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let src = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let at = src
        .find(header)
        .unwrap_or_else(|| panic!("{header:?} not in {file}: update this test"));
    let before = &src[..at];
    let attrs = &before[before.rfind("\n\n").unwrap_or(0)..];
    assert!(
        attrs.contains("deny_unknown_fields"),
        "{header} in {file} no longer denies unknown fields: its keys are not a closed set"
    );
    let body = &src[at + header.len()..];
    let body = &body[..body.find("\n}").unwrap()];
    for attr in ["rename", "alias", "flatten"] {
        assert!(
            !body.contains(attr),
            "{header} in {file} uses serde {attr}: teach this test to read it"
        );
    }
    let keys: BTreeSet<String> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with('#'))
        .filter_map(|l| {
            let (name, _) = l.split_once(':')?;
            let name = name.trim().trim_start_matches("pub ").trim();
            (!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                .then(|| name.to_owned())
        })
        .collect();
    assert!(
        keys.len() >= 3,
        "read too few keys of {header} in {file}: {keys:?}"
    );
    keys
}

/// The key names a section of the config page documents: its `.TP` tags, `\fBkey\fR (type)`.
fn page_keys(source: &str, section: &str) -> BTreeSet<String> {
    let heading = format!(".SH \"{section}\"\n");
    let at = source
        .find(&heading)
        .unwrap_or_else(|| panic!("no section {section} in\n{source}"));
    let body = &source[at + heading.len()..];
    let body = &body[..body.find("\n.SH ").unwrap_or(body.len())];
    body.split(".TP\n")
        .skip(1)
        .map(|item| {
            let tag = item.lines().next().unwrap();
            let name = tag
                .strip_prefix("\\fB")
                .and_then(|t| t.split_once("\\fR"))
                .unwrap_or_else(|| panic!("item tag {tag:?} in {section}"))
                .0;
            name.replace("\\-", "-")
        })
        .collect()
}

/// What the real parser says about `text` (`Ok` or its message).
fn parse(text: &str) -> Result<usize, String> {
    borg_pull_fleet::config::parse_with_home(text, Path::new("fleet.toml"), None)
        .map(|f| f.clients.len())
        .map_err(|e| e.to_string())
}

/// Whether the parser knows `key` at `place` (a wrong type or a missing host is fine: only
/// "unknown key" means it does not).
fn accepted(place: &str, key: &str) -> bool {
    let text = match place {
        "server" => format!("[server]\n{key} = 1\n"),
        "client" => format!("[[client]]\n{key} = 1\n"),
        "prune" => format!("[[client]]\nprune = {{ {key} = 1 }}\n"),
        "notify" => format!("[notify]\n{key} = 1\n"),
        other => panic!("{other}"),
    };
    match parse(&text) {
        Ok(_) => true,
        Err(message) => !message.contains(&format!("unknown key \"{key}\"")),
    }
}

#[test]
fn config_page_documents_exactly_the_keys_the_parser_accepts() {
    require_man_tools();
    let dir = TestDir::new();
    let docs = generate(&dir);
    let page = docs.join("man/borg-pull.toml.5");
    let source = fs::read_to_string(&page).unwrap();

    // The control: the parser does refuse a key it does not know, at every level.
    for place in ["server", "client", "prune", "notify"] {
        assert!(!accepted(place, "no_such_key"), "{place} accepts anything");
    }

    let top = parser_keys("borg-pull-fleet/src/config.rs", "struct RawFile {");
    for (section, place, file, header) in [
        (
            "SERVER KEYS",
            "server",
            "borg-pull-fleet/src/config.rs",
            "struct RawServer {",
        ),
        (
            "CLIENT KEYS",
            "client",
            "borg-pull-fleet/src/config.rs",
            "struct RawClient {",
        ),
        (
            "PRUNE KEYS",
            "prune",
            "borg-pull-fleet/src/config/policy.rs",
            "pub struct Retention {",
        ),
        (
            "NOTIFY KEYS",
            "notify",
            "borg-pull-fleet/src/notify.rs",
            "pub(crate) struct RawNotify {",
        ),
    ] {
        let parser = parser_keys(file, header);
        for key in &parser {
            assert!(
                accepted(place, key),
                "the source scan read {key:?}, the parser refuses it"
            );
        }
        let documented = page_keys(&source, section);
        let undocumented: Vec<_> = parser.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&parser).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "borg-pull.toml(5) {section}: keys the parser accepts but the page does not document: \
             {undocumented:?}; documented but refused by the parser: {unknown:?} (edit \
             generate_docs/fleet_config_page.rs)"
        );
    }
    // The tables themselves.
    for table in &top {
        let written = match table.as_str() {
            "client" => format!("[[{table}]]"),
            t => format!("[{t}]"),
        };
        assert!(source.contains(&written), "the page never names {written}");
    }

    // The page's example is a config the parser takes, with its three clients.
    let example: String = source
        .split_once(".SH EXAMPLE\n")
        .and_then(|(_, rest)| rest.split_once(".nf\n"))
        .and_then(|(_, rest)| rest.split_once(".fi\n"))
        .map(|(example, _)| example)
        .expect("an EXAMPLE section with .nf/.fi")
        .lines()
        .filter(|l| !l.starts_with('.'))
        .map(|l| {
            let l = l.strip_prefix("\\&").unwrap_or(l);
            let l = l.replace("\\-", "-").replace("\\*(Aq", "'");
            format!("{}\n", l.replace("\\e", "\\"))
        })
        .collect();
    assert_eq!(parse(&example), Ok(3), "the page's example:\n{example}");
    // And the one the package installs next to the README.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/examples/fleet.toml");
    let shipped = fs::read_to_string(shipped).unwrap();
    assert!(
        parse(&shipped).is_ok(),
        "contrib/examples/fleet.toml: {:?}",
        parse(&shipped)
    );

    // Defaults on the page are the parser's.
    let rendered = man(&page);
    let jobs = section(&rendered, "SERVER KEYS")
        .iter()
        .skip_while(|l| !l.trim_start().starts_with("jobs ("))
        .find(|l| l.trim_start().starts_with("Default:"))
        .map(|l| l.trim().to_owned());
    assert_eq!(
        jobs,
        Some(format!("Default: {}.", borg_pull_fleet::config::DEFAULT_JOBS))
    );
}

/// What bash offers on TAB after `words` (the last one being completed), with `file` loaded.
fn bash_complete(file: &Path, command: &str, words: &[&str]) -> Vec<String> {
    // `complete -p` names the function; bash calls it with the command, the current word and the
    // previous one, as it does on TAB.
    let script = format!(
        "source \"$1\" || exit 90\nspec=$(complete -p {command}) || exit 91\nf=${{spec#*-F }}\nf=${{f%% *}}\n\
         COMP_WORDS=(\"${{@:2}}\")\nCOMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\n\
         # compgen's status is 1 when nothing matches: not a failure here.\n\
         \"$f\" \"{command}\" \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\" || :\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    );
    let out = TestCommand::new("bash")
        .arg("-c")
        .arg(script)
        .arg("bash")
        .arg(file)
        .args(words)
        .output();
    assert_ok(&out, "bash completion");
    out.stdout_text().lines().map(str::to_owned).collect()
}

#[test]
fn completions_never_offer_generate_docs_and_the_command_still_works() {
    require_man_tools();
    let dir = TestDir::new();
    // Generating is the command working; what it wrote is checked below.
    let docs = generate(&dir);
    for (shell, file) in [
        ("bash", "borg-pull-server"),
        ("zsh", "_borg-pull-server"),
        ("fish", "borg-pull-server.fish"),
        ("bash", "borg-pull-relay"),
        ("zsh", "_borg-pull-relay"),
        ("fish", "borg-pull-relay.fish"),
    ] {
        let path = docs.join("completions").join(shell).join(file);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for hidden in ["generate-docs", "generate_docs", "generate__docs"] {
            assert!(!text.contains(hidden), "{} offers {hidden}", path.display());
        }
        if file.contains("server") {
            // The visible subcommands are all still there.
            for sub in [
                "listen",
                "pull",
                "restore-tar",
                "authorize",
                "run",
                "check-config",
                "status",
            ] {
                assert!(text.contains(sub), "{} lost {sub}", path.display());
            }
        }
    }

    // Real bash, as on TAB: the subcommands, and nothing for `gen`.
    let bash = docs.join("completions/bash/borg-pull-server");
    let offered = bash_complete(&bash, "borg-pull-server", &["borg-pull-server", ""]);
    for sub in ["pull", "run", "check-config", "status"] {
        assert!(offered.iter().any(|o| o == sub), "TAB lacks {sub}: {offered:?}");
    }
    assert!(
        !offered.iter().any(|o| o.contains("generate")),
        "TAB offers {offered:?}"
    );
    let gen = bash_complete(&bash, "borg-pull-server", &["borg-pull-server", "gen"]);
    assert!(gen.iter().all(|o| o.is_empty()), "TAB on `gen` offers {gen:?}");
    // Options of a subcommand still complete.
    let run = bash_complete(&bash, "borg-pull-server", &["borg-pull-server", "run", "--con"]);
    assert!(run.iter().any(|o| o == "--config"), "run --con<TAB>: {run:?}");

    // Still usable by name, and still hidden from --help.
    let help = TestCommand::new(SERVER).arg("--help").output();
    assert_ok(&help, "--help");
    assert!(
        !help.stdout_text().contains("generate-docs"),
        "{}",
        help.stdout_text()
    );
    let own_help = TestCommand::new(SERVER)
        .args(["generate-docs", "--help"])
        .output();
    assert_ok(&own_help, "generate-docs --help");
    assert!(
        own_help.stdout_text().contains("--out"),
        "{}",
        own_help.stdout_text()
    );
}
