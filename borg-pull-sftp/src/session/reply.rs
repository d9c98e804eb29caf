//! Checks one reply body against what its request expects: fields within the packet, names
//! that are one file name each, lengths within their bounds.

use super::{Expect, Fail, Reply};
use crate::attrs::Attrs;
use crate::client::DirEntry;
use crate::error::{Bound, Op, Violation};
use crate::limits::{Limits, MAX_HANDLE_LEN, MAX_STATUS_MESSAGE};
use crate::wire::{fx, fxp, Fields};

/// Checks one reply body (after type and id) against what its request expects.
pub(super) fn parse(
    op: Op,
    expect: Expect,
    packet_type: u8,
    body: &[u8],
    limits: &Limits,
) -> Result<Result<Reply, Fail>, Violation> {
    let mut f = Fields::new(body, packet_type);
    let reply = match (packet_type, expect) {
        (fxp::STATUS, _) => {
            let code = f.u32("status code")?;
            // draft-02 has message and language; some servers leave both out.
            let message = if f.is_empty() {
                String::new()
            } else {
                let m = f.string("status message")?;
                f.string("status language tag")?;
                let m = &m[..m.len().min(MAX_STATUS_MESSAGE)];
                String::from_utf8_lossy(m).escape_debug().to_string()
            };
            f.finish("status")?;
            return Ok(match (code, expect) {
                (fx::OK, Expect::Status) => Ok(Reply::Ok),
                (fx::OK, _) => return Err(Violation::UnexpectedType { op, packet_type }),
                (fx::EOF, Expect::Data { .. } | Expect::Entries) => Ok(Reply::Eof),
                (code, _) => Err(Fail::Status { code, message }),
            });
        }
        (fxp::HANDLE, Expect::Handle) => {
            let h = f.string("handle")?;
            if h.len() > MAX_HANDLE_LEN {
                return Err(Violation::HandleTooLong { len: h.len() as u32 });
            }
            Reply::Handle(h.to_vec())
        }
        (fxp::ATTRS, Expect::Attrs) => Reply::Attrs(Attrs::decode(&mut f)?),
        (fxp::NAME, Expect::Entries) => return parse_entries(&mut f, limits),
        (fxp::NAME, Expect::OneName) => {
            let count = f.u32("name count")?;
            if count != 1 {
                return Err(Violation::NameCount { op, count });
            }
            let name = f.string("filename")?;
            f.string("longname")?;
            Attrs::decode(&mut f)?;
            f.finish("name")?;
            if name.len() > limits.max_link_len {
                return Ok(Err(Fail::TooBig {
                    bound: Bound::LinkLength,
                    limit: limits.max_link_len as u64,
                }));
            }
            if name.is_empty() || name.contains(&0) {
                return Ok(Err(Fail::BadName {
                    name: name.to_vec(),
                    reason: bad_path_reason(name),
                }));
            }
            Reply::Name(name.to_vec())
        }
        (fxp::EXTENDED_REPLY, Expect::Extended) => {
            let rest = f.remaining();
            let data = body[body.len() - rest..].to_vec();
            return Ok(Ok(Reply::Extended(data)));
        }
        _ => return Err(Violation::UnexpectedType { op, packet_type }),
    };
    f.finish("reply")?;
    Ok(Ok(reply))
}

fn bad_path_reason(name: &[u8]) -> &'static str {
    if name.is_empty() {
        "is empty"
    } else {
        "contains a NUL byte"
    }
}

/// The smallest a NAME entry can be: two empty strings and attribute flags.
const MIN_ENTRY: usize = 12;

fn parse_entries(f: &mut Fields<'_>, limits: &Limits) -> Result<Result<Reply, Fail>, Violation> {
    let sent = f.u32("name count")?;
    if sent == 0 {
        return Err(Violation::EmptyName);
    }
    if sent as usize > f.remaining() / MIN_ENTRY {
        return Err(Violation::Malformed {
            packet_type: fxp::NAME,
            field: "name count",
        });
    }
    let mut entries = Vec::with_capacity(sent as usize);
    let mut refused = None;
    for _ in 0..sent {
        let name = f.string("filename")?;
        f.string("longname")?;
        let attrs = Attrs::decode(f)?;
        if refused.is_some() || name == b"." || name == b".." {
            continue;
        }
        if name.len() > limits.max_name_len {
            refused = Some(Fail::TooBig {
                bound: Bound::NameLength,
                limit: limits.max_name_len as u64,
            });
        } else if let Some(reason) = bad_name(name) {
            refused = Some(Fail::BadName {
                name: name.to_vec(),
                reason,
            });
        } else {
            entries.push(DirEntry {
                name: name.to_vec(),
                attrs,
            });
        }
    }
    f.finish("name")?;
    Ok(match refused {
        Some(fail) => Err(fail),
        None => Ok(Reply::Entries { entries, sent }),
    })
}

/// Why a directory entry's name cannot be one file in that directory, if it cannot.
pub(crate) fn bad_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains(&b'/') {
        Some("contains '/'")
    } else if name.contains(&0) {
        Some("contains a NUL byte")
    } else {
        None
    }
}
