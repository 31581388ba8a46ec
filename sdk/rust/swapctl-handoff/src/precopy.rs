//! The `precopy` extension, version 1 (docs/handoff-protocol.md section 10): a pause
//! that grows with neither clients nor backlogs. Requests served on the control thread.
//!
//! Serving relay:
//! - PRECOPY: the listener and a duplicate of every connection's fd go out (`precopied`
//!   parts, conn-v1) while it keeps serving; it notes the ids sent and the next id it
//!   will give (the watermark), under one lock, so the two agree.
//! - RELEASE naming that pre-copy (the freeze): the intake closes (no read or accept;
//!   tasks write on) until the broadcasts already read are written out, then the gate
//!   goes to `Frozen` (no read, write or accept) without waking the tasks; only the connections
//!   that changed are described (hub.rs says how they are found): a connection whose
//!   task published how far it has written, owed at most a few units still in the
//!   ring (a fan-out in flight), is described from its slot, with those bytes inline
//!   and without waking its task (the tail extension, section 12); the others are asked to
//!   describe themselves: new ones (id >= watermark) with their fds, ones holding a
//!   partial frame, ones owed more (DEFERRED: the bytes stay where they are). Closed
//!   ids are found only when the counts disagree. Nothing is flushed.
//! - OWED (asked once the candidate resumed): each DEFERRED connection's task hands
//!   over its units (references, no copy) and the control thread writes them into a
//!   memfd (backlog.rs), sent as BACKLOG. The relay keeps its own until CLOSE. With
//!   `defer-all`, the first OWED covers the connections owed the end of a fan-out
//!   from the ring, by how far each had written (its cell), waking none of their
//!   tasks: at 5,000 clients that was up to 5,000 wake-ups while every client waited.
//!
//! Adopting relay:
//! - PREADOPT: like ADOPT (registered, queued for `accept`, held in `Hold`), staged.
//! - ADOPT of a delta-v1: closed ids are unstaged (their tasks end), carried state
//!   goes to each staged connection's task as a command, new connections are added;
//!   a DEFERRED one is held: nothing is written to it until its BACKLOG.
//! - RESUME: as version 1. BACKLOG: maps the memfd; each held connection gets its
//!   units in front of anything newer and writes again. A relay that loses the
//!   orchestrator while holding cuts the clients whose stream stopped mid-frame and
//!   serves the others without the lost bytes.

use std::collections::HashSet;
use std::os::unix::io::RawFd;
use std::os::unix::net::UnixStream as StdStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::backlog::{self, Entry, SharedTail};
use crate::control::{log, monotonic_ns, Control, Reply};
use crate::hub::{Cmd, Counters, Export, Phase, Slot, HEAD, OWES, PENDING, STALE, STARTED};
use crate::sched;
use crate::table::{self, Carried, Record, DEFERRED, HEAD_STARTED, NO_FD, TAIL};
use crate::wire::Message;

pub const PRECOPY: &str = "precopy";
pub const PRECOPY_VERSION: u64 = 1;
const ASK_DEADLINE: Duration = Duration::from_secs(2);
/// Before a freeze, wait at most this long for a moment when every connection has
/// written what it was sent (see `wait_fanned_out`).
const FAN_OUT_WAIT: Duration = Duration::from_millis(20);
const FAN_OUT_LOOK: Duration = Duration::from_micros(100);
/// Before a freeze stops reading, wait at most this long for a moment when no read
/// is in flight, looking this often (see `stop_reading`).
const INTAKE_WAIT: Duration = Duration::from_millis(5);
const INTAKE_LOOK: Duration = Duration::from_micros(20);
/// Once reading has stopped, wait at most this long for the fan-out in flight to
/// finish, and give up sooner if no task catches up for DRAIN_STALL (see
/// `wait_fanned_out`).
const DRAIN_WAIT: Duration = Duration::from_millis(50);
const DRAIN_STALL: Duration = Duration::from_millis(2);
/// A connection owed at most this many bytes of the ring's units is described from
/// its slot, the bytes inline in the delta; the freeze inlines at most TAIL_BUDGET
/// bytes in all (the rest are asked, as DEFERRED when they owe bytes).
const TAIL_INLINE: usize = 64 * 1024;
const TAIL_BUDGET: usize = 8 * 1024 * 1024;
/// A `later` connection that has not numbered its units (it never wrote since it
/// subscribed): the first OWED asks its task.
const ASK_TASK: u64 = u64::MAX;

/// What the last PRECOPY sent: the freeze's delta is computed against it.
#[derive(Clone, Debug)]
pub struct PreCopy {
    pub generation: u64,
    pub watermark: u64,
    pub ids: HashSet<u64>,
}

/// The extension's state on the control thread.
#[derive(Default)]
pub struct PreState {
    generation: u64,
    precopied: Option<PreCopy>,
    /// Frozen relay: the DEFERRED connections, whose units OWED will ask for.
    owed: Vec<u64>,
    /// Frozen relay, `defer-all`: the connections owed the end of a fan-out, which
    /// the first OWED covers (then `owed`, in a BACKLOG of its own: `more`), each with
    /// the number of the last unit it was written whole, from which the ring says
    /// what it is owed; ASK_TASK: its task must say.
    later: Vec<(u64, u64)>,
    /// Adopter: pre-adopted, not resumed.
    pub staged: bool,
    /// The relay's other threads, as the last PRECOPY found them (sched.rs).
    threads: Vec<libc::pid_t>,
}

impl PreState {
    pub fn resumed(&mut self) {
        self.owed.clear();
        self.later.clear();
        self.staged = false;
    }
}

/// What a frozen connection is owed, as its slot tells it.
enum Owed {
    Nothing,
    /// The last so many bytes of the delta's tail section (`tail` extension).
    Tail(usize),
    /// These bytes, inline in the delta (the ring's units it was not written).
    Inline(Vec<u8>),
    /// More than the ring holds, or units it did not number: OWED sends them.
    Deferred,
    /// `defer-all`: the end of the ring is owed, the first OWED says what; no
    /// record unless the connection has a partial frame.
    Later,
}

/// A pre-copied connection described from its slot, its task untouched: its partial
/// frame `pending`, and what it is owed (`head_sent` bytes of the ring's first unit
/// it is owed were written; `flags`: the slot's).
fn from_slot(conn_id: u64, slot: &Slot, pending: Vec<u8>, owed: Owed, flags: u32) -> Export {
    let head_started = if flags & HEAD != 0 { HEAD_STARTED } else { 0 };
    let counters = [0, 1, 2, 3].map(|i| slot.counters[i].load(Ordering::Relaxed));
    let (unsent, flags, owed_bytes) = match owed {
        Owed::Nothing => (Vec::new(), 0, 0),
        Owed::Tail(n) => (Vec::new(), TAIL | head_started, n as u64),
        Owed::Inline(bytes) => (bytes, head_started, 0),
        Owed::Deferred => (Vec::new(), DEFERRED | if flags & STARTED != 0 { HEAD_STARTED } else { 0 },
                           slot.owed_bytes.load(Ordering::Relaxed)),
        Owed::Later => (Vec::new(), 0, 0),
    };
    Export {
        carried: Carried { id: conn_id, pending_in: pending, unsent_out: unsent, counters },
        fd: slot.fd,
        decision: None,
        flags,
        owed_bytes,
    }
}

fn close_fds(fds: &[RawFd]) {
    for fd in fds {
        unsafe { libc::close(*fd) };
    }
}

impl Control {
    // ----- the serving relay ---------------------------------------------------------

    /// PRECOPY: every fd and the listener, while this relay keeps serving.
    pub(crate) fn precopy(&self, id: &Value) -> Reply {
        if self.hub.phase() != Phase::Run || !self.hub.has_listener() {
            return Err(format!("pre-copy needs an active relay, this one is {}", self.hub.state()));
        }
        let listener = self.hub.listener.lock().unwrap().clone().ok_or("no listener")?;
        let (mut records, mut dups) = (Vec::new(), Vec::new());
        let watermark = {
            // a descriptor found in `live` is open (a task forgets itself before it
            // closes): duplicate it under the lock, so it cannot be closed and reused
            let live = self.hub.live.lock().unwrap();
            for (conn_id, slot) in live.iter() {
                let dup = unsafe { libc::fcntl(slot.fd, libc::F_DUPFD_CLOEXEC, 0) };
                if dup < 0 {
                    let e = std::io::Error::last_os_error();
                    close_fds(&dups);
                    return Err(format!("duplicating connection {}'s fd: {}", conn_id, e));
                }
                dups.push(dup);
                records.push((Record { carried: Carried { id: *conn_id, ..Carried::default() }, ..Record::default() },
                              Some(dup)));
            }
            self.hub.next_id()
        };
        let threads = sched::siblings();
        let generation = {
            let mut pre = self.pre.lock().unwrap();
            pre.threads = threads;
            pre.generation += 1;
            let ids = records.iter().map(|(r, _)| r.carried.id).collect();
            pre.precopied = Some(PreCopy { generation: pre.generation, watermark, ids });
            pre.generation
        };
        let count = records.len();
        let fd = listener.get_ref();
        let sent = self.send_parts("precopied", id, table::TABLE, &json!({"generation": generation}),
                                   Some(std::os::unix::io::AsRawFd::as_raw_fd(fd)), &[], records, &[]);
        close_fds(&dups);
        sent?;
        log("precopied", format!("connections={} generation={}", count, generation));
        Ok(None)
    }

    /// RELEASE naming a pre-copy: stop reading, writing and accepting; describe only
    /// what changed since the pre-copy.
    pub(crate) fn freeze(&self, msg: &Message, id: &Value) -> Reply {
        if self.hub.phase() != Phase::Run {
            return Err(format!("cannot release in state {}: already released or not resumed", self.hub.state()));
        }
        let generation = msg.json.get("precopy").and_then(Value::as_u64);
        let (pre, threads) = {
            let mut state = self.pre.lock().unwrap();
            match &state.precopied {
                Some(pre) if Some(pre.generation) == generation => {}
                other => {
                    let last = other.as_ref().map_or("none".to_string(), |p| p.generation.to_string());
                    return Err(format!("no pre-copy {} here (the last was {}): pre-copy again",
                                       msg.json["precopy"], last));
                }
            }
            self.refuse_if_holding()?;
            (state.precopied.take().expect("checked above"), state.threads.clone())
        };
        // from here the freeze waits for the workers: they run just below its priority
        // until it has answered (sched.rs)
        let lent = sched::lend(&threads);
        // defer-all: what clients are owed costs the pause nothing, so the end of the
        // fan-out in flight is not waited for inside it; a quiet moment before it still
        // is (outside the pause: every client owed nothing is written to at once)
        let defer_all = msg.json.get("defer_all").map_or(false, |d| !d.is_null());
        let waited_us = self.wait_fanned_out(FAN_OUT_WAIT, FAN_OUT_WAIT, false);
        // (defer-all) the connections the first OWED covers: one entry a live connection
        // at most, and a spare (see the walk); written to now, not inside the pause
        let mut later = vec![(0u64, 0u64); self.hub.connections() + 64];
        let stopped_ns = self.stop_reading();
        let drained_us = if defer_all { 0 } else { self.wait_fanned_out(DRAIN_WAIT, DRAIN_STALL, true) };
        let (sender, mut exports) = mpsc::unbounded_channel::<Export>();
        *self.hub.exports.lock().unwrap() = Some(sender);
        let by_tail = msg.json.get("tail").map_or(false, |t| !t.is_null());
        // (defer-all) the bytes the first OWED will cover (`later`'s)
        let later_bytes: u64;
        let (gated_ns, walked_ns): (u64, u64);
        let (asked, closed, mut got, trailer, tail_meta) = {
            let mut gate = self.hub.gate.write().unwrap(); // waits for writes in flight
            *gate = Phase::Frozen;
            let live = self.hub.live.lock().unwrap();
            gated_ns = monotonic_ns();
            let tail = self.hub.tail.lock().unwrap();
            let seq = self.hub.sent_seq.load(Ordering::SeqCst);
            let mut asked = HashSet::new();
            let mut described = Vec::new();
            let (mut new, mut budget, mut first_owed) = (0usize, TAIL_BUDGET, u64::MAX);
            // the board, not the slots (board.rs): a connection's slot is looked up
            // only to describe it or ask it
            if later.len() <= live.len() {
                later.resize(live.len() + 1, (0, 0)); // (connections came meanwhile)
            }
            let mut n_later = 0usize;
            // (defer-all) a connection written whole through unit `after` >= `nearest`
            // is owed at most TAIL_INLINE bytes of the ring's end: one compare a cell
            let nearest = if defer_all { tail.nearest_within(TAIL_INLINE) } else { tail.last };
            self.hub.board.each(|cell| {
                let Some(conn_id) = cell.id() else { return };
                let is_new = conn_id >= pre.watermark;
                new += usize::from(is_new);
                let flags = cell.flags.load(Ordering::Relaxed);
                let written = cell.written.load(Ordering::SeqCst);
                // (defer-all) the common cases first, without a branch between them: a
                // connection not new, numbered, holding no partial frame and not mid-unit,
                // written through the ring's end (owed nothing) or through a unit from
                // `nearest` on (owed its end: later). Under load a cell is one or the
                // other about at random: decided with a branch each (and the bytes
                // counted a cell at a time), the walk over 5,000 cells took a median of
                // 74-87 µs; like this, 48-53 µs (interleaved runs, walk_us in the log).
                let after = written.wrapping_sub(1);
                if defer_all & !is_new & (flags & (STALE | PENDING | HEAD) == 0) & (written != 0) & (after >= nearest) {
                    later[n_later] = (conn_id, after);
                    n_later += usize::from(written <= tail.last); // (else: owed nothing)
                    return;
                }
                let slot = || live.get(&conn_id); // (a seated cell is in `live`)
                let head_sent = || match slot() {
                    Some(slot) if flags & HEAD != 0 => slot.head_sent.load(Ordering::Relaxed) as usize,
                    _ => 0,
                };
                // what the slot says it is owed (the module header says how): nothing,
                // the end of the ring (by tail, or inline), or more (DEFERRED)
                let owed = if is_new || flags & STALE != 0 {
                    None // a new connection's fd moves now; a stale slot: ask the task
                } else if written > tail.last {
                    Some(Owed::Nothing) // written everything the channel holds
                } else if defer_all {
                    // the end of a fan-out (or what the receiver holds), not started: the
                    // first OWED; a stream stopped mid-frame, more than the ring's end, or
                    // units it did not number: a DEFERRED record (held on its own, cut if
                    // the orchestrator is lost mid-frame), the second OWED
                    if written != 0 {
                        if flags & HEAD == 0 && after >= nearest {
                            later[n_later] = (conn_id, after);
                            n_later += 1;
                            Some(Owed::Later)
                        } else {
                            Some(Owed::Deferred)
                        }
                    } else if flags & OWES == 0 && cell.drained.load(Ordering::SeqCst) >= seq {
                        Some(Owed::Nothing)
                    } else if flags & (OWES | STARTED) == 0 {
                        later[n_later] = (conn_id, ASK_TASK); // (what its receiver holds)
                        n_later += 1;
                        Some(Owed::Later)
                    } else {
                        Some(Owed::Deferred)
                    }
                } else if written != 0 && by_tail {
                    Some(tail.owed_len(written - 1, head_sent()).filter(|n| *n <= TAIL_INLINE)
                        .map_or(Owed::Deferred, |n| {
                            first_owed = first_owed.min(written - 1);
                            Owed::Tail(n)
                        }))
                } else if written != 0 {
                    Some(tail.owed(written - 1, head_sent(), TAIL_INLINE.min(budget)).map_or(Owed::Deferred, |bytes| {
                        budget -= bytes.len();
                        Owed::Inline(bytes)
                    }))
                } else if flags & OWES != 0 {
                    Some(Owed::Deferred) // queued units this task did not number
                } else if cell.drained.load(Ordering::SeqCst) < seq {
                    None // the receiver may hold units: ask
                } else {
                    Some(Owed::Nothing)
                };
                let quiet = matches!(owed, Some(Owed::Nothing | Owed::Later));
                if quiet && flags & PENDING == 0 {
                    return; // its socket is already staged, nothing to say (now)
                }
                let Some(slot) = slot() else { return };
                let Some(owed) = owed else {
                    asked.insert(conn_id);
                    slot.send(Cmd::Export);
                    return;
                };
                let pending = if flags & PENDING != 0 { slot.pending.lock().unwrap().clone() } else { Vec::new() };
                if pending.is_empty() && quiet {
                    return;
                }
                described.push(from_slot(conn_id, slot, pending, owed, flags));
            });
            walked_ns = monotonic_ns();
            later.truncate(n_later);
            // what they are owed, from the bytes after each unit from `nearest` on
            later_bytes = if later.is_empty() {
                0
            } else {
                let owed_after: Vec<u64> = (nearest..=tail.last).map(|a| tail.owed_len(a, 0).unwrap_or(0) as u64).collect();
                later.iter().map(|(_, after)| owed_after.get(after.wrapping_sub(nearest) as usize).unwrap_or(&0)).sum()
            };
            let closed: Vec<u64> = if live.len() - new != pre.ids.len() {
                pre.ids.iter().filter(|i| !live.contains_key(i)).copied().collect()
            } else {
                Vec::new()
            };
            // the tail section: the units of the ring from the oldest any record owes
            let mut trailer = Vec::new();
            let mut tail_meta = Value::Null;
            if first_owed != u64::MAX {
                let units = tail.since(first_owed);
                table::encode_tail(&mut trailer, &units);
                tail_meta = json!({"units": units.len(), "bytes": trailer.len() - 4 * units.len()});
            }
            (asked, closed, described, trailer, tail_meta)
        };
        let (asked_n, from_slots) = (asked.len(), got.len());
        let answers = self.collect(&mut exports, asked.clone(), Instant::now() + ASK_DEADLINE);
        let mut unanswered = asked;
        for export in answers.iter() {
            unanswered.remove(&export.carried.id);
        }
        got.extend(answers);
        *self.hub.exports.lock().unwrap() = None;
        log("freeze", format!("asked={} from_slots={} fan_out_wait_us={} drain_us={} gate_us={} walk_us={} \
                               threads_raised={}{}", asked_n, from_slots, waited_us, drained_us,
                              gated_ns.saturating_sub(stopped_ns) / 1000, walked_ns.saturating_sub(gated_ns) / 1000,
                              lent.count(),
                              lent.denied.as_ref().map_or(String::new(), |why| format!(" not_raised=\"{}\"", why))));
        let sent = self.send_delta(got, &pre, closed, unanswered, id, stopped_ns, generation.unwrap_or(0), &trailer,
                                   tail_meta, (later, later_bytes));
        drop(lent);
        sent
    }

    /// Stop reading and accepting (no wake-up: a task finds out at its next read):
    /// the intake closes, so once this returns no read is in flight and `sent_seq`
    /// is final, while tasks write on what they were sent. The gate is not taken:
    /// a write holds it, and a write can wait for the broadcast channel's lock while
    /// a broadcast wakes thousands of receivers. Returns when reading stopped
    /// (CLOCK_MONOTONIC ns).
    ///
    /// A read holds the intake while its broadcast wakes every receiver waiting on the
    /// channel (about 1 ms at 5,000 idle clients). Waiting for it would stop every
    /// other read from starting meanwhile (std's RwLock lets no reader in while a
    /// writer waits): reading stops when the wait starts, not when it ends. So the
    /// intake is first closed only at a moment no read holds it (`try_write`, which
    /// holds nothing up), looking every INTAKE_LOOK for at most INTAKE_WAIT; then it
    /// is waited for, and the pause counts from the start of that wait.
    fn stop_reading(&self) -> u64 {
        let deadline = Instant::now() + INTAKE_WAIT;
        loop {
            if self.hub.try_close_intake() {
                return monotonic_ns();
            }
            if Instant::now() >= deadline {
                let stopped_ns = monotonic_ns();
                self.hub.close_intake();
                return stopped_ns;
            }
            std::thread::sleep(INTAKE_LOOK);
        }
    }

    /// Wait, at most `limit`, for a moment when every task that owes nothing has
    /// taken all the broadcast channel sent it; give up early once `stall` passes
    /// with no task catching up. A task per connection writes each broadcast in its
    /// own time: frozen while a message is still being fanned out, every connection
    /// not yet written to must be asked to describe itself (thousands of task
    /// wake-ups and records inside the pause); frozen just after, none.
    ///
    /// Called twice by a freeze: first while still serving (a quiet moment between
    /// broadcasts, outside the pause), then once reading has stopped, when no new
    /// broadcast comes and the fan-out in flight only has to finish: writing a
    /// message a task was sent costs less than describing it and carrying it over.
    /// Connections that owe bytes (a never-reading client) are asked anyway and are
    /// not waited for. Returns the microseconds waited.
    fn wait_fanned_out(&self, limit: Duration, stall: Duration, numbered: bool) -> u64 {
        let started = Instant::now();
        let (mut fewest, mut progress) = (usize::MAX, started);
        loop {
            let seq = self.hub.sent_seq.load(Ordering::SeqCst);
            // (the board, without the `live` lock: a count to wait on, not a list)
            let mut behind = 0usize;
            self.hub.board.each(|cell| {
                if cell.id().is_some() && cell.flags.load(Ordering::Relaxed) & !HEAD == 0
                    && cell.drained.load(Ordering::SeqCst) < seq
                    && !(numbered && cell.written.load(Ordering::SeqCst) != 0) {
                    behind += 1;
                }
            });
            let now = Instant::now();
            if behind < fewest {
                (fewest, progress) = (behind, now);
            }
            if behind == 0 || now - started >= limit || now - progress >= stall {
                return (now - started).as_micros() as u64;
            }
            std::thread::sleep(FAN_OUT_LOOK);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_delta(&self, got: Vec<Export>, pre: &PreCopy, mut closed: Vec<u64>, unanswered: HashSet<u64>,
                  id: &Value, stopped_ns: u64,
                  generation: u64, trailer: &[u8], tail_meta: Value, later: (Vec<(u64, u64)>, u64)) -> Reply {
        let mut records: Vec<(Record, Option<RawFd>)> = Vec::new();
        // (defer-all: `later`, the first OWED asks; DEFERRED records, the second)
        let (later, later_bytes) = later;
        let hold_all = !later.is_empty();
        let mut owed = Vec::new();
        let (mut unsent, mut pending, mut inline, mut from_tail) = (later_bytes, 0usize, 0usize, 0usize);
        for export in got {
            let conn_id = export.carried.id;
            let is_new = conn_id >= pre.watermark;
            if !(is_new || export.flags != 0 || !export.carried.pending_in.is_empty()
                 || !export.carried.unsent_out.is_empty()) {
                continue; // asked, nothing to say: its socket is already staged
            }
            if export.flags & DEFERRED != 0 {
                owed.push(conn_id);
            }
            if export.flags & (DEFERRED | TAIL) != 0 {
                unsent += export.owed_bytes;
                from_tail += usize::from(export.flags & TAIL != 0);
            }
            unsent += export.carried.unsent_out.len() as u64;
            inline += export.carried.unsent_out.len();
            pending += export.carried.pending_in.len();
            let record = Record { carried: export.carried, fd_index: NO_FD, flags: export.flags,
                                  owed: export.owed_bytes };
            records.push((record, if is_new { Some(export.fd) } else { None }));
        }
        // (a pre-copied connection that ended before it answered is closed too)
        let live = self.hub.live.lock().unwrap();
        let vanished: Vec<u64> = unanswered.into_iter()
            .filter(|i| pre.ids.contains(i) && !live.contains_key(i) && !closed.contains(i)).collect();
        drop(live);
        closed.extend(vanished);
        let meta = json!({
            "stopped_reading_ns": stopped_ns, "released_ns": monotonic_ns(), "flushed_bytes": 0,
            "unsent_bytes": unsent, "pending_bytes": pending, "backlog": owed.len() + later.len(),
            "generation": generation,
            "inline_bytes": inline, "tail": tail_meta, "from_tail": from_tail,
            "hold": if hold_all { json!("staged") } else { Value::Null },
        });
        log("frozen", format!("records={} closed={} {}", records.len(), closed.len(), meta));
        {
            let mut state = self.pre.lock().unwrap();
            (state.owed, state.later) = (owed, later);
        }
        self.send_parts("manifest", id, table::DELTA, &meta, None, &closed, records, trailer)?;
        Ok(None)
    }

    /// OWED, once the candidate resumed: the DEFERRED connections' units as a memfd.
    pub(crate) fn owed(&self, id: &Value) -> Reply {
        if self.hub.phase() != Phase::Frozen {
            return Err(format!("owed needs a relay released after a pre-copy, this one is {}", self.hub.state()));
        }
        // (defer-all: the clients owed a fan-out's end first, alone, so that every client
        // writes again without waiting for the large backlogs' copy; `more` says so)
        let started = Instant::now();
        let (ids, more) = {
            let mut state = self.pre.lock().unwrap();
            match std::mem::take(&mut state.later) {
                later if !later.is_empty() => (later, !state.owed.is_empty()),
                _ => (state.owed.drain(..).map(|id| (id, ASK_TASK)).collect(), false),
            }
        };
        // a connection whose cell said how far it was written is owed the ring's units
        // after that (the relay is frozen: nothing was written or broadcast since), so
        // its task is not woken; the others' tasks say what they hold
        let (mut got, asked) = {
            let live = self.hub.live.lock().unwrap();
            let tail = self.hub.tail.lock().unwrap();
            let (mut got, mut asked) = (Vec::with_capacity(ids.len()), Vec::new());
            for (conn_id, after) in ids {
                match live.get(&conn_id) {
                    Some(_) if after != ASK_TASK => {
                        got.push(Entry { id: conn_id, head_sent: 0, units: tail.lend_since(after) })
                    }
                    Some(slot) => asked.push(slot.clone()),
                    None => {} // gone since the freeze
                }
            }
            (got, asked)
        };
        let from_ring = got.len();
        let (reply, entries) = std::sync::mpsc::channel::<Entry>();
        let expected = got.len() + asked.len();
        for slot in asked {
            slot.send(Cmd::Owed(reply.clone(), self.settings.max_owed_units, self.settings.max_owed_bytes));
        }
        drop(reply); // a task that ends drops its copy: the wait below ends with the last
        let deadline = Instant::now() + ASK_DEADLINE;
        while got.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match entries.recv_timeout(left) {
                Ok(entry) => got.push(entry),
                Err(_) => break,
            }
        }
        let (table_bytes, data_bytes, memfd) = backlog::write_memfd(&got).map_err(|e| e.to_string())?;
        let mut msg = json!({"type": "backlog", "re": id, "connections": got.len(),
                             "table_bytes": table_bytes, "data_bytes": data_bytes});
        if more {
            msg["more"] = json!(true);
        }
        let fds: Vec<RawFd> = memfd.into_iter().collect();
        let sent = self.send(&msg, &[], &fds);
        close_fds(&fds);
        sent.map_err(|e| format!("sending the backlog: {}", e))?;
        log("owed", format!("connections={} from_ring={} bytes={} us={}", got.len(), from_ring, data_bytes,
                            started.elapsed().as_micros()));
        Ok(None)
    }

    /// CLOSE of a frozen relay, or of a staged one whose pre-copy never became a
    /// handoff: every task lets go of its socket, the listener goes, back to standby.
    pub(crate) fn close_all(&self) -> Reply {
        self.hub.set_phase(Phase::Closing);
        let hub = self.hub.clone();
        self.rt.block_on(async move {
            let limit = tokio::time::Instant::now() + Duration::from_secs(2);
            while hub.connections() > 0 && tokio::time::Instant::now() < limit {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        *self.hub.listener.lock().unwrap() = None;
        self.hub.holding.lock().unwrap().clear();
        self.hub.unstage_all();
        {
            let mut pre = self.pre.lock().unwrap();
            pre.precopied = None;
            pre.resumed();
        }
        self.hub.set_phase(Phase::Run);
        log("closed", format!("state={} connections={}", self.hub.state(), self.hub.connections()));
        Ok(Some(json!({"type": "closed"})))
    }

    // ----- the adopting relay --------------------------------------------------------

    /// PREADOPT: stage the pre-copied listener and connections (nothing read or written).
    pub(crate) fn preadopt(&self, sock: &StdStream, mut first: Message) -> Reply {
        if !self.standby() || first.json.get("part").and_then(Value::as_u64) != Some(0) {
            first.close_fds();
            return Err(format!("cannot pre-adopt in state {}: not standby", self.hub.state()));
        }
        self.hub.set_phase(Phase::Hold);
        self.pre.lock().unwrap().staged = true;
        let (connections, listener) = self.each_part(sock, first, "preadopt", |msg| self.adopt_part(msg))?;
        self.wait_taken();
        log("preadopted", format!("connections={} listener={}", connections, listener));
        Ok(Some(json!({"type": "preadopted", "connections": connections, "listener": listener})))
    }

    /// ADOPT of a delta-v1 (the freeze): close the closed, carry state, add the new.
    pub(crate) fn adopt_delta(&self, sock: &StdStream, mut first: Message) -> Reply {
        let staged = self.pre.lock().unwrap().staged;
        if !(staged && self.hub.phase() == Phase::Hold) || first.json.get("part").and_then(Value::as_u64) != Some(0) {
            first.close_fds();
            return Err(format!("a delta needs a pre-adopt first, relay is {}", self.hub.state()));
        }
        let (connections, _) = self.each_part(sock, first, "adopt", |msg| self.delta_part(msg))?;
        self.wait_taken();
        log("adopted", format!("records={} holding={}", connections, self.hub.holding.lock().unwrap().len()));
        Ok(Some(json!({"type": "adopted", "connections": connections, "listener": false})))
    }

    fn delta_part(&self, msg: &mut Message) -> Result<(usize, bool), String> {
        let get = |key: &str| msg.json.get(key).and_then(Value::as_u64).unwrap_or(0) as usize;
        let (closed, count) = (get("closed"), get("connections"));
        if msg.json.get("table").and_then(Value::as_str) != Some(table::DELTA) {
            msg.close_fds();
            return Err(format!("expected a {} part, got table {}", table::DELTA, msg.json["table"]));
        }
        let decoded = table::decode_delta(closed, count, &msg.blob, msg.fds.len(), true)
            .and_then(|(closed, records)| Ok((closed, records, self.tail_section(msg)?)));
        let (closed, records, tail) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                msg.close_fds();
                return Err(e);
            }
        };
        if msg.json.get("hold").and_then(Value::as_str) == Some("staged") {
            self.hub.hold_staged(); // (defer-all; dispatch checked it was negotiated)
        }
        let fds = std::mem::take(&mut msg.fds);
        let mut used = vec![false; fds.len()];
        for conn_id in closed {
            if let Some(slot) = self.hub.slot(conn_id) {
                slot.send(Cmd::Unstage);
            }
        }
        let _runtime = self.rt.enter();
        let n = records.len();
        let (staged, new): (Vec<Record>, Vec<Record>) = records.into_iter().partition(|r| r.fd_index == NO_FD);
        let mut result = self.carry_staged(staged, tail.as_ref());
        for record in new {
            if result.is_err() {
                break;
            }
            result = self.take_record(record, &fds, &mut used);
        }
        for (fd, used) in fds.iter().zip(used) {
            if !used {
                unsafe { libc::close(*fd) };
            }
        }
        result.map(|_| (n, false))
    }

    /// Part 0's tail section (`tail` extension), when its message names one.
    fn tail_section(&self, msg: &Message) -> Result<Option<SharedTail>, String> {
        let tail = match msg.json.get("tail") {
            Some(tail) if !tail.is_null() => tail,
            _ => return Ok(None),
        };
        let get = |key: &str| tail.get(key).and_then(Value::as_u64).map(|n| n as usize)
            .ok_or_else(|| format!("the tail names no {}", key));
        let (lens, bytes) = table::decode_tail(&msg.blob, get("units")?, get("bytes")?)?;
        Ok(Some(SharedTail::new(&lens, bytes)))
    }

    /// The state of connections staged by the pre-copy (one look-up under one lock:
    /// there can be thousands, inside the pause).
    fn carry_staged(&self, records: Vec<Record>, tail: Option<&SharedTail>) -> Result<(), String> {
        let mut holding = Vec::new();
        let live = self.hub.live.lock().unwrap();
        for record in records {
            let carried = record.carried;
            let slot = live.get(&carried.id).ok_or_else(|| format!("connection {} was never pre-copied here", carried.id))?;
            let hold = record.flags & DEFERRED != 0;
            if hold {
                holding.push((carried.id, record.flags));
            }
            let carry = Cmd::Carry { pending_in: carried.pending_in, unsent_out: carried.unsent_out,
                                     counters: carried.counters, hold };
            // no wake-up: the staged task acts only once RESUME (or an ADOPT with
            // resume) changes the phase, which wakes every task and finds this first
            if record.flags & TAIL != 0 {
                let tail = tail.ok_or_else(|| format!("connection {} owes a tail the delta does not carry", carried.id))?;
                let (units, head_sent) = tail.last(record.owed as usize)
                    .map_err(|e| format!("connection {}: {}", carried.id, e))?;
                slot.stash([carry, Cmd::Backlog { units, head_sent }]);
            } else {
                slot.stash([carry]);
            }
        }
        drop(live);
        self.hub.holding.lock().unwrap().extend(holding);
        Ok(())
    }

    /// A connection new since the pre-copy: its fd is in this part.
    fn take_record(&self, record: Record, fds: &[RawFd], used: &mut [bool]) -> Result<(), String> {
        let carried = record.carried;
        if record.flags & TAIL != 0 {
            return Err(format!("connection {} owes a tail but comes with its fd (only a pre-copied one may)", carried.id));
        }
        let hold = record.flags & DEFERRED != 0;
        if hold {
            self.hub.holding.lock().unwrap().insert(carried.id, record.flags);
        }
        let index = record.fd_index as usize;
        used[index] = true;
        Counters::add(&self.hub.counters.adopted, 1);
        let id = carried.id;
        self.add_conn(carried, fds[index], hold).map_err(|e| format!("adopting connection {}: {}", id, e))
    }

    /// BACKLOG: each held connection's units go in front of anything newer.
    pub(crate) fn backlog(&self, mut msg: Message) -> Reply {
        let started = Instant::now();
        let get = |key: &str| msg.json.get(key).and_then(Value::as_u64).unwrap_or(0) as usize;
        let (count, table_bytes, data_bytes) = (get("connections"), get("table_bytes"), get("data_bytes"));
        let entries = match msg.fds.first() {
            Some(fd) => backlog::read_memfd(*fd, table_bytes, data_bytes, count),
            None => Ok(Vec::new()),
        };
        msg.close_fds(); // the mapping outlives the descriptor
        let entries = entries?;
        let mut holding = std::mem::take(&mut *self.hub.holding.lock().unwrap());
        let all = self.hub.holds_staged(); // defer-all: every staged connection waits
        let more = msg.json.get("more").and_then(Value::as_bool) == Some(true);
        let (mut queued, mut bytes) = (0usize, 0usize);
        let n = entries.len();
        {
            let live = self.hub.live.lock().unwrap();
            for (conn_id, head_sent, units) in entries {
                if holding.remove(&conn_id).is_none() && !all {
                    continue; // (gone meanwhile)
                }
                if let Some(slot) = live.get(&conn_id) {
                    bytes += units.iter().map(|u| u.len).sum::<usize>() - head_sent;
                    queued += 1;
                    let cmd = Cmd::Backlog { units, head_sent };
                    if all {
                        // no wake-up each (thousands, from this thread, while the
                        // clients wait): `release_staged` below wakes every task
                        slot.stash([cmd]);
                    } else {
                        slot.send(cmd);
                    }
                }
            }
        }
        if more {
            // (defer-all) the DEFERRED ones stay held, each on its own, for the next
            self.hub.holding.lock().unwrap().extend(holding);
        } else {
            for conn_id in holding.keys() {
                if let Some(slot) = self.hub.slot(*conn_id) {
                    slot.send(Cmd::Unhold); // nothing was owed after all
                }
            }
        }
        let queued_us = started.elapsed().as_micros();
        self.hub.release_staged(); // after the commands: see `Hub::holds_staged`
        log("backlogged", format!("connections={} bytes={} queued_us={} us={}", queued, bytes, queued_us,
                                  started.elapsed().as_micros()));
        Ok(Some(json!({"type": "backlogged", "connections": n})))
    }

    /// The orchestrator went away before a BACKLOG came: a client whose stream stopped
    /// mid-frame is cut (it must never see a torn frame); the others are served on
    /// without the bytes the previous relay owed them.
    pub(crate) fn control_lost(&self) {
        if self.hub.phase() != Phase::Run {
            return;
        }
        let holding = std::mem::take(&mut *self.hub.holding.lock().unwrap());
        if holding.is_empty() && !self.hub.holds_staged() {
            return;
        }
        let mut cut = 0usize;
        for (conn_id, flags) in holding.iter() {
            if let Some(slot) = self.hub.slot(*conn_id) {
                let torn = flags & HEAD_STARTED != 0;
                cut += usize::from(torn);
                slot.send(if torn { Cmd::Disconnect } else { Cmd::Unhold });
            }
        }
        self.hub.release_staged(); // (defer-all: those not cut mid-frame write again)
        log("backlog_lost", format!("connections={} cut_mid_frame={}", holding.len(), cut));
    }
}
