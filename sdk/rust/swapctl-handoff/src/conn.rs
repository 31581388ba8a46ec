//! One client connection and its task: read, broadcast, write what the broadcast
//! channel brings, and take part in a handoff (see hub.rs for the gate and slots).
//!
//! Output goes through a small queue of units (`Out`): a unit taken from the
//! broadcast receiver, or one carried from the previous relay (a version-1
//! `unsent_out`, or a pre-copy BACKLOG's units written straight from its memfd
//! mapping). The queue keeps how much of its first unit was written, so at a release
//! the exact bytes still owed are known: the rest of the queue plus everything still
//! in the broadcast receiver. A version-1 release copies them into the manifest; a
//! pre-copy freeze only says that they are owed, and OWED later hands the units over
//! without copying them. The socket is never shut down: dropping a tokio `UnixStream`
//! deregisters it from epoll, then closes this process's descriptor only.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream as StdStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UnixStream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::oneshot;

use crate::backlog::{Entry, MappedUnit, Owned};
use crate::framing::Inbound;
use crate::hub::{Cmd, Counters, Decision, Export, Gone, Hub, Phase, Slot, HEAD, OWES, PENDING, STALE, STARTED};
use crate::table::{Carried, DEFERRED, HEAD_STARTED};

/// Bytes read at most at once (the real relays' 64 KiB buffer).
pub const READ_SIZE: usize = 65_536;

/// Units written at most in one system call (writev).
const WRITE_UNITS: usize = 64;

thread_local! {
    // one read buffer per worker thread, not per connection: a read and what is done
    // with it are synchronous, and a handoff adopting thousands of connections must
    // not allocate and zero 64 KiB for each
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_SIZE]);
}

/// A connection's socket: registered with the runtime's reactor, or staged (adopted
/// while the relay does not serve: `Hub::stage` watches it for input in an epoll set
/// of its own, and the task registers it at its first turn once the relay serves).
///
/// Why not registered while staged: tokio registers a socket for reading and writing,
/// edge-triggered, and the serving relay's clients make every staged socket writable
/// again each time they read. Measured with 1,000 clients under load: a staged relay
/// woke for that at 32% of a CPU (0% once staged sockets waited outside the
/// reactor), taken from the relay serving those clients through the whole pre-copy.
pub(crate) struct Sock {
    live: Option<UnixStream>,
    staged: Option<StdStream>,
    fd: RawFd,
}

impl Sock {
    pub(crate) fn live(stream: UnixStream) -> Sock {
        let fd = stream.as_raw_fd();
        Sock { live: Some(stream), staged: None, fd }
    }

    pub(crate) fn staged(stream: StdStream) -> Sock {
        let fd = stream.as_raw_fd();
        Sock { live: None, staged: Some(stream), fd }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    pub(crate) fn registered(&self) -> bool {
        self.live.is_some()
    }

    /// The registered stream, registering a staged one first (in the runtime).
    pub(crate) fn get(&mut self) -> io::Result<&UnixStream> {
        if self.live.is_none() {
            let staged = self.staged.take().expect("a Sock holds its stream");
            self.live = Some(UnixStream::from_std(staged)?);
        }
        Ok(self.live.as_ref().expect("registered just now"))
    }

    /// The stream of a socket known to be registered (the serving loop registers it
    /// at the top of each turn in `Run`).
    fn registered_stream(&self) -> &UnixStream {
        self.live.as_ref().expect("registered at the top of the turn")
    }

    /// Readable, for a registered socket; never, for a staged one (`Hub::stage` watches
    /// those).
    async fn readable_if_registered(&self) -> io::Result<()> {
        match &self.live {
            Some(stream) => stream.readable().await,
            None => std::future::pending().await,
        }
    }
}

/// A client connection handed to the relay by `Handoff::accept`: accepted, adopted
/// from the previous relay (with its carried state) or a probe client.
pub struct Conn {
    pub(crate) stream: Sock,
    pub(crate) hub: Arc<Hub>,
    pub(crate) carried: Carried,
    pub(crate) slot: Arc<Slot>,
    /// Pre-copy adopter: bytes owed to this client are on their way (BACKLOG); write
    /// nothing to it until they arrive.
    pub(crate) held: bool,
    /// Adopted while the relay was not serving (`Hold`): `Hub::holds_staged` applies.
    pub(crate) staged: bool,
}

enum Piece<M> {
    /// A unit from the broadcast channel and its number (`Tail`), or one carried from
    /// the previous relay (number 0).
    Msg(M, u64),
    Mapped(MappedUnit),
}

impl<M: AsRef<[u8]>> Piece<M> {
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Msg(m, _) => m.as_ref(),
            Piece::Mapped(u) => u.as_ref(),
        }
    }
}

/// What is owed to the client, in order; `head_sent` bytes of the first unit are written.
struct Out<M> {
    queue: VecDeque<(Piece<M>, u32)>,
    head_sent: usize,
    /// The first unit may start mid-frame (carried by a version-1 handoff, which has
    /// no frame boundaries): it counts as started, so it is never shed.
    pinned: bool,
    /// Bytes owed to this client are on their way (its own DEFERRED record).
    held: bool,
    /// Every staged connection is held (`defer-all`): read from the hub each turn.
    held_all: bool,
    /// Bytes queued and not yet written.
    bytes: u64,
    /// The number of the unit the broadcast receiver yields next (0: not known yet;
    /// see hub.rs on the tail).
    next: u64,
}

impl<M: AsRef<[u8]> + Clone + Send + 'static> Out<M> {
    fn push(&mut self, piece: Piece<M>, frames: u32) {
        self.bytes += piece.bytes().len() as u64;
        self.queue.push_back((piece, frames));
    }

    /// A unit taken from the broadcast receiver.
    fn take(&mut self, m: M) {
        let seq = self.next;
        if self.next != 0 {
            self.next += 1;
        }
        self.push(Piece::Msg(m, seq), 1);
    }

    /// The receiver lagged: `n` units were dropped for this client.
    fn skipped(&mut self, n: u64) {
        if self.next != 0 {
            self.next += n;
        }
    }

    /// What the slot publishes (`Slot::written`, `Slot::head_sent`): 1 + the number of
    /// the last unit written whole and how much of the next was, when everything still
    /// queued came from the broadcast channel (carried units only ever lead the queue,
    /// so a numbered first unit means all are); (0, 0) when it cannot be told.
    fn written(&self) -> (u64, u64) {
        if self.next == 0 || self.holding() {
            return (0, 0);
        }
        match self.queue.front() {
            None => (self.next, 0),
            Some((Piece::Msg(_, seq), _)) if *seq != 0 => (*seq, self.head_sent as u64),
            Some(_) => (0, 0),
        }
    }

    /// Bytes carried without their frame boundaries (a version-1 `unsent_out`).
    fn push_carried(&mut self, m: M) {
        if self.queue.is_empty() {
            self.pinned = true;
        }
        self.push(Piece::Msg(m, 0), 1);
    }

    /// A BACKLOG's units, in front of anything queued since the resume.
    fn prepend(&mut self, units: Vec<MappedUnit>, head_sent: usize) {
        for unit in units.into_iter().rev() {
            self.bytes += unit.len as u64;
            let frames = unit.frames;
            self.queue.push_front((Piece::Mapped(unit), frames));
        }
        self.bytes -= head_sent as u64;
        self.head_sent = head_sent;
        self.pinned = false;
    }

    /// Keep at most `limit` units and about `bytes` bytes: the oldest whole ones go,
    /// never a started one (drop-oldest, as the broadcast channel does); frames shed.
    fn shed(&mut self, limit: usize, bytes: u64) -> u64 {
        let first = usize::from(self.started());
        let mut shed = 0u64;
        while (self.queue.len() > limit.max(first) || self.bytes > bytes) && first < self.queue.len() {
            let (piece, frames) = self.queue.remove(first).expect("index checked");
            self.bytes -= piece.bytes().len() as u64;
            shed += frames as u64;
        }
        shed
    }

    /// Write nothing, take nothing from the receiver: owed bytes come first.
    fn holding(&self) -> bool {
        self.held || self.held_all
    }

    fn started(&self) -> bool {
        !self.queue.is_empty() && (self.head_sent > 0 || self.pinned)
    }

    /// Every byte owed, as one buffer (a version-1 manifest's `unsent_out`).
    fn concat(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.bytes as usize);
        for (i, (piece, _)) in self.queue.iter().enumerate() {
            all.extend_from_slice(&piece.bytes()[if i == 0 { self.head_sent } else { 0 }..]);
        }
        all
    }

    /// The units for a BACKLOG (clones: this relay keeps its own until CLOSE). A pinned
    /// first unit that nothing of was written gets one placeholder byte, counted as
    /// written, so the adopter treats it as started too.
    fn units(&self) -> (usize, Vec<(Owned, u32)>) {
        let mut head_sent = self.head_sent;
        let mut units: Vec<(Owned, u32)> = Vec::with_capacity(self.queue.len());
        for (i, (piece, frames)) in self.queue.iter().enumerate() {
            let unit: Owned = match piece {
                Piece::Msg(..) if i == 0 && self.pinned && head_sent == 0 => {
                    head_sent = 1;
                    let mut bytes = vec![0u8];
                    bytes.extend_from_slice(piece.bytes());
                    Box::new(bytes)
                }
                Piece::Msg(m, _) => Box::new(m.clone()),
                Piece::Mapped(u) => Box::new(u.clone()),
            };
            units.push((unit, *frames));
        }
        (head_sent, units)
    }
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
        let slot = self.slot.clone();
        let mut wake = hub.wakeups();
        let mut out = Out { queue: VecDeque::new(), head_sent: 0, pinned: false, held: self.held, held_all: false,
                           bytes: 0, next: 0 };
        let carried_out = std::mem::take(&mut self.carried.unsent_out);
        if !carried_out.is_empty() {
            out.push_carried(M::from(carried_out));
        }
        let mut carried_in = std::mem::take(&mut self.carried.pending_in);
        // input came while this task could not read (`Hub::resume` wakes it first)
        let mut input_came = false;
        let how = loop {
            // (before the commands: see `Hub::holds_staged`)
            out.held_all = self.staged && hub.holds_staged();
            if let Some(how) = self.commands(&mut out, &mut rx, &inbound, &mut carried_in) {
                break how;
            }
            let phase = hub.phase();
            match phase {
                Phase::Hold | Phase::Frozen => {
                    // neither read nor write: wait for the phase to change, a command, or
                    // input (said once: the readiness stays until a read clears it; a
                    // staged socket's input is found by `Hub::resume`)
                    tokio::select! {
                        changed = wake.changed() => if changed.is_err() { break Gone::Disconnected },
                        _ = slot.notify.notified() => {}
                        _ = self.stream.readable_if_registered(), if !input_came => {
                            input_came = true;
                            hub.input_came(&slot);
                        }
                    }
                    continue;
                }
                Phase::Closing => break Gone::HandedOver,
                Phase::Flush(deadline) => match self.release(deadline, &mut out, &mut rx, &inbound, &carried_in).await {
                    Some(Decision::Resume) => continue,
                    Some(Decision::Close) => break Gone::HandedOver,
                    None => break Gone::Disconnected,
                },
                Phase::Run => input_came = false,
            }
            if !self.stream.registered() && self.stream.get().is_err() {
                break Gone::Disconnected; // (the first turn of a staged socket's task)
            }
            let reading = hub.reading(phase); // (a later change is seen at the next turn)
            if !carried_in.is_empty() {
                // resumed: the carried partial frame goes to the framer before any read
                if let Some(intake) = hub.take_in() {
                    let data = std::mem::take(&mut carried_in);
                    self.ingest(&data, &mut inbound, &tx);
                    drop(intake);
                }
            }
            if self.write_now(&mut out, &mut rx, !carried_in.is_empty()).is_err() {
                break Gone::Disconnected;
            }
            let waiting = out.queue.is_empty() && !out.holding();
            let writing = !out.queue.is_empty() && !out.holding();
            tokio::select! {
                _ = wake.changed() => {}
                _ = slot.notify.notified() => {}
                ready = self.stream.registered_stream().readable(), if reading => {
                    if ready.is_err() {
                        break Gone::Disconnected;
                    }
                    let read = READ_BUF.with(|buf| self.read_once(&mut buf.borrow_mut(), &mut inbound, &tx));
                    match read {
                        Ok(true) | Err(_) => break Gone::Disconnected,
                        Ok(false) => {}
                    }
                }
                msg = rx.recv(), if waiting => match msg {
                    Ok(m) => out.take(m),
                    Err(RecvError::Lagged(n)) => { out.skipped(n); self.lagged(n) },
                    Err(RecvError::Closed) => break Gone::Disconnected,
                },
                ready = self.stream.registered_stream().writable(), if writing => {
                    if ready.is_err() {
                        break Gone::Disconnected;
                    }
                }
            }
        };
        hub.forget(self.carried.id, how);
    }

    /// Do what the control thread asked (see `Cmd`); Some: the task ends.
    fn commands<I: Inbound, M>(&mut self, out: &mut Out<M>, rx: &mut broadcast::Receiver<M>, inbound: &I,
                               carried_in: &mut Vec<u8>) -> Option<Gone>
    where
        M: AsRef<[u8]> + From<Vec<u8>> + Clone + Send + Sync + 'static,
    {
        let cmds = self.slot.take();
        if !cmds.is_empty() {
            // the queue may change: until the next write says again, the freeze asks
            self.slot.set(STALE, true);
            self.slot.set_written(0);
        }
        for cmd in cmds {
            match cmd {
                Cmd::Export => self.export_frozen(out, rx, inbound, carried_in),
                Cmd::Owed(reply, limit, bytes) => {
                    self.drain(out, rx);
                    // what this relay carried in and never wrote counts against the same
                    // bound as its receiver: a never-reader's backlog does not grow by
                    // a channel's worth with every swap
                    let shed = out.shed(limit, bytes as u64);
                    self.lagged(shed);
                    let (head_sent, units) = out.units();
                    let _ = reply.send(Entry { id: self.carried.id, head_sent, units });
                }
                Cmd::Carry { pending_in, unsent_out, counters, hold } => {
                    if !pending_in.is_empty() {
                        *carried_in = pending_in;
                    }
                    if !unsent_out.is_empty() {
                        out.push_carried(M::from(unsent_out));
                    }
                    self.carried.counters = counters;
                    out.held |= hold;
                }
                Cmd::Backlog { units, head_sent } => {
                    out.prepend(units, head_sent);
                    out.held = false;
                }
                Cmd::Unhold => out.held = false,
                Cmd::Unstage => return Some(Gone::Unstaged),
                Cmd::Disconnect => return Some(Gone::Disconnected),
            }
        }
        None
    }

    /// Frozen by a pre-copy RELEASE: describe this connection (no bytes owed copied).
    fn export_frozen<I: Inbound, M>(&mut self, out: &Out<M>, rx: &broadcast::Receiver<M>, inbound: &I,
                                    carried_in: &[u8])
    where
        M: AsRef<[u8]> + From<Vec<u8>> + Clone + Send + Sync + 'static,
    {
        let mut pending = carried_in.to_vec();
        pending.extend_from_slice(inbound.pending());
        let owes = !out.queue.is_empty() || out.holding() || !rx.is_empty();
        let mut flags = if owes { DEFERRED } else { 0 };
        if out.started() {
            flags |= HEAD_STARTED;
        }
        let export = Export {
            carried: Carried { id: self.carried.id, pending_in: pending, unsent_out: Vec::new(),
                               counters: self.carried.counters },
            fd: self.stream.fd(),
            decision: None,
            flags,
            owed_bytes: out.bytes,
        };
        if let Some(sender) = self.hub.exports.lock().unwrap().clone() {
            let _ = sender.send(export);
        }
    }

    /// Everything left in the broadcast receiver moves to the queue (the relay is
    /// released or frozen: nothing new arrives).
    fn drain<M: AsRef<[u8]> + Clone + Send + 'static>(&mut self, out: &mut Out<M>, rx: &mut broadcast::Receiver<M>) {
        loop {
            match rx.try_recv() {
                Ok(m) => out.take(m),
                Err(TryRecvError::Lagged(n)) => { out.skipped(n); self.lagged(n) },
                Err(_) => break,
            }
        }
    }

    /// `n` units were dropped for this client (its receiver lagged, or shed from its
    /// queue).
    fn lagged(&mut self, n: u64) {
        self.carried.counters[3] += n;
        self.slot.counters[3].store(self.carried.counters[3], Ordering::Relaxed);
        Counters::add(&self.hub.counters.lag_drops, n);
    }

    /// The per-connection counters, for a freeze that describes this connection
    /// without waking its task.
    fn mirror(&self) {
        for (slot, value) in self.slot.counters.iter().zip(self.carried.counters) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// Learn the number of the unit the receiver yields next: under the ring's lock,
    /// which every send holds, the ring's newest is unit `last` and the receiver has
    /// `len()` units still to yield (lagged ones included: it reports them as skipped).
    fn sync<M>(&self, out: &mut Out<M>, rx: &broadcast::Receiver<M>)
    where
        M: Clone,
    {
        let tail = self.hub.tail.lock().unwrap();
        out.next = (tail.last + 1).saturating_sub(rx.len() as u64).max(1);
    }

    /// One read, under the intake lock (a release waits for it to finish). Ok(true): EOF.
    fn read_once<I, M>(&mut self, buf: &mut [u8], inbound: &mut I, tx: &broadcast::Sender<M>) -> io::Result<bool>
    where
        I: Inbound,
        M: AsRef<[u8]> + From<Vec<u8>> + Clone + Send + Sync + 'static,
    {
        let hub = self.hub.clone();
        let Some(intake) = hub.take_in() else {
            return Ok(false);
        };
        let read = self.stream.get()?.try_read(buf);
        match read {
            Ok(0) => Ok(true),
            Ok(n) => {
                self.carried.counters[0] += n as u64;
                Counters::add(&hub.counters.bytes_in, n as u64);
                self.ingest(&buf[..n], inbound, tx);
                self.mirror();
                drop(intake);
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Feed bytes to the framer and broadcast its units (under the gate), each
    /// numbered in the ring under the ring's lock (hub.rs: the tail).
    fn ingest<I: Inbound, M>(&mut self, data: &[u8], inbound: &mut I, tx: &broadcast::Sender<M>)
    where
        M: AsRef<[u8]> + From<Vec<u8>> + Clone + Send + Sync + 'static,
    {
        let mut frames_in = 0;
        let hub = &self.hub;
        let before = inbound.skipped();
        inbound.feed(data, &mut |unit, frames| {
            frames_in += frames;
            let m = M::from(unit);
            let mut tail = hub.tail.lock().unwrap();
            tail.push(Arc::new(m.clone()));
            let _ = tx.send(m);
            hub.sent_seq.store(tail.last, Ordering::SeqCst); // after the send: see hub.rs
        });
        self.carried.counters[1] += frames_in;
        Counters::add(&self.hub.counters.frames_in, frames_in);
        if let (Some((bytes0, resyncs0)), Some((bytes1, resyncs1))) = (before, inbound.skipped()) {
            let c = &self.hub.counters;
            c.skips_counted.store(true, Ordering::Relaxed);
            Counters::add(&c.skipped_bytes, bytes1 - bytes0);
            Counters::add(&c.resyncs, resyncs1 - resyncs0);
        }
        let pending = inbound.pending();
        if !pending.is_empty() || self.slot.flags() & PENDING != 0 {
            let mut copy = self.slot.pending.lock().unwrap(); // (its buffer is reused)
            copy.clear();
            copy.extend_from_slice(pending);
        }
        self.slot.set(PENDING, !pending.is_empty());
    }

    /// Write what is owed and whatever is queued, until the socket would block. Under
    /// the gate: nothing is written once a release holds it (a version-1 release
    /// writes in its `Flush` phase, a pre-copy freeze writes nothing).
    /// Then publish on the slot what the freeze reads (hub.rs); `carrying_in`: a
    /// carried partial frame is not fed yet, so the slot stays STALE.
    fn write_now<M>(&mut self, out: &mut Out<M>, rx: &mut broadcast::Receiver<M>, carrying_in: bool) -> io::Result<()>
    where
        M: AsRef<[u8]> + Clone + Send + 'static,
    {
        let hub = self.hub.clone();
        let gate = hub.gate.read().unwrap();
        if !matches!(*gate, Phase::Run | Phase::Flush(_)) {
            return Ok(());
        }
        let result = self.write_locked(out, rx);
        let (written, head_sent) = out.written();
        let bit = |flag: u32, on: bool| if on { flag } else { 0 };
        let flags = bit(OWES, !out.queue.is_empty() || out.holding()) | bit(STARTED, out.started())
            | bit(HEAD, head_sent != 0) | bit(STALE, carrying_in);
        self.slot.head_sent.store(head_sent, Ordering::Relaxed);
        self.slot.owed_bytes.store(out.bytes, Ordering::Relaxed);
        self.slot.set_written(written);
        self.slot.set_flags(OWES | STARTED | HEAD | STALE, flags);
        self.mirror();
        drop(gate);
        result
    }

    fn write_locked<M>(&mut self, out: &mut Out<M>, rx: &mut broadcast::Receiver<M>) -> io::Result<()>
    where
        M: AsRef<[u8]> + Clone + Send + 'static,
    {
        if out.next == 0 {
            self.sync(out, rx);
        }
        loop {
            // take what the broadcast channel holds for this client (not while held: a
            // pre-copy adopter writes nothing new before the BACKLOG's units)
            let mut found_empty = false;
            while !out.holding() && out.queue.len() < WRITE_UNITS {
                // read the sequence before finding the receiver empty (see hub.rs)
                let seq = self.hub.sent_seq.load(Ordering::SeqCst);
                match rx.try_recv() {
                    Ok(m) => out.take(m),
                    Err(TryRecvError::Lagged(n)) => { out.skipped(n); self.lagged(n) },
                    Err(TryRecvError::Empty) => {
                        self.slot.set_drained(seq);
                        found_empty = true;
                        break;
                    }
                    Err(TryRecvError::Closed) => {
                        found_empty = true;
                        break;
                    }
                }
            }
            if out.queue.is_empty() {
                return Ok(());
            }
            // one system call for everything queued (up to WRITE_UNITS units): a client
            // that fell behind catches up in large writes, not a write per unit
            let (written, asked) = {
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(out.queue.len().min(WRITE_UNITS));
                let mut asked = 0usize;
                for (i, (piece, _)) in out.queue.iter().take(WRITE_UNITS).enumerate() {
                    let data = &piece.bytes()[if i == 0 { out.head_sent } else { 0 }..];
                    asked += data.len();
                    slices.push(IoSlice::new(data));
                }
                let stream = self.stream.get()?;
                let result = if slices.len() == 1 {
                    stream.try_write(&slices[0])
                } else {
                    stream.try_write_vectored(&slices)
                };
                match result {
                    Ok(n) => (n, asked),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
            };
            Counters::add(&self.hub.counters.bytes_out, written as u64);
            out.bytes -= written as u64;
            let mut left = written;
            while left > 0 {
                let unit_left = out.queue.front().expect("written bytes were queued").0.bytes().len() - out.head_sent;
                if left < unit_left {
                    out.head_sent += left;
                    break;
                }
                left -= unit_left;
                let (_, frames) = out.queue.pop_front().expect("queue not empty");
                out.head_sent = 0;
                out.pinned = false;
                self.carried.counters[2] += frames as u64;
                Counters::add(&self.hub.counters.frames_out, frames as u64);
            }
            if written < asked || (found_empty && out.queue.is_empty()) {
                return Ok(()); // the socket is full, or everything is written
            }
        }
    }

    /// RELEASE (version 1): write what is owed until `deadline`, export the rest, park
    /// until the orchestrator decides. None: the client went away meanwhile. The queue
    /// stays as it was, so a RESUME carries on where it stopped.
    async fn release<I: Inbound, M>(&mut self, deadline: Instant, out: &mut Out<M>,
                                    rx: &mut broadcast::Receiver<M>, inbound: &I,
                                    carried_in: &[u8]) -> Option<Decision>
    where
        M: AsRef<[u8]> + From<Vec<u8>> + Clone + Send + Sync + 'static,
    {
        loop {
            if self.write_now(out, rx, !carried_in.is_empty()).is_err() {
                return None;
            }
            if out.queue.is_empty() {
                break;
            }
            let until = tokio::time::Instant::from_std(deadline);
            let stream = match self.stream.get() {
                Ok(stream) => stream,
                Err(_) => return None,
            };
            match tokio::time::timeout_at(until, stream.writable()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) => break,
            }
        }
        self.drain(out, rx);
        let mut pending = carried_in.to_vec();
        pending.extend_from_slice(inbound.pending());
        let (decide, decision) = oneshot::channel();
        let export = Export {
            carried: Carried { id: self.carried.id, pending_in: pending, unsent_out: out.concat(),
                               counters: self.carried.counters },
            fd: self.stream.fd(),
            decision: Some(decide),
            flags: 0,
            owed_bytes: 0,
        };
        let exports = self.hub.exports.lock().unwrap().clone();
        match exports {
            Some(sender) if sender.send(export).is_ok() => {}
            _ => return Some(Decision::Resume), // no release is collecting: keep serving
        }
        Some(decision.await.unwrap_or(Decision::Resume))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out() -> Out<Vec<u8>> {
        Out { queue: VecDeque::new(), head_sent: 0, pinned: false, held: false, held_all: false, bytes: 0, next: 0 }
    }

    fn owned(units: &[(Owned, u32)]) -> Vec<Vec<u8>> {
        units.iter().map(|(u, _)| (**u).as_ref().to_vec()).collect()
    }

    #[test]
    fn shed_drops_oldest_whole_units_never_a_started_one() {
        let mut o = out();
        for unit in [b"aaaa", b"bbbb", b"cccc", b"dddd"] {
            o.push(Piece::Msg(unit.to_vec(), 0), 1);
        }
        o.head_sent = 2; // the first unit is half written
        o.bytes -= 2;
        assert_eq!(o.shed(2, u64::MAX), 2);
        assert_eq!(o.concat(), b"aadddd", "the started unit stays, then the newest");
        assert_eq!(o.bytes, 6);
        let mut whole = out();
        for unit in [b"aa", b"bb", b"cc"] {
            whole.push(Piece::Msg(unit.to_vec(), 0), 3);
        }
        assert_eq!(whole.shed(1, u64::MAX), 6, "frames shed are counted");
        assert_eq!(whole.concat(), b"cc");
        assert_eq!(whole.shed(0, u64::MAX), 3, "nothing started: everything may go");
        assert_eq!(whole.bytes, 0);
    }

    #[test]
    fn shed_keeps_the_bytes_owed_within_the_byte_bound_too() {
        let mut o = out();
        for unit in [b"aaaa", b"bbbb", b"cccc", b"dddd"] {
            o.push(Piece::Msg(unit.to_vec(), 0), 2);
        }
        o.head_sent = 1; // started: stays whatever the bound
        o.bytes -= 1;
        assert_eq!(o.shed(100, 8), 4, "two whole units (2 frames each) over 8 bytes go");
        assert_eq!(o.concat(), b"aaadddd");
        assert_eq!(o.bytes, 7);
        assert_eq!(o.shed(100, 0), 2, "the started unit is never shed, even past the bound");
        assert_eq!(o.concat(), b"aaa");
    }

    #[test]
    fn carried_bytes_without_boundaries_go_out_as_a_started_unit() {
        let mut o = out();
        o.push_carried(b"tail-of-a-frame".to_vec());
        o.push(Piece::Msg(b"next".to_vec(), 0), 1);
        assert!(o.started());
        let (head_sent, units) = o.units();
        assert_eq!(head_sent, 1, "one placeholder byte, counted as written");
        assert_eq!(owned(&units), vec![b"\0tail-of-a-frame".to_vec(), b"next".to_vec()]);
        assert_eq!(o.shed(0, u64::MAX), 1, "a carried unit may start mid-frame: only what follows it goes");
        assert_eq!(o.concat(), b"tail-of-a-frame");
    }

    #[test]
    fn a_backlog_goes_in_front_of_what_came_since() {
        let entries = vec![Entry { id: 1, head_sent: 1, units: vec![(Box::new(b"xyz".to_vec()), 1),
                                                                    (Box::new(b"uv".to_vec()), 2)] }];
        let (table, data, fd) = crate::backlog::write_memfd(&entries).unwrap();
        let fd = fd.unwrap();
        let mut mapped = crate::backlog::read_memfd(fd, table, data, 1).unwrap();
        unsafe { libc::close(fd) };
        let (_, head_sent, units) = mapped.remove(0);
        let mut o = out();
        o.held = true;
        o.push(Piece::Msg(b"newer".to_vec(), 0), 1);
        o.prepend(units, head_sent);
        assert_eq!(o.concat(), b"yzuvnewer");
        assert_eq!(o.bytes, 9);
        assert!(o.started());
        let (again, units) = o.units();
        assert_eq!((again, owned(&units)), (1, vec![b"xyz".to_vec(), b"uv".to_vec(), b"newer".to_vec()]));
    }
}
