//! One client connection and its task: read, broadcast, write what the broadcast
//! channel brings, and take part in a handoff (see hub.rs for the gate).
//!
//! Output is written with `try_write` one message at a time, keeping the offset of
//! the message in flight, so at a release the exact bytes still owed are known: the
//! rest of the message in flight plus everything queued in the broadcast receiver.
//! The socket is never shut down: dropping a tokio `UnixStream` deregisters it from
//! epoll, then closes this process's descriptor only.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UnixStream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::oneshot;

use crate::framing::Inbound;
use crate::hub::{Counters, Decision, Export, Hub, Phase};
use crate::table::Carried;

/// Bytes read at most at once (the real relays' 64 KiB buffer).
pub const READ_SIZE: usize = 65_536;

thread_local! {
    // one read buffer per worker thread, not per connection: a read and what is done
    // with it are synchronous, and a handoff adopting thousands of connections must
    // not allocate and zero 64 KiB for each
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_SIZE]);
}

/// A client connection handed to the relay by `Handoff::accept`: accepted, adopted
/// from the previous relay (with its carried state) or a probe client.
pub struct Conn {
    pub(crate) stream: UnixStream,
    pub(crate) hub: Arc<Hub>,
    pub(crate) carried: Carried,
}

enum Owed<M> {
    Nothing,
    Some(M, usize),
}

impl Conn {
    /// This connection's id (kept across handoffs).
    pub fn id(&self) -> u64 {
        self.carried.id
    }

    /// Serve the connection until the client goes or a handoff takes it away.
    /// `inbound` turns reads into units; each unit is sent on `tx`; whatever `rx`
    /// brings (the sender's own units included: echo) is written to the client.
    pub async fn serve<I, M>(mut self, mut inbound: I, tx: broadcast::Sender<M>, mut rx: broadcast::Receiver<M>)
    where
        I: Inbound,
        M: AsRef<[u8]> + From<Vec<u8>> + Clone + Send + Sync + 'static,
    {
        let hub = self.hub.clone();
        let mut wake = hub.wakeups();
        let mut owed = Owed::Nothing;
        let carried_out = std::mem::take(&mut self.carried.unsent_out);
        if !carried_out.is_empty() {
            owed = Owed::Some(M::from(carried_out), 0);
        }
        let mut carried_in = std::mem::take(&mut self.carried.pending_in);
        let handed_over = loop {
            match hub.phase() {
                Phase::Hold => {
                    if wake.changed().await.is_err() {
                        break false;
                    }
                    continue;
                }
                Phase::Flush(deadline) => match self.release(deadline, &mut owed, &mut rx, &inbound, &carried_in).await {
                    Some(Decision::Resume) => continue,
                    Some(Decision::Close) => break true,
                    None => break false,
                },
                Phase::Run => {}
            }
            if !carried_in.is_empty() {
                // resumed: the carried partial frame goes to the framer before any read
                let data = std::mem::take(&mut carried_in);
                self.ingest(&data, &mut inbound, &tx);
            }
            if self.write_now(&mut owed, &mut rx).is_err() {
                break false;
            }
            let waiting = matches!(owed, Owed::Nothing);
            tokio::select! {
                _ = wake.changed() => {}
                ready = self.stream.readable() => {
                    if ready.is_err() {
                        break false;
                    }
                    let read = READ_BUF.with(|buf| self.read_once(&mut buf.borrow_mut(), &mut inbound, &tx));
                    match read {
                        Ok(true) | Err(_) => break false,
                        Ok(false) => {}
                    }
                }
                msg = rx.recv(), if waiting => match msg {
                    Ok(m) => owed = Owed::Some(m, 0),
                    Err(RecvError::Lagged(n)) => self.lagged(n),
                    Err(RecvError::Closed) => break false,
                },
                ready = self.stream.writable(), if !waiting => {
                    if ready.is_err() {
                        break false;
                    }
                }
            }
        };
        hub.forget(self.carried.id, handed_over);
    }

    fn lagged(&mut self, n: u64) {
        self.carried.counters[3] += n;
        Counters::add(&self.hub.counters.lag_drops, n);
    }

    /// One read, under the gate (a release waits for it to finish). Ok(true): EOF.
    fn read_once<I: Inbound, M: From<Vec<u8>>>(&mut self, buf: &mut [u8], inbound: &mut I,
                                               tx: &broadcast::Sender<M>) -> io::Result<bool> {
        let hub = self.hub.clone();
        let gate = hub.gate.read().unwrap();
        if *gate != Phase::Run {
            return Ok(false);
        }
        match self.stream.try_read(buf) {
            Ok(0) => Ok(true),
            Ok(n) => {
                self.carried.counters[0] += n as u64;
                Counters::add(&hub.counters.bytes_in, n as u64);
                self.ingest(&buf[..n], inbound, tx);
                drop(gate);
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn ingest<I: Inbound, M: From<Vec<u8>>>(&mut self, data: &[u8], inbound: &mut I, tx: &broadcast::Sender<M>) {
        let mut frames_in = 0;
        inbound.feed(data, &mut |unit, frames| {
            frames_in += frames;
            let _ = tx.send(M::from(unit));
        });
        self.carried.counters[1] += frames_in;
        Counters::add(&self.hub.counters.frames_in, frames_in);
    }

    /// Write what is owed and whatever is queued, until the socket would block.
    fn write_now<M: AsRef<[u8]> + Clone>(&mut self, owed: &mut Owed<M>, rx: &mut broadcast::Receiver<M>) -> io::Result<()> {
        loop {
            if let Owed::Nothing = owed {
                match rx.try_recv() {
                    Ok(m) => *owed = Owed::Some(m, 0),
                    Err(TryRecvError::Lagged(n)) => {
                        self.lagged(n);
                        continue;
                    }
                    Err(_) => return Ok(()),
                }
            }
            let done = match owed {
                Owed::Some(m, sent) => {
                    let data = &m.as_ref()[*sent..];
                    match self.stream.try_write(data) {
                        Ok(n) => {
                            Counters::add(&self.hub.counters.bytes_out, n as u64);
                            *sent += n;
                            n == data.len()
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
                Owed::Nothing => return Ok(()),
            };
            if done {
                *owed = Owed::Nothing;
                self.carried.counters[2] += 1;
                Counters::add(&self.hub.counters.frames_out, 1);
            }
        }
    }

    /// RELEASE: write what is owed until `deadline`, export the rest, park until the
    /// orchestrator decides. None: the client went away meanwhile.
    async fn release<I: Inbound, M>(&mut self, deadline: Instant, owed: &mut Owed<M>,
                                    rx: &mut broadcast::Receiver<M>, inbound: &I,
                                    carried_in: &[u8]) -> Option<Decision>
    where
        M: AsRef<[u8]> + From<Vec<u8>> + Clone,
    {
        loop {
            if self.write_now(owed, rx).is_err() {
                return None;
            }
            if let Owed::Nothing = owed {
                break;
            }
            let until = tokio::time::Instant::from_std(deadline);
            match tokio::time::timeout_at(until, self.stream.writable()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) => break,
            }
        }
        let mut unsent = Vec::new();
        if let Owed::Some(m, sent) = std::mem::replace(owed, Owed::Nothing) {
            unsent.extend_from_slice(&m.as_ref()[sent..]);
        }
        loop {
            match rx.try_recv() {
                Ok(m) => unsent.extend_from_slice(m.as_ref()),
                Err(TryRecvError::Lagged(n)) => self.lagged(n),
                Err(_) => break,
            }
        }
        let mut pending = carried_in.to_vec();
        pending.extend_from_slice(inbound.pending());
        let (decide, decision) = oneshot::channel();
        let export = Export {
            carried: Carried { id: self.carried.id, pending_in: pending, unsent_out: unsent.clone(),
                               counters: self.carried.counters },
            fd: self.stream.as_raw_fd(),
            decision: decide,
        };
        let exports = self.hub.exports.lock().unwrap().clone();
        match exports {
            Some(sender) if sender.send(export).is_ok() => {}
            _ => return Some(Decision::Resume), // no release is collecting: keep serving
        }
        let decided = decision.await.unwrap_or(Decision::Resume);
        if let Decision::Resume = decided {
            if !unsent.is_empty() {
                *owed = Owed::Some(M::from(unsent), 0);
            }
        }
        Some(decided)
    }
}
