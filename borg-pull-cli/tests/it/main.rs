//! The integration tests of borg-pull-cli, one binary (as ripgrep does): one link, one place that
//! says where a new test goes. Each module is a former test binary; `cargo test -p borg-pull-cli
//! --test it -- MODULE::` runs one. What several crates share lives in borg-pull-testkit.

mod authorize_cli;
mod borg2_generations;
mod borgmatic;
mod check_config_cli;
mod client_trixie;
mod dead_link;
mod docs;
mod fleet_notify;
mod fleet_run;
mod listen_cli;
mod notify_cli;
mod pull_auth_limits;
mod pull_cipher;
mod pull_cli;
mod pull_install_relay;
mod pull_jump;
mod pull_penalties_trixie;
mod pull_remote_dir;
mod pull_sftp;
mod pull_switch;
mod pull_via;
mod relay_cli;
mod restore_sftp;
mod restore_tar;
mod status_cli;
mod status_page;
