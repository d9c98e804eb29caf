//! A streaming reader of the tar borg export-tar writes (GNU format by default; PAX with
//! borg 1.4's `--tar-format=PAX`): one header at a time, each entry's data read in caller-sized
//! pieces, so memory is bounded whatever the archive's size.
//!
//! What it understands: ustar and GNU headers (octal and base-256 numbers, the ustar prefix),
//! GNU long names and link names (`L`, `K`), PAX extended headers (`x`: `path`, `linkpath`,
//! `size`, `mtime`, `uid`, `gid`; global `g` headers are skipped). Each header's checksum is
//! checked. Long names and PAX headers are read whole, so they are bounded
//! ([`TAR_LONG_NAME_MAX`], [`TAR_PAX_HEADER_MAX`]).

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::limits::{TAR_LONG_NAME_MAX, TAR_PAX_HEADER_MAX};

const BLOCK: usize = 512;

/// What is wrong with the stream.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// Reading borg's output failed.
    #[error("reading borg export-tar's output: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended inside an entry or without the end-of-archive blocks.
    #[error("borg export-tar's output ended before the end of the archive")]
    Truncated,
    /// A header whose checksum does not match.
    #[error("borg export-tar's output has a header with a bad checksum at byte {offset}")]
    Checksum {
        /// Where the header starts in the stream.
        offset: u64,
    },
    /// A header field that is not a number.
    #[error("borg export-tar's output has a header with a malformed {field} at byte {offset}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// Where the header starts in the stream.
        offset: u64,
    },
    /// A long name or PAX header above its bound.
    #[error("borg export-tar's output has a {what} of {size} bytes, above the limit of {limit}")]
    TooBig {
        /// Which.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The bound.
        limit: usize,
    },
}

/// The kind of one entry, with what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file; its data follows.
    File,
    /// A directory.
    Directory,
    /// A symlink and its target.
    Symlink(Vec<u8>),
    /// A hard link to the entry named (as in the archive).
    HardLink(Vec<u8>),
    /// What SFTP cannot create: devices, FIFOs; the name of the kind.
    Special(&'static str),
    /// A type flag this reader does not know; its data (if any) is skipped.
    Unknown(u8),
}

/// One entry's header, long names and PAX records applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The name as in the archive (bytes; checked by the caller).
    pub name: Vec<u8>,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (and setuid, setgid, sticky).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Bytes of data that follow (files only; others' data is skipped).
    pub size: u64,
}

/// Overrides from GNU long-name entries and PAX headers, for the next real header.
#[derive(Debug, Default)]
struct Pending {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
}

/// The reader: borg's stdout and where in it we are.
pub struct TarReader<R> {
    inner: R,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    /// Bytes consumed from the stream.
    offset: u64,
}

impl<R: AsyncRead + Unpin> TarReader<R> {
    /// A reader at the start of a stream.
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            offset: 0,
        }
    }

    /// The stream, to drain what follows the end of the archive.
    pub fn inner(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The next entry's header, skipping what is left of the current entry; `None` at the end of
    /// the archive (a zero block).
    pub async fn next_header(&mut self) -> Result<Option<Header>, TarError> {
        self.skip_rest().await?;
        let mut pending = Pending::default();
        // Each pass consumes a header block; a stream only holds so many before it ends.
        loop {
            let start = self.offset;
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block).await? {
                return Err(TarError::Truncated);
            }
            if block.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            check_sum(&block, start)?;
            let size = number(&block[124..136], "size", start)?;
            let flag = block[156];
            match flag {
                b'L' | b'K' => {
                    let mut data = self.read_whole(size, "long name", TAR_LONG_NAME_MAX).await?;
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    if flag == b'L' {
                        pending.name = Some(data);
                    } else {
                        pending.link = Some(data);
                    }
                }
                b'x' => {
                    let data = self.read_whole(size, "PAX header", TAR_PAX_HEADER_MAX).await?;
                    pax_records(&data, &mut pending, start)?;
                }
                b'g' => {
                    self.begin_data(size);
                    self.skip_rest().await?;
                }
                _ => return Ok(Some(self.entry(&block, flag, size, pending, start)?)),
            }
        }
    }

    fn entry(
        &mut self,
        block: &[u8; BLOCK],
        flag: u8,
        size: u64,
        p: Pending,
        start: u64,
    ) -> Result<Header, TarError> {
        let name = match p.name {
            Some(name) => name,
            None => {
                let name = cstr(&block[0..100]);
                let prefix = cstr(&block[345..500]);
                // Only POSIX ustar has a prefix; GNU's magic keeps other fields there.
                if &block[257..263] == b"ustar\0" && !prefix.is_empty() {
                    [prefix, b"/", name].concat()
                } else {
                    name.to_vec()
                }
            }
        };
        let link = p.link.unwrap_or_else(|| cstr(&block[157..257]).to_vec());
        let kind = match flag {
            b'0' | b'\0' | b'7' => Kind::File,
            b'1' => Kind::HardLink(link),
            b'2' => Kind::Symlink(link),
            b'3' => Kind::Special("character device"),
            b'4' => Kind::Special("block device"),
            b'5' => Kind::Directory,
            b'6' => Kind::Special("FIFO"),
            other => Kind::Unknown(other),
        };
        let size = p.size.unwrap_or(size);
        // A hard link's size field may be non-zero in some writers; its data is never there.
        let data = match kind {
            Kind::File | Kind::Unknown(_) => size,
            _ => 0,
        };
        self.begin_data(data);
        Ok(Header {
            name,
            kind,
            mode: number(&block[100..108], "mode", start)? as u32 & 0o7777,
            uid: match p.uid {
                Some(uid) => uid,
                None => number(&block[108..116], "uid", start)? as u32,
            },
            gid: match p.gid {
                Some(gid) => gid,
                None => number(&block[116..124], "gid", start)? as u32,
            },
            mtime: match p.mtime {
                Some(mtime) => mtime,
                None => number(&block[136..148], "mtime", start)?,
            },
            size: data,
        })
    }

    fn begin_data(&mut self, size: u64) {
        self.remaining = size;
        self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
    }

    /// Reads up to `buf.len()` bytes of the current entry's data (less only at its end); 0 when
    /// it is all read.
    pub async fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let mut filled = 0;
        while filled < want {
            let n = self.inner.read(&mut buf[filled..want]).await?;
            if n == 0 {
                return Err(TarError::Truncated);
            }
            filled += n;
        }
        self.remaining -= filled as u64;
        self.offset += filled as u64;
        Ok(filled)
    }

    async fn skip_rest(&mut self) -> Result<(), TarError> {
        let skip = self.remaining + self.padding;
        if skip > 0 {
            let copied = tokio::io::copy(&mut (&mut self.inner).take(skip), &mut tokio::io::sink()).await?;
            self.offset += copied;
            if copied < skip {
                return Err(TarError::Truncated);
            }
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }

    async fn read_whole(&mut self, size: u64, what: &'static str, limit: usize) -> Result<Vec<u8>, TarError> {
        if size > limit as u64 {
            return Err(TarError::TooBig { what, size, limit });
        }
        let mut data = vec![0; size as usize];
        self.begin_data(size);
        let n = self.read_data(&mut data).await?;
        debug_assert_eq!(n, data.len());
        self.skip_rest().await?;
        Ok(data)
    }

    /// Reads one block; `false` at a clean EOF before its first byte.
    async fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < BLOCK {
            let n = self.inner.read(&mut block[filled..]).await?;
            if n == 0 {
                return if filled == 0 {
                    Ok(false)
                } else {
                    Err(TarError::Truncated)
                };
            }
            filled += n;
        }
        self.offset += BLOCK as u64;
        Ok(true)
    }
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn check_sum(block: &[u8; BLOCK], offset: u64) -> Result<(), TarError> {
    let stored = number(&block[148..156], "checksum", offset)?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    if sum == stored {
        Ok(())
    } else {
        Err(TarError::Checksum { offset })
    }
}

/// An octal field (spaces and NULs around it), or GNU's base-256 (first byte's high bit set).
fn number(field: &[u8], name: &'static str, offset: u64) -> Result<u64, TarError> {
    let bad = || TarError::Malformed { field: name, offset };
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256).ok_or_else(bad)? | u64::from(b);
        }
        return Ok(value);
    }
    let digits: &[u8] = {
        let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
        let rest = &field[start..];
        let end = rest
            .iter()
            .position(|&b| b == b' ' || b == 0)
            .unwrap_or(rest.len());
        &rest[..end]
    };
    digits.iter().try_fold(0u64, |acc, &d| match d {
        b'0'..=b'7' => acc
            .checked_mul(8)
            .map(|v| v + u64::from(d - b'0'))
            .ok_or_else(bad),
        _ => Err(bad()),
    })
}

/// PAX records: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn pax_records(data: &[u8], p: &mut Pending, offset: u64) -> Result<(), TarError> {
    let bad = || TarError::Malformed {
        field: "PAX record",
        offset,
    };
    let mut rest = data;
    while !rest.is_empty() && rest[0] != 0 {
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let decimal = |v: &[u8]| -> Result<u64, TarError> {
            // mtime may carry a fraction: whole seconds are what SFTP sets.
            let whole = v.split(|&b| b == b'.').next().unwrap_or_default();
            std::str::from_utf8(whole)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)
        };
        match key {
            b"path" => p.name = Some(value.to_vec()),
            b"linkpath" => p.link = Some(value.to_vec()),
            b"size" => p.size = Some(decimal(value)?),
            b"mtime" => p.mtime = Some(decimal(value)?),
            b"uid" => p.uid = Some(u32::try_from(decimal(value)?).map_err(|_| bad())?),
            b"gid" => p.gid = Some(u32::try_from(decimal(value)?).map_err(|_| bad())?),
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ustar/GNU header block for tests.
    pub(crate) fn header(name: &[u8], flag: u8, size: u64, link: &[u8], gnu: bool) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..name.len()].copy_from_slice(name);
        b[100..107].copy_from_slice(b"0000644");
        b[108..115].copy_from_slice(b"0001750");
        b[116..123].copy_from_slice(b"0001751");
        b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        b[136..147].copy_from_slice(b"14361466130");
        b[156] = flag;
        b[157..157 + link.len()].copy_from_slice(link);
        if gnu {
            b[257..265].copy_from_slice(b"ustar  \0");
        } else {
            b[257..263].copy_from_slice(b"ustar\0");
            b[263..265].copy_from_slice(b"00");
        }
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        b
    }

    /// An entry: header, data, padding.
    pub(crate) fn entry(name: &[u8], flag: u8, data: &[u8], link: &[u8]) -> Vec<u8> {
        let mut out = header(name, flag, data.len() as u64, link, true).to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }

    /// One PAX record, its length prefix counted.
    pub(crate) fn pax(key: &str, value: &[u8]) -> Vec<u8> {
        let body = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        [len.to_string().as_bytes(), &body].concat()
    }

    /// The end of an archive.
    pub(crate) fn end() -> Vec<u8> {
        vec![0; 2 * BLOCK]
    }

    async fn all(bytes: &[u8]) -> Result<Vec<(Header, Vec<u8>)>, TarError> {
        let mut r = TarReader::new(bytes);
        let mut out = Vec::new();
        while let Some(h) = r.next_header().await? {
            let mut data = Vec::new();
            let mut buf = [0u8; 7];
            loop {
                let n = r.read_data(&mut buf).await?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            out.push((h, data));
        }
        Ok(out)
    }

    #[tokio::test]
    async fn entries_long_names_and_pax_records_are_read() {
        let long = vec![b'n'; 300];
        let mut tar = entry(b"dir/", b'5', b"", b"");
        tar.extend(entry(
            b"././@LongLink",
            b'L',
            &[long.as_slice(), b"\0"].concat(),
            b"",
        ));
        tar.extend(entry(b"short", b'0', b"hello world", b""));
        tar.extend(entry(b"ln", b'2', b"", b"/etc"));
        tar.extend(entry(
            b"x",
            b'x',
            &[pax("path", b"caf\xe9 name"), pax("mtime", b"5.25")].concat(),
            b"",
        ));
        tar.extend(entry(b"ignored", b'1', b"", b"short"));
        tar.extend(entry(b"fifo", b'6', b"", b""));
        tar.extend(end());
        let got = all(&tar).await.unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got[0].0.kind, Kind::Directory);
        assert_eq!(got[0].0.uid, 0o1750);
        assert_eq!(got[1].0.name, long);
        assert_eq!(got[1].1, b"hello world");
        assert_eq!(got[1].0.mode, 0o644);
        assert_eq!(got[2].0.kind, Kind::Symlink(b"/etc".to_vec()));
        assert_eq!(got[3].0.name, b"caf\xe9 name");
        assert_eq!(got[3].0.mtime, 5);
        assert_eq!(got[3].0.kind, Kind::HardLink(b"short".to_vec()));
        assert_eq!(got[4].0.kind, Kind::Special("FIFO"));
    }

    #[tokio::test]
    async fn broken_streams_are_errors_not_panics() {
        let mut tar = entry(b"f", b'0', b"data", b"");
        tar[0] ^= 1;
        assert!(matches!(all(&tar).await, Err(TarError::Checksum { offset: 0 })));
        let tar = entry(b"f", b'0', b"data", b"");
        assert!(matches!(all(&tar[..600]).await, Err(TarError::Truncated)));
        assert!(
            matches!(all(&tar).await, Err(TarError::Truncated)),
            "no end blocks"
        );
        let huge = entry(b"L", b'L', &vec![b'a'; TAR_LONG_NAME_MAX + 1], b"");
        assert!(matches!(all(&huge).await, Err(TarError::TooBig { .. })));
        let huge = entry(b"x", b'x', &vec![b'a'; TAR_PAX_HEADER_MAX + 1], b"");
        assert!(matches!(
            all(&huge).await,
            Err(TarError::TooBig {
                what: "PAX header",
                ..
            })
        ));
        assert_eq!(number(b"\x80\0\0\0\0\0\0\0\0\0\x01\0", "size", 0).unwrap(), 256);
        assert_eq!(number(b" 0000017 \0", "size", 0).unwrap(), 15);
        assert!(number(b"9", "size", 0).is_err());
    }
}
