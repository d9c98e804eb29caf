//! Against OpenSSH's own sftp-server (a child on stdin/stdout): what a real server answers must
//! match what std::fs says of the same files.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use borg_pull_sftp::{Attrs, Client, Error, FileType, Limits, OpenFlags, ReadData};

use crate::server::{start, RealServer};

fn bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

fn assert_matches_metadata(attrs: &Attrs, md: &std::fs::Metadata, what: &str) {
    assert_eq!(attrs.size, Some(md.size()), "{what}: size");
    assert_eq!(attrs.permissions, Some(md.mode()), "{what}: mode");
    assert_eq!(attrs.uid, Some(md.uid()), "{what}: uid");
    assert_eq!(attrs.gid, Some(md.gid()), "{what}: gid");
    assert_eq!(attrs.mtime, Some(md.mtime() as u32), "{what}: mtime");
}

/// Reads a whole file one READ at a time; bounded by its expected length.
async fn read_all(client: &Client, path: &[u8], expected_len: usize) -> Vec<u8> {
    let h = client.open_read(path).await.unwrap();
    let mut out = Vec::new();
    // Each READ returns at least one byte before EOF, so expected_len + 2 READs are enough.
    for _ in 0..expected_len + 2 {
        match client
            .read(&h, out.len() as u64, client.max_read())
            .await
            .unwrap()
        {
            ReadData::Bytes(b) => {
                assert!(!b.is_empty(), "empty DATA before EOF");
                out.extend_from_slice(&b);
            }
            ReadData::Eof => {
                client.close(h).await.unwrap();
                return out;
            }
        }
    }
    panic!("no EOF after {} bytes", out.len());
}

/// A tree with one of each file type sftp-server can report.
fn tree(dir: &Path) {
    std::fs::write(dir.join("file"), b"hello").unwrap();
    std::fs::set_permissions(dir.join("file"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink("file", dir.join("link")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(dir.join("fifo"))
        .status()
        .unwrap();
    assert!(fifo.success(), "mkfifo");
    std::fs::write(dir.join("sub/inner"), b"x").unwrap();
}

#[tokio::test]
async fn lstat_stat_and_read_dir_match_std_fs_metadata() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let RealServer {
        client,
        child: _child,
    } = start(dir.path(), &[], Limits::default()).await;

    let expected_types = [
        ("file", FileType::Regular),
        ("sub", FileType::Directory),
        ("link", FileType::Symlink),
        ("fifo", FileType::Fifo),
    ];
    for (name, ty) in expected_types {
        let p = dir.path().join(name);
        let a = client.lstat(&bytes(&p)).await.unwrap();
        assert_matches_metadata(&a, &std::fs::symlink_metadata(&p).unwrap(), name);
        assert_eq!(a.file_type(), ty, "{name}");
    }
    // stat follows the link to the file.
    let followed = client.stat(&bytes(&dir.path().join("link"))).await.unwrap();
    assert_matches_metadata(
        &followed,
        &std::fs::metadata(dir.path().join("file")).unwrap(),
        "link followed",
    );

    let mut listed = client.read_dir(&bytes(dir.path())).await.unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let mut on_disk: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    on_disk.sort();
    let names: Vec<_> = listed.iter().map(|e| e.name.clone()).collect();
    let disk_names: Vec<_> = on_disk.iter().map(|n| n.as_bytes().to_vec()).collect();
    assert_eq!(names, disk_names);
    for e in &listed {
        let md = std::fs::symlink_metadata(dir.path().join(OsStr::from_bytes(&e.name))).unwrap();
        assert_matches_metadata(&e.attrs, &md, &String::from_utf8_lossy(&e.name));
    }
}

#[tokio::test]
async fn a_missing_file_is_no_such_file_with_its_path_in_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let RealServer {
        client,
        child: _child,
    } = start(dir.path(), &[], Limits::default()).await;
    let missing = bytes(&dir.path().join("missing"));
    let err = client.lstat(&missing).await.unwrap_err();
    assert!(matches!(err, Error::NoSuchFile { .. }), "{err:?}");
    assert_eq!(err.to_errno(), libc::ENOENT);
    assert!(err.to_string().contains("missing"), "{err}");
}

#[tokio::test]
async fn read_link_returns_the_target_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let target = OsStr::from_bytes(b"../some/where/\xff\xfe");
    std::os::unix::fs::symlink(target, dir.path().join("l")).unwrap();
    let RealServer {
        client,
        child: _child,
    } = start(dir.path(), &[], Limits::default()).await;
    assert_eq!(
        client.read_link(&bytes(&dir.path().join("l"))).await.unwrap(),
        target.as_bytes()
    );
}

#[tokio::test]
async fn files_read_byte_for_byte_empty_one_byte_a_mebibyte_and_17_and_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(1 << 20) + 17)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    std::fs::write(dir.path().join("one"), b"1").unwrap();
    std::fs::write(dir.path().join("big"), &big).unwrap();
    let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
    sparse.set_len(3 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"middle", 1 << 20).unwrap();
    drop(sparse);
    let RealServer {
        client,
        child: _child,
    } = start(dir.path(), &[], Limits::default()).await;
    for name in ["empty", "one", "big", "sparse"] {
        let p = dir.path().join(name);
        let want = std::fs::read(&p).unwrap();
        assert_eq!(read_all(&client, &bytes(&p), want.len()).await, want, "{name}");
    }
}

#[tokio::test]
async fn many_reads_outstanding_at_once_each_get_their_own_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = 32 * 1024usize;
    let count = 200usize;
    let data: Vec<u8> = (0..chunk * count)
        .map(|i| (i / 7) as u8 ^ (i >> 15) as u8)
        .collect();
    std::fs::write(dir.path().join("f"), &data).unwrap();
    // Fewer slots than reads: the rest queue.
    let limits = Limits {
        max_outstanding: 16,
        ..Limits::default()
    };
    let RealServer {
        client,
        child: _child,
    } = start(dir.path(), &[], limits).await;
    let h = std::sync::Arc::new(client.open_read(&bytes(&dir.path().join("f"))).await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let (c, h) = (client.clone(), h.clone());
        tasks.spawn(async move { (i, c.read(&h, (i * chunk) as u64, chunk as u32).await) });
    }
    let mut seen = 0;
    while let Some(r) = tasks.join_next().await {
        let (i, got) = r.unwrap();
        assert_eq!(
            got.unwrap(),
            ReadData::Bytes(data[i * chunk..(i + 1) * chunk].to_vec()),
            "chunk {i}"
        );
        seen += 1;
    }
    assert_eq!(seen, count);
}

#[tokio::test]
async fn names_that_are_not_utf8_list_stat_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let name: &[u8] = b"caf\xe9 \xff\x01name";
    std::fs::write(dir.path().join(OsStr::from_bytes(name)), b"latin-1").unwrap();
    let RealServer {
        client,
        child: _child,
    } = start(dir.path(), &[], Limits::default()).await;
    let listed = client.read_dir(&bytes(dir.path())).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, name);
    let mut path = bytes(dir.path());
    path.push(b'/');
    path.extend_from_slice(name);
    assert_eq!(client.lstat(&path).await.unwrap().size, Some(7));
    assert_eq!(read_all(&client, &path, 7).await, b"latin-1");
}

#[tokio::test]
async fn the_write_side_creates_what_std_fs_then_sees() {
    let dir = tempfile::tempdir().unwrap();
    let RealServer {
        client,
        child: _child,
    } = start(dir.path(), &[], Limits::default()).await;
    assert!(
        client.extensions().hardlink(),
        "OpenSSH announces hardlink@openssh.com"
    );
    let at = |n: &str| bytes(&dir.path().join(n));

    client
        .mkdir(
            &at("d"),
            &Attrs {
                permissions: Some(0o750),
                ..Attrs::default()
            },
        )
        .await
        .unwrap();
    let md = std::fs::metadata(dir.path().join("d")).unwrap();
    assert!(md.is_dir());
    assert_eq!(md.mode() & 0o7777, 0o750 & !current_umask());

    // More than one WRITE's worth, so the split is exercised.
    let data: Vec<u8> = (0..client.max_write() as usize * 2 + 5)
        .map(|i| i as u8)
        .collect();
    let h = client
        .open_write(
            &at("d/f"),
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            &Attrs::default(),
        )
        .await
        .unwrap();
    client.write(&h, 0, &data).await.unwrap();
    client.close(h).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("d/f")).unwrap(), data);

    client.symlink(&at("d/link"), b"f").await.unwrap();
    assert_eq!(
        std::fs::read_link(dir.path().join("d/link")).unwrap(),
        Path::new("f")
    );

    client.hardlink(&at("d/f"), &at("d/hard")).await.unwrap();
    let (a, b) = (
        std::fs::metadata(dir.path().join("d/f")).unwrap(),
        std::fs::metadata(dir.path().join("d/hard")).unwrap(),
    );
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    assert_eq!(a.nlink(), 2);

    let set = Attrs {
        permissions: Some(0o604),
        atime: Some(1_000_000),
        mtime: Some(1_234_567_890),
        ..Attrs::default()
    };
    client.setstat(&at("d/f"), &set).await.unwrap();
    let md = std::fs::metadata(dir.path().join("d/f")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o604);
    assert_eq!(md.mtime(), 1_234_567_890);
    assert_eq!(md.atime(), 1_000_000);

    client
        .posix_rename(&at("d/hard"), &at("d/renamed"))
        .await
        .unwrap();
    assert!(dir.path().join("d/renamed").exists() && !dir.path().join("d/hard").exists());
    client.remove(&at("d/renamed")).await.unwrap();
    client.remove(&at("d/link")).await.unwrap();
    client.remove(&at("d/f")).await.unwrap();
    client.rmdir(&at("d")).await.unwrap();
    assert!(!dir.path().join("d").exists());
}

fn current_umask() -> u32 {
    // sftp-server applies its umask (inherited from us) to mkdir's mode; read ours from /proc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("Umask:"))
        .expect("Umask in /proc/self/status");
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

#[tokio::test]
async fn a_read_only_server_refuses_writes_with_permission_denied_and_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"data").unwrap();
    let RealServer {
        client,
        child: _child,
    } = start(dir.path(), &["-R"], Limits::default()).await;
    let at = |n: &str| bytes(&dir.path().join(n));
    let refused = [
        client.mkdir(&at("d"), &Attrs::default()).await.unwrap_err(),
        client
            .open_write(
                &at("new"),
                OpenFlags::WRITE | OpenFlags::CREATE,
                &Attrs::default(),
            )
            .await
            .unwrap_err(),
        client.remove(&at("f")).await.unwrap_err(),
        client.symlink(&at("l"), b"f").await.unwrap_err(),
        client
            .setstat(
                &at("f"),
                &Attrs {
                    permissions: Some(0o600),
                    ..Attrs::default()
                },
            )
            .await
            .unwrap_err(),
    ];
    for err in refused {
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
        assert_eq!(err.to_errno(), libc::EACCES);
    }
    assert!(!dir.path().join("d").exists() && !dir.path().join("new").exists());
    assert_eq!(read_all(&client, &at("f"), 4).await, b"data");
}

#[tokio::test]
async fn the_servers_limits_extension_sizes_reads() {
    let dir = tempfile::tempdir().unwrap();
    let RealServer {
        client,
        child: _child,
    } = start(
        dir.path(),
        &[],
        Limits {
            max_read: 1 << 20,
            ..Limits::default()
        },
    )
    .await;
    let server = client
        .server_limits()
        .expect("OpenSSH 8.6+ offers limits@openssh.com");
    assert!(server.max_read > 0);
    assert_eq!(u64::from(client.max_read()), server.max_read.min(1 << 20));
}

#[tokio::test]
async fn shutdown_closes_the_stream_and_sftp_server_exits() {
    let dir = tempfile::tempdir().unwrap();
    let RealServer { client, mut child } = start(dir.path(), &[], Limits::default()).await;
    client.lstat(&bytes(dir.path())).await.unwrap();
    client.shutdown().await.unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait())
        .await
        .expect("sftp-server exits on EOF")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
