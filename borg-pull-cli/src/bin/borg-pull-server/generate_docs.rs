//! `borg-pull-server generate-docs --out DIR` (hidden): man pages and shell completions of both
//! binaries, for the Debian package (`scripts/build-deb`). Generated from the clap definitions, so
//! they never drift from `--help`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use borg_pull_cli::relay_args::RelayArgs;
use clap::CommandFactory as _;
use clap_complete::Shell;

/// Arguments of `generate-docs`.
#[derive(Debug, clap::Args)]
pub struct GenerateDocsArgs {
    /// Directory to write `man/*.1` and `completions/{bash,zsh,fish}/…` into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Writes every man page and completion file.
pub fn run(args: GenerateDocsArgs) -> anyhow::Result<()> {
    let commands = [crate::Cli::command(), RelayArgs::command()];
    let man = args.out.join("man");
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    for command in &commands {
        write_man_pages(command.clone(), &man)?;
        for (shell, dir, name) in [
            (Shell::Bash, "bash", command.get_name().to_owned()),
            (Shell::Zsh, "zsh", format!("_{}", command.get_name())),
            (Shell::Fish, "fish", format!("{}.fish", command.get_name())),
        ] {
            let dir = args.out.join("completions").join(dir);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut file = fs::File::create(dir.join(&name))
                .with_context(|| format!("creating {}", dir.join(&name).display()))?;
            clap_complete::generate(
                shell,
                &mut command.clone(),
                command.get_name().to_owned(),
                &mut file,
            );
        }
    }
    Ok(())
}

/// `NAME.1` and one `NAME-SUB.1` per visible subcommand, as git and cargo lay them out.
fn write_man_pages(command: clap::Command, dir: &Path) -> anyhow::Result<()> {
    let command = command.disable_help_subcommand(true);
    let name = command.get_name().to_owned();
    render(&command, &dir.join(format!("{name}.1")))?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{name}-{}", sub.get_name());
        let version = command.get_version().unwrap_or_default().to_owned();
        let sub = sub.clone().name(full.clone()).version(version);
        render(&sub, &dir.join(format!("{full}.1")))?;
    }
    Ok(())
}

fn render(command: &clap::Command, path: &Path) -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .with_context(|| format!("rendering {}", path.display()))?;
    fs::write(path, page).with_context(|| format!("writing {}", path.display()))
}
