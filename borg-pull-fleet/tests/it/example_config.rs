//! The example config the package ships (`/usr/share/doc/borg-pull/examples/fleet.toml`) is valid
//! and means what its comments say.

use std::path::Path;

#[test]
fn the_shipped_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/examples/fleet.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let fleet = borg_pull_fleet::config::parse_with_home(&text, &path, None).unwrap();
    let names: Vec<&str> = fleet.clients.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["web1", "db1", "legacy"]);
    assert_eq!(fleet.server.jobs, 4);
    let web1 = &fleet.clients[0];
    assert_eq!(web1.prune.keep_daily, Some(7));
    assert!(web1.compact);
    assert_eq!(web1.max_age.as_secs(), 36 * 3600);
    // The borg user's own files, in its home (the units' StateDirectory): the hardened service can
    // write known_hosts there (ProtectSystem=strict makes /etc read-only), and accept_new_host_key
    // records a new client's key on first contact.
    assert_eq!(
        web1.known_hosts.as_deref(),
        Some(Path::new("/var/lib/borg-pull/.ssh/known_hosts"))
    );
    assert_eq!(
        web1.identity.as_deref(),
        Some(Path::new("/var/lib/borg-pull/.ssh/id_ed25519"))
    );
    assert!(web1.accept_new_host_key);
    assert_eq!(
        fleet.clients[1].args.last().map(String::as_str),
        Some("/var/backups/postgres")
    );
    assert!(matches!(
        fleet.clients[2].via,
        borg_pull_fleet::config::ViaConfig::Agent {
            tcp: true,
            agent_key: None,
            ..
        }
    ));
}
