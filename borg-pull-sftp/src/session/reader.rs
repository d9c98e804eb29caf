//! The reader task: every reply read within max_packet, matched to its request by id, and
//! checked (by `reply`) before the caller sees it; the first violation ends the session.

use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, BufReader};

use super::reply::parse;
use super::{closed, protocol, read_len, Expect, Fail, Reply, Session};
use crate::error::{Error, Violation};
use crate::wire::fxp;

pub(super) async fn read_loop<R: AsyncRead + Unpin>(session: Arc<Session>, mut rd: BufReader<R>) {
    let stop = session.stop.clone();
    let mut scratch = Vec::new();
    let err = tokio::select! {
        biased;
        _ = stop.cancelled() => return,
        e = read_replies(&session, &mut rd, &mut scratch) => e,
    };
    session.end(err);
}

/// Reads replies until one breaks the protocol or the stream ends; returns why it stopped.
async fn read_replies<R: AsyncRead + Unpin>(
    session: &Session,
    rd: &mut BufReader<R>,
    scratch: &mut Vec<u8>,
) -> Error {
    let limits = &session.limits;
    loop {
        let len = match read_len(rd, limits).await {
            Ok(len) => len,
            Err(e) => return e,
        };
        if len < 9 {
            return protocol(Violation::PacketTooShort { len });
        }
        let (packet_type, id) =
            match async { Ok::<_, std::io::Error>((rd.read_u8().await?, rd.read_u32().await?)) }.await {
                Ok(h) => h,
                Err(e) => return closed(e),
            };
        let Some(pending) = session.lock().pending.remove(&id) else {
            return protocol(Violation::UnknownId { id, packet_type });
        };
        let body_len = (len - 5) as usize;
        let result = if let (fxp::DATA, Expect::Data { requested }) = (packet_type, pending.expect) {
            read_data(rd, body_len, requested).await
        } else {
            scratch.clear();
            scratch.resize(body_len, 0);
            match rd.read_exact(scratch).await {
                Ok(_) => parse(pending.op, pending.expect, packet_type, scratch, limits).map_err(protocol),
                Err(e) => Err(closed(e)),
            }
        };
        match result {
            Ok(reply) => {
                // The caller may have given up (deadline, dropped future): nothing to do then.
                let _ = pending.waiter.send(reply);
            }
            Err(e) => {
                let _ = pending.waiter.send(Err(Fail::Session(e.clone())));
                return e;
            }
        }
    }
}

/// A DATA body read straight into the buffer handed to the caller: one allocation, no copy.
async fn read_data<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    body_len: usize,
    requested: u32,
) -> Result<Result<Reply, Fail>, Error> {
    if body_len < 4 {
        return Err(protocol(Violation::Malformed {
            packet_type: fxp::DATA,
            field: "data",
        }));
    }
    let n = rd.read_u32().await.map_err(closed)?;
    if n as usize != body_len - 4 {
        return Err(protocol(Violation::Malformed {
            packet_type: fxp::DATA,
            field: "data",
        }));
    }
    if n > requested {
        return Err(protocol(Violation::DataTooLong { requested, got: n }));
    }
    let mut data = vec![0; n as usize];
    // What the buffer already holds, then the rest straight from the stream into `data`: one
    // copy of the file's bytes instead of two (the buffer is empty after the first step).
    let buffered = rd.buffer();
    let from_buffer = buffered.len().min(data.len());
    data[..from_buffer].copy_from_slice(&buffered[..from_buffer]);
    Pin::new(&mut *rd).consume(from_buffer);
    rd.get_mut()
        .read_exact(&mut data[from_buffer..])
        .await
        .map_err(closed)?;
    Ok(Ok(Reply::Data(data)))
}
