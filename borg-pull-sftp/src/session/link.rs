//! The caller's side of a request: a slot, an id, the packet to the writer, the reply (or the
//! deadline).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Expect, Fail, Pending, Reply, Session, State};
use crate::error::{Error, Op, Request};
use crate::limits::Limits;
use crate::wire::Packet;

/// The caller's side: sends requests and waits for their replies.
pub(crate) struct Link {
    pub(crate) session: Arc<Session>,
    pub(super) tx: mpsc::Sender<Vec<u8>>,
}

/// Removes a registered request that was never handed to the writer (the caller's future was
/// dropped, or its deadline passed, before that), so its slot comes back.
struct Unsent<'a> {
    session: &'a Session,
    id: Option<u32>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.session.lock().pending.remove(&id);
        }
    }
}

impl Link {
    pub(crate) fn session_limits(&self) -> &Limits {
        &self.session.limits
    }

    /// One request: `fill` writes the fields after the id. Ends by the request's deadline.
    pub(crate) async fn call(
        &self,
        op: Op,
        packet_type: u8,
        path: &[u8],
        expect: Expect,
        capacity: usize,
        fill: impl FnOnce(&mut Packet),
    ) -> Result<Reply, Error> {
        self.submit(op, packet_type, path, expect, capacity, fill)
            .await?
            .wait(path)
            .await
    }

    /// Sends one request without waiting for its reply, so several can be in flight from one
    /// caller (pipelined writes). Its deadline starts now and covers waiting for a slot.
    pub(crate) async fn submit(
        &self,
        op: Op,
        packet_type: u8,
        path: &[u8],
        expect: Expect,
        capacity: usize,
        fill: impl FnOnce(&mut Packet),
    ) -> Result<Submitted<'_>, Error> {
        let timeout = self.session.limits.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, self.send(op, packet_type, expect, capacity, fill)).await {
            Ok(Ok(reply)) => Ok(Submitted {
                op,
                reply,
                deadline,
                timeout,
                link: self,
            }),
            Ok(Err(fail)) => Err(fail.into_error(op, path)),
            Err(_) => Err(Error::Deadline {
                request: Request::new(op, path),
                timeout,
            }),
        }
    }

    async fn send(
        &self,
        op: Op,
        packet_type: u8,
        expect: Expect,
        capacity: usize,
        fill: impl FnOnce(&mut Packet),
    ) -> Result<oneshot::Receiver<Result<Reply, Fail>>, Fail> {
        let session = &*self.session;
        // The semaphore is never closed.
        let slot = session
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.session_fail())?;
        let (waiter, reply) = oneshot::channel();
        let id = {
            let mut t = session.lock();
            if let State::Ended(e) = &t.state {
                return Err(Fail::Session(e.clone()));
            }
            // Ids wrap after 2^32 requests; skip those still outstanding (at most max_outstanding).
            let mut id = session.next_id.fetch_add(1, Ordering::Relaxed);
            while t.pending.contains_key(&id) {
                id = session.next_id.fetch_add(1, Ordering::Relaxed);
            }
            t.pending.insert(
                id,
                Pending {
                    op,
                    expect,
                    waiter,
                    _slot: slot,
                },
            );
            id
        };
        let mut unsent = Unsent {
            session,
            id: Some(id),
        };
        let mut packet = Packet::new(packet_type, id, capacity);
        fill(&mut packet);
        if self.tx.send(packet.finish()).await.is_err() {
            return Err(self.session_fail());
        }
        unsent.id = None;
        Ok(reply)
    }

    fn session_fail(&self) -> Fail {
        Fail::Session(self.session.ended().unwrap_or_else(|| Error::Closed {
            reason: "the session's tasks stopped".into(),
        }))
    }
}

/// A request on its way: [`Submitted::wait`] for its reply. Dropped, it is abandoned: the reply
/// is dropped when it comes, and its slot is held until then.
pub(crate) struct Submitted<'a> {
    op: Op,
    reply: oneshot::Receiver<Result<Reply, Fail>>,
    deadline: tokio::time::Instant,
    timeout: std::time::Duration,
    link: &'a Link,
}

impl Submitted<'_> {
    pub(crate) async fn wait(self, path: &[u8]) -> Result<Reply, Error> {
        match tokio::time::timeout_at(self.deadline, self.reply).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(fail))) => Err(fail.into_error(self.op, path)),
            Ok(Err(_)) => Err(self.link.session_fail().into_error(self.op, path)),
            Err(_) => Err(Error::Deadline {
                request: Request::new(self.op, path),
                timeout: self.timeout,
            }),
        }
    }
}
