//! The start of a session: INIT from us, VERSION (and its extensions) from the server.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{closed, protocol, read_len};
use crate::error::{Error, Violation};
use crate::limits::Limits;
use crate::wire::{fxp, Fields, Packet};

/// Writes INIT, reads and checks VERSION: the extensions the server announced.
pub(crate) async fn handshake<R, W>(
    rd: &mut R,
    wr: &mut W,
    limits: &Limits,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&Packet::init().finish()).await.map_err(closed)?;
    wr.flush().await.map_err(closed)?;
    let len = read_len(rd, limits).await?;
    if len < 5 {
        return Err(protocol(Violation::PacketTooShort { len }));
    }
    let mut body = vec![0; len as usize];
    rd.read_exact(&mut body).await.map_err(closed)?;
    if body[0] != fxp::VERSION {
        return Err(protocol(Violation::NotVersion { packet_type: body[0] }));
    }
    let mut f = Fields::new(&body[1..], fxp::VERSION);
    let version = f.u32("version")?;
    if version < crate::wire::VERSION {
        return Err(Error::UnsupportedVersion { version });
    }
    let mut extensions = Vec::new();
    while !f.is_empty() {
        if extensions.len() >= limits.max_extensions {
            return Err(protocol(Violation::TooManyExtensions {
                max: limits.max_extensions,
            }));
        }
        let name = f.string("extension name")?.to_vec();
        let data = f.string("extension data")?.to_vec();
        extensions.push((name, data));
    }
    Ok(extensions)
}
