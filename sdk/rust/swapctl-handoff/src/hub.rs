//! State shared by the control thread, the accept loop and every connection task.
//!
//! How it works: one `gate` (a std RwLock around the `Phase`) says what connection
//! tasks may do, and the `intake` (a std RwLock and a flag, open exactly in `Run`)
//! whether they may read. A task holds the intake's read lock only while it turns
//! one read into broadcasts (synchronous code, no await), and accepts happen under it
//! too; it holds the gate's read lock while it writes. RELEASE closes the intake
//! (write lock): once it has, no read or accept is in flight and none starts, so
//! nothing more enters the broadcast channel; then it takes the gate to switch to
//! `Flush`. Every task then writes what it owes until the flush deadline, exports its
//! state (fd, partial frame read, bytes still owed) and parks until the orchestrator
//! says RESUME or CLOSE. Adopted connections start in `Hold`: registered, neither
//! reading nor writing, until RESUME switches the gate to `Run`. Once a release holds
//! the gate for writing no byte moves on any connection.
//!
//! Pre-copy (docs/handoff-protocol.md section 10) keeps the freeze O(what changed):
//! every live connection has a `Slot` (its fd, what its task last said about itself,
//! a mailbox of `Cmd`s), and a cell on the board (board.rs) where its task publishes
//! what the freeze reads of it. The freeze switches the gate to `Frozen` without
//! waking every task, reads the board and sends commands only to the connections it
//! must describe:
//! new since the pre-copy, holding a partial frame (`PENDING`), owing bytes (`OWES`),
//! or that may have been sent a unit since they last found their receiver empty
//! (`drained` < `sent_seq`: every broadcast through `Conn::serve` bumps `sent_seq`).
//!
//! The tail (docs/handoff-protocol.md section 12): a task per connection writes each
//! broadcast in its own time, so at 5,000 clients a freeze nearly always finds a
//! fan-out in flight, thousands of connections a unit or two behind. Asking each of
//! them (a task wake-up and a record built by the task) cost the pause 10-25 ms. So
//! every unit that enters the broadcast channel is numbered and kept in a short ring
//! (`Tail`), under one lock with the send, so the channel's order is the numbers'
//! order. A task that knows the number of the next unit its receiver yields (it
//! learns it at its first write) publishes, with every write, how far it has
//! written: the last whole unit and how much of the next one. The freeze then reads
//! what each connection is owed straight from the board and the ring, without waking
//! its task.

use std::collections::HashMap;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener as StdListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::backlog::{Entry, MappedUnit, Owned};
use crate::board::{Board, Seat};
use crate::table::Carried;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Serve: read, accept, write.
    Run,
    /// Adopted, not resumed: read nothing, write nothing.
    Hold,
    /// Released: write what is owed until the deadline, export, park.
    Flush(Instant),
    /// Released after a pre-copy: read nothing, write nothing, answer commands.
    Frozen,
    /// Told to close after a release: every task lets go of its socket.
    Closing,
}

/// The orchestrator's word to a parked (released) connection.
#[derive(Debug)]
pub enum Decision {
    Resume,
    Close,
}

/// A released connection's state, sent by its task to the control thread. A frozen
/// connection (pre-copy) has no decision to wait for: the phase tells it what next.
pub struct Export {
    pub carried: Carried,
    pub fd: i32,
    pub decision: Option<oneshot::Sender<Decision>>,
    /// delta-v1 flags (DEFERRED, HEAD_STARTED) and the bytes it owes that it counted
    /// without walking its broadcast receiver (what is queued there follows in OWED).
    pub flags: u32,
    pub owed_bytes: u64,
}

/// Slot flags: what a connection's task last said about itself.
pub const PENDING: u32 = 1; // its framer holds part of a frame
pub const OWES: u32 = 2; // bytes are queued for it (or held for a backlog)
pub const STARTED: u32 = 4; // the first unit queued is partly written
/// What the slot says may be out of date (a command changed the queue, or a carried
/// partial frame is not yet fed): the freeze asks the task.
pub const STALE: u32 = 8;
/// The next unit is partly written (`Slot::head_sent` > 0).
pub const HEAD: u32 = 16;

/// What the control thread asks of one connection's task.
pub enum Cmd {
    /// Freeze: describe yourself (an `Export` on `Hub::exports`).
    Export,
    /// OWED: every unit still owed, with how far the first was written, at most
    /// so many units and bytes (the oldest whole ones shed first, a started one never).
    Owed(std::sync::mpsc::Sender<Entry>, usize, usize),
    /// A pre-copy delta's state for a staged connection.
    Carry { pending_in: Vec<u8>, unsent_out: Vec<u8>, counters: [u64; 4], hold: bool },
    /// BACKLOG: these units go in front of anything queued; writing starts again.
    Backlog { units: Vec<MappedUnit>, head_sent: usize },
    /// Nothing is owed after all (or the orchestrator was lost): write again.
    Unhold,
    /// Staged, then closed by the previous relay before the freeze: let go, uncounted.
    Unstage,
    /// Cut the client (its carried bytes were lost mid-frame).
    Disconnect,
}

/// One live connection as the control thread sees it. What the freeze reads of
/// every connection (flags, how far it has written, when it last drained) is in its
/// cell on the board (board.rs), which only its task writes (`set*` below).
pub struct Slot {
    pub fd: RawFd,
    seat: Seat,
    /// Bytes of unit `written` (the next one) already written (`HEAD`: not 0).
    pub head_sent: AtomicU64,
    /// Bytes queued for the client and not yet written (as of the last write).
    pub owed_bytes: AtomicU64,
    /// The framer's partial frame (with PENDING), copied under the gate at each read.
    pub pending: Mutex<Vec<u8>>,
    /// The task's per-connection counters (bytes_in, frames_in, frames_out,
    /// lag_drops), mirrored under the gate for a record built without the task.
    pub counters: [AtomicU64; 4],
    cmds: Mutex<Vec<Cmd>>,
    pub notify: Notify,
}

impl Slot {
    fn new(fd: RawFd, seat: Seat) -> Slot {
        Slot { fd, seat, head_sent: AtomicU64::new(0), owed_bytes: AtomicU64::new(0), pending: Mutex::new(Vec::new()),
               counters: Default::default(), cmds: Mutex::new(Vec::new()), notify: Notify::new() }
    }

    /// The flags the task last published (PENDING, OWES, STARTED, STALE, HEAD).
    pub fn flags(&self) -> u32 {
        self.seat.cell().flags.load(Ordering::Relaxed)
    }

    /// Publish how far the client was written (`Cell::written`).
    pub fn set_written(&self, written: u64) {
        self.seat.cell().written.store(written, Ordering::SeqCst);
    }

    /// Publish that the receiver was found empty (`Cell::drained`).
    pub fn set_drained(&self, seq: u64) {
        self.seat.cell().drained.store(seq, Ordering::SeqCst);
    }

    pub fn send(&self, cmd: Cmd) {
        self.cmds.lock().unwrap().push(cmd);
        self.notify.notify_one();
    }

    /// Queue a command without waking the task: for a task that cannot act before the
    /// phase changes (adopted, in `Hold`), which wakes every task anyway. Thousands of
    /// wake-ups inside the pause would compete with the control thread for the CPU.
    pub fn stash<const N: usize>(&self, cmds: [Cmd; N]) {
        self.cmds.lock().unwrap().extend(cmds);
    }

    pub fn take(&self) -> Vec<Cmd> {
        std::mem::take(&mut *self.cmds.lock().unwrap())
    }

    pub fn set(&self, flag: u32, on: bool) {
        self.set_flags(flag, if on { flag } else { 0 });
    }

    /// Publish the flags in `mask` as `bits` say, the others kept: a load, and a store
    /// only when they change (the task is the cell's only writer, board.rs), so a
    /// write publishing its four flags costs no locked instruction.
    pub fn set_flags(&self, mask: u32, bits: u32) {
        let flags = &self.seat.cell().flags;
        let old = flags.load(Ordering::Relaxed);
        let new = (old & !mask) | (bits & mask);
        if new != old {
            flags.store(new, Ordering::Relaxed);
        }
    }
}

/// How a connection left the relay (for the counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    Disconnected,
    HandedOver,
    /// Staged by a pre-copy, closed by the previous relay before the freeze.
    Unstaged,
}

/// Process-wide counters (stats).
#[derive(Default)]
pub struct Counters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub lag_drops: AtomicU64,
    pub connections_total: AtomicU64,
    pub disconnects: AtomicU64,
    pub adopted: AtomicU64,
    pub handed_over: AtomicU64,
    /// Read and never forwarded (garbage, cut frames), and the resyncs that skipped
    /// them; reported only once an `Inbound` that counts them has fed (`skips_counted`).
    pub skipped_bytes: AtomicU64,
    pub resyncs: AtomicU64,
    pub skips_counted: std::sync::atomic::AtomicBool,
}

/// A unit in the ring: shared with the broadcast channel's copy, never copied.
pub type RingUnit = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A ring unit handed to a BACKLOG (`Entry`), still shared.
struct Shared(RingUnit);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

/// The last units broadcast, numbered from 1 in the order the channel holds them
/// (`push` is called under the ring's lock together with the channel's send).
pub struct Tail {
    /// The number of the newest unit (0: none yet).
    pub last: u64,
    /// The newest units, oldest first: `units[i]` is unit `last - len + 1 + i`.
    pub units: std::collections::VecDeque<RingUnit>,
    /// `starts[i]`: the bytes pushed before `units[i]`, so what a connection is owed
    /// is one subtraction (the freeze asks it of every connection, frozen).
    starts: std::collections::VecDeque<u64>,
    /// The bytes pushed, ever.
    pushed: u64,
}

/// Units the ring keeps: a connection owed more than this is described by its task.
pub const TAIL_UNITS: usize = 256;

impl Tail {
    pub fn new() -> Tail {
        Tail { last: 0, units: std::collections::VecDeque::with_capacity(TAIL_UNITS),
               starts: std::collections::VecDeque::with_capacity(TAIL_UNITS), pushed: 0 }
    }

    pub fn push(&mut self, unit: RingUnit) {
        if self.units.len() == TAIL_UNITS {
            self.units.pop_front();
            self.starts.pop_front();
        }
        self.starts.push_back(self.pushed);
        self.pushed += (*unit).as_ref().len() as u64;
        self.units.push_back(unit);
        self.last += 1;
    }

    /// How many bytes units `after + 1 ..= last` hold, less `head_sent` bytes of the
    /// first; None when the ring no longer holds them all.
    pub fn owed_len(&self, after: u64, head_sent: usize) -> Option<usize> {
        let count = self.last.checked_sub(after)? as usize;
        if count > self.units.len() {
            return None;
        }
        let from = if count == 0 { self.pushed } else { self.starts[self.units.len() - count] };
        ((self.pushed - from) as usize).checked_sub(head_sent)
    }

    /// The smallest `after` whose units `after + 1 ..= last` are all in the ring and
    /// hold at most `max_bytes` (`last` when even the newest unit holds more).
    pub fn nearest_within(&self, max_bytes: usize) -> u64 {
        let oldest = self.last - self.units.len() as u64;
        let mut after = self.last;
        while after > oldest && self.owed_len(after - 1, 0).is_some_and(|n| n <= max_bytes) {
            after -= 1;
        }
        after
    }

    /// Units `after + 1 ..= last` (all in the ring: see `owed_len`).
    pub fn since(&self, after: u64) -> Vec<&[u8]> {
        let count = ((self.last - after) as usize).min(self.units.len());
        self.units.range(self.units.len() - count..).map(|u| (**u).as_ref()).collect()
    }

    /// Units `after + 1 ..= last` as a BACKLOG entry's (one frame each, as a task
    /// counts a broadcast message), shared, not copied.
    pub fn lend_since(&self, after: u64) -> Vec<(Owned, u32)> {
        let count = ((self.last - after) as usize).min(self.units.len());
        self.units.range(self.units.len() - count..).map(|u| (Box::new(Shared(u.clone())) as Owned, 1)).collect()
    }

    /// The bytes of units `after + 1 ..= last`, less `head_sent` bytes of the first;
    /// None when the ring no longer holds them all or they pass `max_bytes`.
    pub fn owed(&self, after: u64, head_sent: usize, max_bytes: usize) -> Option<Vec<u8>> {
        let len = self.owed_len(after, head_sent).filter(|len| *len <= max_bytes)?;
        let mut bytes = Vec::with_capacity(len);
        let mut skip = head_sent;
        for unit in self.since(after) {
            let from = skip.min(unit.len());
            skip -= from;
            bytes.extend_from_slice(&unit[from..]);
        }
        Some(bytes)
    }
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

pub struct Hub {
    pub gate: RwLock<Phase>,
    /// Held (for reading) by each read and accept, instead of the gate, so stopping
    /// them waits for a read in flight only, not for the writes that hold the gate all
    /// the time while thousands of tasks fan a broadcast out (`take_in`).
    intake: RwLock<()>,
    /// Reads and accepts may start: true exactly while the phase is `Run`. Set false
    /// under the intake's write lock; read without a lock where only a hint is
    /// needed (`reading`, once per task turn).
    intake_open: AtomicBool,
    wake_tx: watch::Sender<u64>,
    wake_rx: watch::Receiver<u64>,
    pub listener: Mutex<Option<Arc<AsyncFd<StdListener>>>>,
    pub live: Mutex<HashMap<u64, Arc<Slot>>>,
    /// What the freeze reads of every connection in `live` (board.rs).
    pub board: Board,
    pub gone: Notify,
    pub exports: Mutex<Option<mpsc::UnboundedSender<Export>>>,
    pub parked: Mutex<HashMap<u64, oneshot::Sender<Decision>>>,
    pub incoming: mpsc::UnboundedSender<crate::Conn>,
    /// Connections queued for `Handoff::accept` (adopted, probes) and how many the
    /// relay has taken: it subscribes each to its broadcast channel before it calls
    /// `accept` again, so ADOPT and PROBE are answered only once all were taken.
    queued: AtomicU64,
    taken: AtomicU64,
    taken_lock: Mutex<()>,
    taken_cv: Condvar,
    pub counters: Counters,
    next_id: AtomicU64,
    /// Units broadcast through `Conn::serve` so far (see the module header).
    pub sent_seq: AtomicU64,
    /// The newest units broadcast, numbered (see the module header).
    pub tail: Mutex<Tail>,
    /// Adopter, pre-copy: connections written nothing until their BACKLOG (id -> flags).
    pub holding: Mutex<HashMap<u64, u32>>,
    /// Adopter, `defer-all` (docs/handoff-protocol.md section 13): every staged
    /// connection is written nothing until the BACKLOG, which says what each is owed.
    /// One flag, not a mark per connection: setting it costs the pause nothing.
    hold_staged: AtomicBool,
    /// Connections that found input while they could not read (`Hold`, `Frozen`): a
    /// resume wakes them before the others (see `resume`).
    input: Mutex<Vec<Arc<Slot>>>,
    /// Staged sockets (adopted in `Hold`, not registered with the reactor: conn.rs
    /// `Sock`), watched for input only, in an epoll set of their own that nothing
    /// waits on: `resume` reads it once. (The connection id is each event's data.)
    staging: Mutex<Option<OwnedFd>>,
    /// The staging set once read: closed after the control thread answered (closing
    /// an epoll set removes each of its entries: 3.5 ms at 5,000, not in the pause).
    retired_staging: Mutex<Option<OwnedFd>>,
    pub started: Instant,
}

impl Hub {
    pub fn new(incoming: mpsc::UnboundedSender<crate::Conn>) -> Arc<Hub> {
        let (wake_tx, wake_rx) = watch::channel(0);
        Arc::new(Hub {
            gate: RwLock::new(Phase::Run),
            intake: RwLock::new(()),
            intake_open: AtomicBool::new(true),
            wake_tx,
            wake_rx,
            listener: Mutex::new(None),
            live: Mutex::new(HashMap::new()),
            board: Board::default(),
            gone: Notify::new(),
            exports: Mutex::new(None),
            parked: Mutex::new(HashMap::new()),
            incoming,
            queued: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            taken_lock: Mutex::new(()),
            taken_cv: Condvar::new(),
            counters: Counters::default(),
            next_id: AtomicU64::new(1),
            sent_seq: AtomicU64::new(0),
            tail: Mutex::new(Tail::new()),
            holding: Mutex::new(HashMap::new()),
            hold_staged: AtomicBool::new(false),
            input: Mutex::new(Vec::new()),
            staging: Mutex::new(None),
            retired_staging: Mutex::new(None),
            started: Instant::now(),
        })
    }

    pub fn phase(&self) -> Phase {
        *self.gate.read().unwrap()
    }

    /// Set the phase once no read, accept or write is in flight; wake every task.
    pub fn set_phase(&self, phase: Phase) {
        if phase == Phase::Run {
            self.open();
            self.input.lock().unwrap().clear(); // (all are woken)
        } else {
            self.close_intake();
            *self.gate.write().unwrap() = phase;
        }
        self.wake();
    }

    /// Serve again (`Run`, the intake open), waking first the tasks whose connections
    /// found input meanwhile, then every task; returns when the first were woken.
    ///
    /// Why first: waking every task costs about 1 ms at 5,000 connections (a wake-up
    /// each, from this thread), and a client that sent something during the pause
    /// waited for it, wherever its task fell in that order. A task that cannot read
    /// (`Hold`, `Frozen`) waits for input too, and says so here when it comes
    /// (`input_came`); a connection whose input comes later wakes its own task. So once
    /// the first are woken, every connection with input is being read: the pause is
    /// over, and the rest (writing what they are sent or owed) is the clients' pause.
    pub fn resume(&self) -> u64 {
        self.open();
        for slot in std::mem::take(&mut *self.input.lock().unwrap()) {
            slot.notify.notify_one();
        }
        for id in self.staged_input() {
            if let Some(slot) = self.slot(id) {
                slot.notify.notify_one();
            }
        }
        let resumed_ns = crate::control::monotonic_ns();
        self.wake();
        resumed_ns
    }

    fn open(&self) {
        *self.gate.write().unwrap() = Phase::Run;
        self.intake_open.store(true, Ordering::Release);
    }

    /// `defer-all`: hold every staged connection (before the resume that starts them).
    pub fn hold_staged(&self) {
        self.hold_staged.store(true, Ordering::SeqCst);
    }

    /// Staged connections are held. A task reads this before it takes its commands:
    /// once it reads false, every BACKLOG command sent before the release is in its
    /// mailbox, so its owed units go out before anything newer.
    pub fn holds_staged(&self) -> bool {
        self.hold_staged.load(Ordering::SeqCst)
    }

    /// The BACKLOG's commands are sent (or the orchestrator is gone): staged
    /// connections write again; every task is woken to find out.
    pub fn release_staged(&self) {
        if self.hold_staged.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    /// A task that cannot read found input on its connection (see `resume`).
    pub fn input_came(&self, slot: &Arc<Slot>) {
        self.input.lock().unwrap().push(slot.clone());
    }

    /// Watch a staged socket (connection `id`) for input until the resume.
    pub fn stage(&self, id: u64, fd: RawFd) -> std::io::Result<()> {
        let mut staging = self.staging.lock().unwrap();
        if staging.is_none() {
            let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if ep < 0 {
                return Err(std::io::Error::last_os_error());
            }
            *staging = Some(unsafe { OwnedFd::from_raw_fd(ep) });
        }
        let ep = staging.as_ref().expect("created above").as_raw_fd();
        // edge-triggered: each socket is reported once, and input that came before it
        // was added is reported too (adding a ready socket queues its event)
        let mut event = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32, u64: id };
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The staged connections that had input (or were closed by their client), once;
    /// the staging set is retired (the tasks register their sockets from now on).
    fn staged_input(&self) -> Vec<u64> {
        let Some(ep) = self.staging.lock().unwrap().take() else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, 0) };
            if n <= 0 {
                break;
            }
            ids.extend(events[..n as usize].iter().map(|e| e.u64));
            if (n as usize) < events.len() {
                break;
            }
        }
        *self.retired_staging.lock().unwrap() = Some(ep);
        ids
    }

    /// Close a staging set read by a resume (the control thread, once it answered).
    pub fn close_retired(&self) {
        let retired = self.retired_staging.lock().unwrap().take();
        drop(retired);
    }

    /// A staged relay let go of what it staged (CLOSE): nothing to watch any more.
    pub fn unstage_all(&self) {
        self.staging.lock().unwrap().take();
    }

    /// No read or accept starts from now on; none is in flight once this returns.
    /// Tasks find out at their next turn (`reading`), without a wake-up: in `Run` they
    /// write on what they were sent (a pre-copy freeze's first step).
    pub fn close_intake(&self) {
        let _intake = self.intake.write().unwrap();
        self.intake_open.store(false, Ordering::Release);
    }

    /// `close_intake`, only if no read or accept holds the intake now (true: closed).
    pub fn try_close_intake(&self) -> bool {
        match self.intake.try_write() {
            Ok(_intake) => {
                self.intake_open.store(false, Ordering::Release);
                true
            }
            Err(_) => false,
        }
    }

    /// Hold the intake for one read or accept; None when it is closed.
    pub fn take_in(&self) -> Option<RwLockReadGuard<'_, ()>> {
        let intake = self.intake.read().unwrap();
        self.intake_open.load(Ordering::Acquire).then_some(intake)
    }

    /// A task may look for reads: `Run`, and the intake open (a hint: the read itself
    /// holds the intake and looks again).
    pub fn reading(&self, phase: Phase) -> bool {
        phase == Phase::Run && self.intake_open.load(Ordering::Acquire)
    }

    pub fn wake(&self) {
        let next = *self.wake_rx.borrow() + 1;
        let _ = self.wake_tx.send(next);
    }

    pub fn wakeups(&self) -> watch::Receiver<u64> {
        self.wake_rx.clone()
    }

    /// A new connection id (or keep `id` from a handoff); the connection is live. Ids
    /// are given under the `live` lock, so a pre-copy's snapshot and its watermark
    /// (`next_id`) agree: every id below the watermark is in the snapshot or gone.
    pub fn register(&self, id: Option<u64>, fd: RawFd) -> (u64, Arc<Slot>) {
        let slot = Arc::new(Slot::new(fd, self.board.seat(STALE)));
        let mut live = self.live.lock().unwrap();
        let id = match id {
            Some(id) => {
                self.next_id.fetch_max(id + 1, Ordering::Relaxed);
                id
            }
            None => self.next_id.fetch_add(1, Ordering::Relaxed),
        };
        slot.seat.claim(id);
        live.insert(id, slot.clone());
        drop(live);
        Counters::add(&self.counters.connections_total, 1);
        (id, slot)
    }

    /// The next id this relay will give (read under the `live` lock).
    pub fn next_id(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// The connection ended (client gone, closed after a handoff, or unstaged). Called
    /// before its socket is dropped, so a descriptor found in `live` is still open.
    pub fn forget(&self, id: u64, how: Gone) {
        let left = self.live.lock().unwrap().remove(&id);
        if let Some(slot) = left {
            slot.seat.vacate();
            match how {
                Gone::Disconnected => Counters::add(&self.counters.disconnects, 1),
                Gone::HandedOver => Counters::add(&self.counters.handed_over, 1),
                Gone::Unstaged => {
                    self.counters.adopted.fetch_sub(1, Ordering::Relaxed);
                    self.counters.connections_total.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        self.holding.lock().unwrap().remove(&id);
        self.gone.notify_waiters();
    }

    pub fn slot(&self, id: u64) -> Option<Arc<Slot>> {
        self.live.lock().unwrap().get(&id).cloned()
    }

    /// Queue a connection for `Handoff::accept`.
    pub fn queue(&self, conn: crate::Conn) -> bool {
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.incoming.send(conn).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The relay took one queued connection (and came back to `accept`); the waiter
    /// is woken once, when the last one is taken.
    pub fn taken(&self) {
        let taken = self.taken.fetch_add(1, Ordering::SeqCst) + 1;
        if taken >= self.queued.load(Ordering::SeqCst) {
            let _guard = self.taken_lock.lock().unwrap();
            self.taken_cv.notify_all();
        }
    }

    /// Wait until the relay has taken every queued connection (at most `limit`).
    pub fn wait_taken(&self, limit: Duration) -> bool {
        let want = self.queued.load(Ordering::SeqCst);
        let deadline = Instant::now() + limit;
        let mut guard = self.taken_lock.lock().unwrap();
        while self.taken.load(Ordering::SeqCst) < want {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self.taken_cv.wait_timeout(guard, deadline - now).unwrap().0;
        }
        true
    }

    pub fn connections(&self) -> usize {
        self.live.lock().unwrap().len()
    }

    pub fn has_listener(&self) -> bool {
        self.listener.lock().unwrap().is_some()
    }

    /// The state named in HELLO and stats.
    pub fn state(&self) -> &'static str {
        match self.phase() {
            Phase::Hold => "adopted",
            Phase::Flush(_) | Phase::Frozen | Phase::Closing => "released",
            Phase::Run if self.has_listener() => "active",
            Phase::Run if self.connections() > 0 => "probing",
            Phase::Run => "standby",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(units: &[&[u8]]) -> Tail {
        let mut tail = Tail::new();
        for unit in units {
            tail.push(Arc::new(unit.to_vec()));
        }
        tail
    }

    #[test]
    fn the_ring_says_what_a_connection_is_owed_from_how_far_it_wrote() {
        let tail = ring(&[b"aaaa", b"bb", b"cccccc"]);
        assert_eq!(tail.last, 3);
        assert_eq!(tail.owed_len(3, 0), Some(0), "written through the last unit");
        assert_eq!(tail.owed_len(2, 0), Some(6));
        assert_eq!(tail.owed_len(1, 1), Some(7), "one byte of unit 2 was written");
        assert_eq!(tail.owed(1, 1, 100), Some(b"bcccccc".to_vec()));
        assert_eq!(tail.owed(0, 3, 100), Some(b"abbcccccc".to_vec()));
        assert_eq!(tail.owed(0, 0, 5), None, "past the byte bound");
        let units: Vec<Vec<u8>> = tail.since(1).into_iter().map(<[u8]>::to_vec).collect();
        let lent: Vec<(Vec<u8>, u32)> = tail.lend_since(1).iter().map(|(u, f)| ((**u).as_ref().to_vec(), *f)).collect();
        assert_eq!(lent, vec![(b"bb".to_vec(), 1), (b"cccccc".to_vec(), 1)], "a BACKLOG's units: the same, one frame each");
        assert!(tail.lend_since(3).is_empty());
        assert_eq!(tail.nearest_within(6), 2, "unit 3 alone: 6 bytes");
        assert_eq!(tail.nearest_within(8), 1, "units 2-3: 8 bytes");
        assert_eq!(tail.nearest_within(100), 0, "the whole ring");
        assert_eq!(tail.nearest_within(5), 3, "not even the newest");
        assert_eq!(units, vec![b"bb".to_vec(), b"cccccc".to_vec()]);
    }

    #[test]
    fn a_connection_owed_more_than_the_ring_holds_is_not_described_from_it() {
        let mut tail = ring(&[]);
        for i in 0..TAIL_UNITS + 3 {
            tail.push(Arc::new(vec![i as u8]));
        }
        assert_eq!(tail.units.len(), TAIL_UNITS);
        assert_eq!(tail.owed_len(2, 0), None, "unit 3 left the ring");
        assert_eq!(tail.owed_len(3, 0), Some(TAIL_UNITS));
        assert_eq!(tail.owed(3, 0, usize::MAX).map(|b| b[0]), Some(3), "unit 4 holds byte 3");
        assert_eq!(tail.nearest_within(usize::MAX), 3, "no further back than the ring holds");
    }

    #[test]
    fn what_is_owed_is_counted_right_after_the_ring_wrapped() {
        let mut tail = ring(&[]);
        for i in 0..TAIL_UNITS * 2 + 5 {
            tail.push(Arc::new(vec![0u8; i % 7 + 1]));
        }
        for after in [tail.last - TAIL_UNITS as u64, tail.last - 100, tail.last - 1, tail.last] {
            let counted: usize = tail.since(after).iter().map(|u| u.len()).sum();
            assert_eq!(tail.owed_len(after, 0), Some(counted), "after unit {}", after);
            assert_eq!(tail.owed_len(after, 1), counted.checked_sub(1));
        }
    }
}
