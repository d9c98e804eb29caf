//! The SSH wire format's two primitives both the agent protocol and OpenSSH's private key format
//! use: big-endian `uint32` and length-prefixed `string` (RFC 4251, section 5). Reading never
//! trusts a length: a string longer than what is left is `None`.

/// Reads `uint32` and `string` values off a byte slice.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    /// The next `uint32`, if four bytes are left.
    pub(crate) fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*head))
    }

    /// The next `string`, if its whole length is left.
    pub(crate) fn string(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(s)
    }
}

/// Appends `s` as a `string`.
pub(crate) fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).expect("small").to_be_bytes());
    out.extend_from_slice(s);
}
