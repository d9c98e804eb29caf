//! An in-process SFTP server the tests script case by case, to send what a real one never does.

use std::future::Future;

use borg_pull_sftp::{Client, Error, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

pub const STATUS: u8 = 101;
pub const HANDLE: u8 = 102;
pub const DATA: u8 = 103;
pub const NAME: u8 = 104;
pub const ATTRS: u8 = 105;
pub const EXTENDED_REPLY: u8 = 201;

pub const OPEN: u8 = 3;
pub const CLOSE: u8 = 4;
pub const READ: u8 = 5;
pub const WRITE: u8 = 6;
pub const LSTAT: u8 = 7;
pub const OPENDIR: u8 = 11;
pub const READDIR: u8 = 12;
pub const READLINK: u8 = 19;
pub const EXTENDED: u8 = 200;

/// A request as the scripted server received it.
#[derive(Debug)]
pub struct Req {
    pub ty: u8,
    pub id: u32,
    pub body: Vec<u8>,
}

impl Req {
    /// The first string field (the path or handle of most requests).
    pub fn first_string(&self) -> Vec<u8> {
        let n = u32::from_be_bytes(self.body[..4].try_into().unwrap()) as usize;
        self.body[4..4 + n].to_vec()
    }

    /// READ's length field (after handle and offset).
    pub fn read_len(&self) -> u32 {
        let n = u32::from_be_bytes(self.body[..4].try_into().unwrap()) as usize;
        let at = 4 + n + 8;
        u32::from_be_bytes(self.body[at..at + 4].try_into().unwrap())
    }
}

/// Length-prefixed bytes.
pub fn string(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// One NAME entry: the name, an empty longname, attributes with only a size.
pub fn entry(name: &[u8]) -> Vec<u8> {
    let mut v = string(name);
    v.extend(string(b""));
    v.extend(1u32.to_be_bytes());
    v.extend(7u64.to_be_bytes());
    v
}

/// The server's end of the duplex.
pub struct Peer {
    pub io: DuplexStream,
}

impl Peer {
    /// Reads INIT and answers VERSION `version` with `extensions`.
    pub async fn version_with(&mut self, version: u32, extensions: &[(&str, &str)]) {
        let len = self.io.read_u32().await.expect("INIT length");
        let mut init = vec![0; len as usize];
        self.io.read_exact(&mut init).await.expect("INIT");
        assert_eq!(init[0], 1, "first packet is INIT");
        let mut body = version.to_be_bytes().to_vec();
        for (n, d) in extensions {
            body.extend(string(n.as_bytes()));
            body.extend(string(d.as_bytes()));
        }
        self.packet(2, None, &body).await;
    }

    /// Reads INIT and answers VERSION 3 without extensions.
    pub async fn version(&mut self) {
        self.version_with(3, &[]).await;
    }

    /// The next request, or None when the client closed the stream.
    pub async fn request(&mut self) -> Option<Req> {
        let len = self.io.read_u32().await.ok()?;
        let mut buf = vec![0; len as usize];
        self.io.read_exact(&mut buf).await.ok()?;
        let id = u32::from_be_bytes(buf[1..5].try_into().unwrap());
        Some(Req {
            ty: buf[0],
            id,
            body: buf[5..].to_vec(),
        })
    }

    /// The next request, which must come.
    pub async fn expect(&mut self, ty: u8) -> Req {
        let r = self.request().await.expect("a request");
        assert_eq!(r.ty, ty, "request type");
        r
    }

    /// A packet with a correct length: `id` is None only for VERSION.
    pub async fn packet(&mut self, ty: u8, id: Option<u32>, body: &[u8]) {
        let mut p = Vec::new();
        let len = 1 + id.map_or(0, |_| 4) + body.len();
        p.extend((len as u32).to_be_bytes());
        p.push(ty);
        if let Some(id) = id {
            p.extend(id.to_be_bytes());
        }
        p.extend_from_slice(body);
        self.raw(&p).await;
    }

    /// Bytes as they are, for lies about lengths.
    pub async fn raw(&mut self, bytes: &[u8]) {
        // The client may have ended the session already; what it does then is the test's subject.
        let _ = self.io.write_all(bytes).await;
        let _ = self.io.flush().await;
    }

    pub async fn reply(&mut self, ty: u8, id: u32, body: &[u8]) {
        self.packet(ty, Some(id), body).await;
    }

    pub async fn status(&mut self, id: u32, code: u32) {
        let mut b = code.to_be_bytes().to_vec();
        b.extend(string(b"msg"));
        b.extend(string(b""));
        self.reply(STATUS, id, &b).await;
    }

    pub async fn handle(&mut self, id: u32, h: &[u8]) {
        self.reply(HANDLE, id, &string(h)).await;
    }

    pub async fn names(&mut self, id: u32, names: &[&[u8]]) {
        let mut b = (names.len() as u32).to_be_bytes().to_vec();
        for n in names {
            b.extend(entry(n));
        }
        self.reply(NAME, id, &b).await;
    }

    pub async fn size_attrs(&mut self, id: u32, size: u64) {
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend(size.to_be_bytes());
        self.reply(ATTRS, id, &b).await;
    }

    /// Answers OPENDIR with a handle: the start of every listing case.
    pub async fn opendir(&mut self) {
        let r = self.expect(OPENDIR).await;
        self.handle(r.id, b"dir").await;
    }
}

/// Starts a client on a duplex whose other end `script` plays. `buffer` is the duplex's
/// capacity: small values force partial reads and writes.
pub async fn connect<F, Fut>(
    limits: Limits,
    buffer: usize,
    script: F,
) -> (Result<Client, Error>, JoinHandle<Fut::Output>)
where
    F: FnOnce(Peer) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(buffer);
    let server = tokio::spawn(script(Peer { io: theirs }));
    let client = Client::start(ours, limits).await;
    (client, server)
}

/// Like [`connect`] with the default duplex size, for scripts that start with VERSION 3.
pub async fn client<F, Fut>(limits: Limits, script: F) -> (Client, JoinHandle<Fut::Output>)
where
    F: FnOnce(Peer) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let (c, s) = connect(limits, 64 * 1024, script).await;
    (c.expect("client started"), s)
}
