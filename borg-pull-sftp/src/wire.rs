//! The SFTP v3 wire format (draft-ietf-secsh-filexfer-02): packet types, status codes, and the
//! bounded reader and the writer of packet fields.

use crate::error::Violation;

/// Packet types (draft-02, section 3).
pub(crate) mod fxp {
    pub const INIT: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const LSTAT: u8 = 7;
    pub const FSTAT: u8 = 8;
    pub const SETSTAT: u8 = 9;
    pub const OPENDIR: u8 = 11;
    pub const READDIR: u8 = 12;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const REALPATH: u8 = 16;
    pub const STAT: u8 = 17;
    pub const RENAME: u8 = 18;
    pub const READLINK: u8 = 19;
    pub const SYMLINK: u8 = 20;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const ATTRS: u8 = 105;
    pub const EXTENDED: u8 = 200;
    pub const EXTENDED_REPLY: u8 = 201;
}

/// Status codes (draft-02, section 7).
pub(crate) mod fx {
    pub const OK: u32 = 0;
    pub const EOF: u32 = 1;
    pub const NO_SUCH_FILE: u32 = 2;
    pub const PERMISSION_DENIED: u32 = 3;
    pub const FAILURE: u32 = 4;
    pub const OP_UNSUPPORTED: u32 = 8;
}

/// The protocol version this client speaks.
pub(crate) const VERSION: u32 = 3;

/// Attribute flags (draft-02, section 5).
pub(crate) mod attr {
    pub const SIZE: u32 = 0x1;
    pub const UIDGID: u32 = 0x2;
    pub const PERMISSIONS: u32 = 0x4;
    pub const ACMODTIME: u32 = 0x8;
    pub const EXTENDED: u32 = 0x8000_0000;
    pub const KNOWN: u32 = SIZE | UIDGID | PERMISSIONS | ACMODTIME | EXTENDED;
}

/// Reads fields from one packet body; running past its end is a [`Violation::Malformed`].
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    packet_type: u8,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(buf: &'a [u8], packet_type: u8) -> Self {
        Fields { buf, packet_type }
    }

    fn malformed(&self, field: &'static str) -> Violation {
        Violation::Malformed {
            packet_type: self.packet_type,
            field,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Violation> {
        if self.buf.len() < n {
            return Err(self.malformed(field));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, Violation> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, Violation> {
        let b = self.take(8, field)?;
        Ok(u64::from_be_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    /// A length-prefixed string; its length is checked against the packet before it is used.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<&'a [u8], Violation> {
        let len = self.u32(field)? as usize;
        self.take(len, field)
    }

    /// The end of the packet: bytes left over mean the peer and we disagree on its layout.
    pub(crate) fn finish(&self, field: &'static str) -> Result<(), Violation> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed(field))
        }
    }
}

/// Builds one request packet: the length is filled in by [`Packet::finish`].
pub(crate) struct Packet {
    buf: Vec<u8>,
}

impl Packet {
    pub(crate) fn new(packet_type: u8, id: u32, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(9 + capacity);
        buf.extend_from_slice(&[0; 4]);
        buf.push(packet_type);
        buf.extend_from_slice(&id.to_be_bytes());
        Packet { buf }
    }

    /// INIT has a version where the other requests have an id.
    pub(crate) fn init() -> Self {
        Packet::new(fxp::INIT, VERSION, 0)
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn string(&mut self, s: &[u8]) -> &mut Self {
        // Our own requests: paths and data we were given, bounded by the caller (max_write).
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s);
        self
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_longer_than_its_packet_is_malformed_not_a_panic() {
        let body = [0, 0, 0, 9, b'a', b'b'];
        let mut f = Fields::new(&body, fxp::NAME);
        assert_eq!(
            f.string("filename"),
            Err(Violation::Malformed {
                packet_type: fxp::NAME,
                field: "filename"
            })
        );
    }

    #[test]
    fn a_packet_carries_its_own_length() {
        let mut p = Packet::new(fxp::LSTAT, 7, 3);
        p.string(b"abc");
        let bytes = p.finish();
        assert_eq!(
            bytes,
            [0, 0, 0, 12, fxp::LSTAT, 0, 0, 0, 7, 0, 0, 0, 3, b'a', b'b', b'c']
        );
    }
}
