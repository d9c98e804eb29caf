//! Each bound against an in-process server that breaks it, one named test per bound.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use borg_pull_sftp::{Bound, Error, Limits, Op, ReadData, Violation};

use crate::peer::*;

fn violation(e: &Error) -> &Violation {
    match e {
        Error::Protocol { violation } => violation,
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

fn limits() -> Limits {
    Limits::default()
}

#[tokio::test]
async fn a_packet_longer_than_max_packet_ends_the_session_before_its_body_is_read() {
    let max_packet = 64 * 1024;
    let (client, server) = client(
        Limits {
            max_packet,
            ..limits()
        },
        |mut p| async move {
            p.version().await;
            let r = p.expect(LSTAT).await;
            // Only the header of a 4 GiB reply: a client that allocated or read the body would wait
            // for bytes that never come (until its deadline), not fail at once.
            let mut head = 0xFFFF_FFF0u32.to_be_bytes().to_vec();
            head.push(ATTRS);
            head.extend(r.id.to_be_bytes());
            p.raw(&head).await;
            p
        },
    )
    .await;
    let err = client.lstat(b"/x").await.unwrap_err();
    assert_eq!(
        violation(&err),
        &Violation::PacketTooLong {
            len: 0xFFFF_FFF0,
            max: max_packet
        }
    );
    assert!(err.ends_session());
    // The session is over: later calls fail at once with the same error.
    let again = client.lstat(b"/y").await.unwrap_err();
    assert_eq!(violation(&again), violation(&err));
    server.await.unwrap();
}

#[tokio::test]
async fn a_packet_too_short_for_a_reply_ends_the_session() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        p.expect(LSTAT).await;
        p.raw(&[0, 0, 0, 1, STATUS]).await;
        p
    })
    .await;
    let err = client.lstat(b"/x").await.unwrap_err();
    assert_eq!(violation(&err), &Violation::PacketTooShort { len: 1 });
}

#[tokio::test]
async fn a_reply_to_an_unknown_id_fails_every_outstanding_request_with_the_same_error() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        let a = p.expect(LSTAT).await;
        let b = p.expect(LSTAT).await;
        let bogus = a.id.max(b.id) + 1000;
        p.size_attrs(bogus, 1).await;
        p
    })
    .await;
    let (ra, rb) = tokio::join!(client.lstat(b"/a"), client.lstat(b"/b"));
    let (ea, eb) = (ra.unwrap_err(), rb.unwrap_err());
    assert!(
        matches!(
            violation(&ea),
            Violation::UnknownId {
                packet_type: ATTRS,
                ..
            }
        ),
        "{ea:?}"
    );
    assert_eq!(violation(&ea), violation(&eb));
}

#[tokio::test]
async fn a_reply_of_the_wrong_type_ends_the_session() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        let r = p.expect(READLINK).await;
        p.size_attrs(r.id, 1).await;
        p
    })
    .await;
    let err = client.read_link(b"/l").await.unwrap_err();
    assert_eq!(
        violation(&err),
        &Violation::UnexpectedType {
            op: Op::Readlink,
            packet_type: ATTRS
        }
    );
}

#[tokio::test]
async fn attributes_cut_short_are_malformed() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        let r = p.expect(LSTAT).await;
        // SIZE announced, 4 of its 8 bytes sent.
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend([0, 0, 0, 1]);
        p.reply(ATTRS, r.id, &b).await;
        p
    })
    .await;
    let err = client.lstat(b"/x").await.unwrap_err();
    assert_eq!(
        violation(&err),
        &Violation::Malformed {
            packet_type: ATTRS,
            field: "size"
        }
    );
}

#[tokio::test]
async fn a_name_whose_length_runs_past_its_packet_is_malformed() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        p.opendir().await;
        let r = p.expect(READDIR).await;
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend(1000u32.to_be_bytes());
        b.extend(b"short, and more bytes to pass the count check");
        p.reply(NAME, r.id, &b).await;
        p
    })
    .await;
    let err = client.read_dir(b"/d").await.unwrap_err();
    assert_eq!(
        violation(&err),
        &Violation::Malformed {
            packet_type: NAME,
            field: "filename"
        }
    );
}

#[tokio::test]
async fn bytes_left_over_after_the_last_field_are_malformed() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        let r = p.expect(LSTAT).await;
        p.reply(ATTRS, r.id, &[0, 0, 0, 0, 42]).await;
        p
    })
    .await;
    let err = client.lstat(b"/x").await.unwrap_err();
    assert_eq!(
        violation(&err),
        &Violation::Malformed {
            packet_type: ATTRS,
            field: "reply"
        }
    );
}

#[tokio::test]
async fn attribute_flags_unknown_to_v3_end_the_session() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        let r = p.expect(LSTAT).await;
        p.reply(ATTRS, r.id, &0x100u32.to_be_bytes()).await;
        p
    })
    .await;
    let err = client.lstat(b"/x").await.unwrap_err();
    assert_eq!(violation(&err), &Violation::UnknownAttrFlags { flags: 0x100 });
}

/// One listing with `names` then EOF; returns what read_dir made of it.
async fn list(names: &'static [&'static [u8]]) -> Result<Vec<Vec<u8>>, Error> {
    let (client, _server) = client(limits(), move |mut p| async move {
        p.version().await;
        p.opendir().await;
        let r = p.expect(READDIR).await;
        p.names(r.id, names).await;
        if let Some(r) = p.request().await {
            if r.ty == READDIR {
                p.status(r.id, 1).await;
                let r = p.expect(CLOSE).await;
                p.status(r.id, 0).await;
            } else {
                assert_eq!(r.ty, CLOSE);
                p.status(r.id, 0).await;
            }
        }
        p
    })
    .await;
    client
        .read_dir(b"/d")
        .await
        .map(|v| v.into_iter().map(|e| e.name).collect())
}

#[tokio::test]
async fn a_name_with_a_slash_is_refused() {
    let err = list(&[b"ok", b"../../etc/passwd"]).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadName { name, reason: "contains '/'", .. } if name == b"../../etc/passwd"),
        "{err:?}"
    );
    assert_eq!(err.to_errno(), libc::EIO);
}

#[tokio::test]
async fn a_name_with_a_nul_byte_is_refused() {
    let err = list(&[b"a\0b"]).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::BadName {
                reason: "contains a NUL byte",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_empty_name_is_refused() {
    let err = list(&[b""]).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::BadName {
                reason: "is empty",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn dot_and_dot_dot_are_dropped_and_the_other_names_kept() {
    let names = list(&[b".", b"..", b"a", b"b"]).await.unwrap();
    assert_eq!(names, [b"a".to_vec(), b"b".to_vec()]);
}

#[tokio::test]
async fn a_name_longer_than_max_name_len_is_refused() {
    static LONG: [&[u8]; 1] = [&[b'n'; 300]];
    let err = list(&LONG).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooBig {
                bound: Bound::NameLength,
                limit: 255,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_errno(), libc::ENAMETOOLONG);
}

#[tokio::test]
async fn an_endless_listing_stops_at_max_dir_entries() {
    let max = 50;
    let (client, server) = client(
        Limits {
            max_dir_entries: max,
            ..limits()
        },
        |mut p| async move {
            p.version().await;
            p.opendir().await;
            // Never EOF: one new name per READDIR, until the client gives up and closes.
            for n in 0..10_000u32 {
                let r = p.request().await.expect("a request");
                if r.ty == CLOSE {
                    p.status(r.id, 0).await;
                    // READDIRs answered before this CLOSE.
                    return n;
                }
                assert_eq!(r.ty, READDIR);
                let name = format!("f{n}");
                p.names(r.id, &[name.as_bytes()]).await;
            }
            panic!("the client never stopped listing");
        },
    )
    .await;
    let err = client.read_dir(b"/d").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooBig {
                bound: Bound::DirEntries,
                limit: 50,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        server.await.unwrap(),
        max as u32 + 1,
        "READDIRs before the bound stopped it"
    );
}

#[tokio::test]
async fn an_endless_listing_of_only_dots_stops_too() {
    let (client, server) = client(
        Limits {
            max_dir_entries: 10,
            ..limits()
        },
        |mut p| async move {
            p.version().await;
            p.opendir().await;
            for _ in 0..10_000u32 {
                let r = p.request().await.expect("a request");
                if r.ty == CLOSE {
                    p.status(r.id, 0).await;
                    return;
                }
                p.names(r.id, &[b".", b".."]).await;
            }
            panic!("the client never stopped listing");
        },
    )
    .await;
    let err = client.read_dir(b"/d").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooBig {
                bound: Bound::DirEntries,
                ..
            }
        ),
        "{err:?}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_listing_reply_without_entries_ends_the_session() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        p.opendir().await;
        let r = p.expect(READDIR).await;
        p.names(r.id, &[]).await;
        p
    })
    .await;
    let err = client.read_dir(b"/d").await.unwrap_err();
    assert_eq!(violation(&err), &Violation::EmptyName);
}

#[tokio::test]
async fn a_link_target_longer_than_max_link_len_is_refused() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        let r = p.expect(READLINK).await;
        p.names(r.id, &[&[b'x'; 5000]]).await;
        p
    })
    .await;
    let err = client.read_link(b"/l").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooBig {
                bound: Bound::LinkLength,
                limit: 4095,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.ends_session());
}

#[tokio::test]
async fn a_readlink_reply_with_two_names_ends_the_session() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        let r = p.expect(READLINK).await;
        p.names(r.id, &[b"a", b"b"]).await;
        p
    })
    .await;
    let err = client.read_link(b"/l").await.unwrap_err();
    assert_eq!(
        violation(&err),
        &Violation::NameCount {
            op: Op::Readlink,
            count: 2
        }
    );
}

#[tokio::test]
async fn a_handle_longer_than_256_bytes_ends_the_session() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        let r = p.expect(OPEN).await;
        p.handle(r.id, &[7; 257]).await;
        p
    })
    .await;
    let err = client.open_read(b"/f").await.unwrap_err();
    assert_eq!(violation(&err), &Violation::HandleTooLong { len: 257 });
}

#[tokio::test]
async fn a_read_answered_with_more_than_asked_ends_the_session() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        let r = p.expect(OPEN).await;
        p.handle(r.id, b"h").await;
        let r = p.expect(READ).await;
        let asked = r.read_len();
        p.reply(DATA, r.id, &string(&vec![1; asked as usize + 1])).await;
        p
    })
    .await;
    let h = client.open_read(b"/f").await.unwrap();
    let err = client.read(&h, 0, 100).await.unwrap_err();
    assert_eq!(
        violation(&err),
        &Violation::DataTooLong {
            requested: 100,
            got: 101
        }
    );
}

#[tokio::test]
async fn a_data_length_that_disagrees_with_its_packet_ends_the_session() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        let r = p.expect(OPEN).await;
        p.handle(r.id, b"h").await;
        let r = p.expect(READ).await;
        let mut b = 10u32.to_be_bytes().to_vec();
        b.extend([0; 4]);
        p.reply(DATA, r.id, &b).await;
        p
    })
    .await;
    let h = client.open_read(b"/f").await.unwrap();
    let err = client.read(&h, 0, 100).await.unwrap_err();
    assert_eq!(
        violation(&err),
        &Violation::Malformed {
            packet_type: DATA,
            field: "data"
        }
    );
}

#[tokio::test]
async fn reads_are_cut_to_the_servers_announced_max_read() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version_with(3, &[("limits@openssh.com", "1")]).await;
        let r = p.expect(EXTENDED).await;
        assert_eq!(r.first_string(), b"limits@openssh.com");
        let mut b = Vec::new();
        for v in [4096u64, 1000, 1000, 8] {
            b.extend(v.to_be_bytes());
        }
        p.reply(EXTENDED_REPLY, r.id, &b).await;
        let r = p.expect(OPEN).await;
        p.handle(r.id, b"h").await;
        let r = p.expect(READ).await;
        let asked = r.read_len();
        p.reply(DATA, r.id, &string(&vec![3; asked as usize])).await;
        asked
    })
    .await;
    assert_eq!(client.max_read(), 1000);
    let h = client.open_read(b"/f").await.unwrap();
    assert_eq!(
        client.read(&h, 0, 65536).await.unwrap(),
        ReadData::Bytes(vec![3; 1000])
    );
    assert_eq!(_server.await.unwrap(), 1000);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_server_hits_the_deadline_and_its_late_reply_is_dropped() {
    let timeout = Duration::from_secs(30);
    let (client, _server) = client(
        Limits {
            request_timeout: timeout,
            ..limits()
        },
        |mut p| async move {
            p.version().await;
            let first = p.expect(LSTAT).await;
            // Stall: no answer until the client has given up and asked again.
            let second = p.expect(LSTAT).await;
            p.size_attrs(first.id, 1).await;
            p.size_attrs(second.id, 2).await;
            p
        },
    )
    .await;
    let err = client.lstat(b"/slow").await.unwrap_err();
    match &err {
        Error::Deadline { request, timeout: t } => {
            assert_eq!(request.op, Op::Lstat);
            assert_eq!(request.path, b"/slow");
            assert_eq!(*t, timeout);
        }
        other => panic!("expected a deadline, got {other:?}"),
    }
    assert_eq!(err.to_errno(), libc::ETIMEDOUT);
    let message = err.to_string();
    assert!(
        message.contains(r#"lstat "/slow""#) && message.contains("stalls"),
        "{message}"
    );
    assert_eq!(client.lstat(b"/next").await.unwrap().size, Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_answers_keeps_its_slots_so_abandoned_requests_stay_bounded() {
    let (client, server) = client(
        Limits {
            max_outstanding: 2,
            ..limits()
        },
        |mut p| async move {
            p.version().await;
            let mut seen = 0;
            while let Some(_r) = p.request().await {
                seen += 1;
            }
            seen
        },
    )
    .await;
    for _ in 0..5 {
        assert!(matches!(client.lstat(b"/x").await, Err(Error::Deadline { .. })));
    }
    drop(client);
    // Two requests reached the server; the other three waited for a slot until their deadline.
    assert_eq!(server.await.unwrap(), 2);
}

#[tokio::test]
async fn a_server_that_closes_mid_request_fails_it_as_closed() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        p.expect(LSTAT).await;
        drop(p);
    })
    .await;
    let err = client.lstat(b"/x").await.unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err:?}");
    assert!(matches!(client.lstat(b"/y").await, Err(Error::Closed { .. })));
}

#[tokio::test]
async fn a_server_that_closes_mid_packet_fails_it_as_closed() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        let r = p.expect(LSTAT).await;
        let mut b = 100u32.to_be_bytes().to_vec();
        b.push(ATTRS);
        b.extend(r.id.to_be_bytes());
        b.extend([0, 0]);
        p.raw(&b).await;
        drop(p);
    })
    .await;
    let err = client.lstat(b"/x").await.unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn more_requests_than_max_outstanding_queue_instead_of_failing() {
    let max = 3;
    let total = 20u64;
    let (client, server) = client(
        Limits {
            max_outstanding: max,
            ..limits()
        },
        move |mut p| async move {
            p.version().await;
            let mut answered = 0u64;
            let mut most = 0;
            for _round in 0..total {
                let mut held = Vec::new();
                while held.len() < max && answered + (held.len() as u64) < total {
                    held.push(p.expect(LSTAT).await);
                }
                most = most.max(held.len());
                if held.len() == max {
                    // Paused time advances only when every task is idle: if the client could send
                    // another request now, it would arrive before this probe times out.
                    let probe = tokio::time::timeout(Duration::from_secs(1), p.io.read_u8()).await;
                    assert!(probe.is_err(), "a request beyond max_outstanding was sent");
                }
                for r in held.drain(..) {
                    let path = r.first_string();
                    let size: u64 = std::str::from_utf8(&path[1..]).unwrap().parse().unwrap();
                    p.size_attrs(r.id, size).await;
                    answered += 1;
                }
                if answered == total {
                    break;
                }
            }
            most
        },
    )
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let c = client.clone();
        tasks.spawn(async move { (i, c.lstat(format!("/{i}").as_bytes()).await) });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        let (i, attrs) = r.unwrap();
        assert_eq!(attrs.unwrap().size, Some(i));
        done += 1;
    }
    assert_eq!(done, total);
    assert_eq!(server.await.unwrap(), max);
}

#[tokio::test]
async fn a_first_packet_that_is_not_version_is_refused() {
    let (client, _server) = connect(limits(), 4096, |mut p| async move {
        let len = tokio::io::AsyncReadExt::read_u32(&mut p.io).await.unwrap();
        let mut init = vec![0; len as usize];
        tokio::io::AsyncReadExt::read_exact(&mut p.io, &mut init)
            .await
            .unwrap();
        p.packet(STATUS, Some(0), &[0; 4]).await;
        p
    })
    .await;
    let err = client.err().expect("refused");
    assert_eq!(violation(&err), &Violation::NotVersion { packet_type: STATUS });
}

#[tokio::test]
async fn a_server_below_version_3_is_refused() {
    let (client, _server) = connect(limits(), 4096, |mut p| async move {
        p.version_with(2, &[]).await;
        p
    })
    .await;
    assert!(matches!(
        client.err(),
        Some(Error::UnsupportedVersion { version: 2 })
    ));
}

#[tokio::test]
async fn too_many_extensions_are_refused() {
    let (client, _server) = connect(
        Limits {
            max_extensions: 2,
            ..limits()
        },
        4096,
        |mut p| async move {
            p.version_with(3, &[("a", "1"), ("b", "1"), ("c", "1")]).await;
            p
        },
    )
    .await;
    assert_eq!(
        violation(&client.err().expect("refused")),
        &Violation::TooManyExtensions { max: 2 }
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_sends_version_hits_the_deadline() {
    let (client, _server) = connect(limits(), 4096, |p| async move {
        // Holds the stream open, says nothing.
        std::future::pending::<()>().await;
        drop(p);
    })
    .await;
    assert!(matches!(client.err(), Some(Error::Deadline { request, .. }) if request.op == Op::Init));
}

#[tokio::test]
async fn tiny_duplex_buffers_split_every_packet_and_replies_still_parse() {
    let (client, _server) = connect(limits(), 3, |mut p| async move {
        p.version().await;
        let r = p.expect(LSTAT).await;
        p.size_attrs(r.id, 12345).await;
        p
    })
    .await;
    assert_eq!(client.unwrap().lstat(b"/x").await.unwrap().size, Some(12345));
}

#[tokio::test]
async fn dropping_the_last_clone_closes_the_stream() {
    let (client, server) = client(limits(), |mut p| async move {
        p.version().await;
        let r = p.expect(LSTAT).await;
        p.size_attrs(r.id, 1).await;
        // EOF once the client is gone (the test's own timeout would catch a hang).
        p.request().await.is_none()
    })
    .await;
    let other = client.clone();
    assert_eq!(other.lstat(b"/x").await.unwrap().size, Some(1));
    drop(client);
    drop(other);
    assert!(tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("stream closed")
        .unwrap());
}

#[tokio::test]
async fn shutdown_fails_the_other_clones_at_once() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version().await;
        p.request().await.is_none()
    })
    .await;
    let other = client.clone();
    client.shutdown().await.unwrap();
    assert!(matches!(other.lstat(b"/x").await, Err(Error::Shutdown)));
}

#[tokio::test]
async fn a_refused_limits_request_keeps_our_own_read_size() {
    let (client, _server) = client(limits(), |mut p| async move {
        p.version_with(3, &[("limits@openssh.com", "1")]).await;
        let r = p.expect(EXTENDED).await;
        p.status(r.id, 8).await;
        p
    })
    .await;
    assert_eq!(client.server_limits(), None);
    assert_eq!(client.max_read(), borg_pull_sftp::limits::UNANNOUNCED_MAX_READ);
    assert_eq!(client.max_write(), borg_pull_sftp::limits::UNANNOUNCED_MAX_WRITE);
}

#[tokio::test]
async fn reads_never_ask_for_more_than_max_packet_can_carry() {
    let (client, _server) = client(
        Limits {
            max_packet: 4096,
            ..limits()
        },
        |mut p| async move {
            p.version().await;
            p
        },
    )
    .await;
    assert_eq!(client.max_read(), 4096 - 13);
}

/// The FUSE mount awaits these futures on a multi-threaded runtime: they must be Send.
#[allow(dead_code)]
fn client_futures_are_send(c: borg_pull_sftp::Client, h: borg_pull_sftp::Handle) {
    fn send<T: Send>(_: T) {}
    send(c.lstat(b"/"));
    send(c.stat(b"/"));
    send(c.read_dir(b"/"));
    send(c.read_link(b"/"));
    send(c.open_read(b"/"));
    send(c.read(&h, 0, 1));
    send(c.clone().close(h.clone()));
    send(c.write(&h, 0, b"x"));
    send(c.shutdown());
}

#[tokio::test(start_paused = true)]
async fn writes_are_pipelined_up_to_the_window_and_no_further() {
    let window = borg_pull_sftp::limits::WRITE_WINDOW;
    let pieces = window + 4;
    let (client, server) = client(
        Limits {
            max_write: 1000,
            ..limits()
        },
        move |mut p| async move {
            p.version().await;
            let r = p.expect(OPEN).await;
            p.handle(r.id, b"h").await;
            let mut offsets = Vec::new();
            let mut held = Vec::new();
            for _ in 0..window {
                // A client that waited for each reply would never send the second: the probe's
                // paused-time timeout turns that into a failure instead of a hang.
                let r = tokio::time::timeout(Duration::from_secs(1), p.expect(WRITE))
                    .await
                    .expect("pipelined");
                held.push(r);
            }
            let probe = tokio::time::timeout(Duration::from_secs(1), p.io.read_u8()).await;
            assert!(probe.is_err(), "a WRITE beyond the window was sent");
            for _ in 0..pieces {
                if held.is_empty() {
                    held.push(p.expect(WRITE).await);
                }
                let r = held.remove(0);
                let n = u32::from_be_bytes(r.body[..4].try_into().unwrap()) as usize;
                offsets.push(u64::from_be_bytes(r.body[4 + n..12 + n].try_into().unwrap()));
                p.status(r.id, 0).await;
            }
            offsets
        },
    )
    .await;
    let h = client
        .open_write(b"/f", borg_pull_sftp::OpenFlags::WRITE, &Default::default())
        .await
        .unwrap();
    client.write(&h, 5, &vec![9; pieces * 1000]).await.unwrap();
    let want: Vec<u64> = (0..pieces as u64).map(|i| 5 + i * 1000).collect();
    assert_eq!(server.await.unwrap(), want);
}

#[tokio::test]
async fn a_refused_write_fails_the_whole_write() {
    let (client, _server) = client(
        Limits {
            max_write: 10,
            ..limits()
        },
        |mut p| async move {
            p.version().await;
            let r = p.expect(OPEN).await;
            p.handle(r.id, b"h").await;
            let first = p.expect(WRITE).await;
            p.status(first.id, 0).await;
            let second = p.expect(WRITE).await;
            p.status(second.id, 4).await;
            // The rest may be in flight; answer whatever comes until the client closes.
            while let Some(r) = p.request().await {
                p.status(r.id, 0).await;
            }
        },
    )
    .await;
    let h = client
        .open_write(b"/f", borg_pull_sftp::OpenFlags::WRITE, &Default::default())
        .await
        .unwrap();
    let err = client.write(&h, 0, &[1; 45]).await.unwrap_err();
    assert!(
        matches!(&err, Error::Failure { request, .. } if request.op == Op::Write && request.path == b"/f"),
        "{err:?}"
    );
}
