//! State shared by the control thread, the accept loop and every connection task.
//!
//! How it works: one `gate` (a std RwLock around the `Phase`) says what connection
//! tasks may do. A task holds the read lock only while it turns one read into
//! broadcasts (synchronous code, no await), and accepts happen under it too. RELEASE
//! takes the write lock to switch to `Flush`: once it has it, no read or accept is in
//! flight and none starts, so nothing more enters the broadcast channel. Every task
//! then writes what it owes until the flush deadline, exports its state (fd, partial
//! frame read, bytes still owed) and parks until the orchestrator says RESUME or CLOSE.
//! Adopted connections start in `Hold`: registered, neither reading nor writing,
//! until RESUME switches the gate to `Run`.

use std::collections::{HashMap, HashSet};
use std::os::unix::net::UnixListener as StdListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::table::Carried;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Serve: read, accept, write.
    Run,
    /// Adopted, not resumed: read nothing, write nothing.
    Hold,
    /// Released: write what is owed until the deadline, export, park.
    Flush(Instant),
}

/// The orchestrator's word to a parked (released) connection.
#[derive(Debug)]
pub enum Decision {
    Resume,
    Close,
}

/// A released connection's state, sent by its task to the control thread.
pub struct Export {
    pub carried: Carried,
    pub fd: i32,
    pub decision: oneshot::Sender<Decision>,
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
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

pub struct Hub {
    pub gate: RwLock<Phase>,
    wake_tx: watch::Sender<u64>,
    wake_rx: watch::Receiver<u64>,
    pub listener: Mutex<Option<Arc<AsyncFd<StdListener>>>>,
    pub live: Mutex<HashSet<u64>>,
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
    pub started: Instant,
}

impl Hub {
    pub fn new(incoming: mpsc::UnboundedSender<crate::Conn>) -> Arc<Hub> {
        let (wake_tx, wake_rx) = watch::channel(0);
        Arc::new(Hub {
            gate: RwLock::new(Phase::Run),
            wake_tx,
            wake_rx,
            listener: Mutex::new(None),
            live: Mutex::new(HashSet::new()),
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
            started: Instant::now(),
        })
    }

    pub fn phase(&self) -> Phase {
        *self.gate.read().unwrap()
    }

    /// Set the phase once no read or accept is in flight; wake every task.
    pub fn set_phase(&self, phase: Phase) {
        *self.gate.write().unwrap() = phase;
        self.wake();
    }

    pub fn wake(&self) {
        let next = *self.wake_rx.borrow() + 1;
        let _ = self.wake_tx.send(next);
    }

    pub fn wakeups(&self) -> watch::Receiver<u64> {
        self.wake_rx.clone()
    }

    /// A new connection id (or keep `id` from a handoff); the connection is live.
    pub fn register(&self, id: Option<u64>) -> u64 {
        let id = match id {
            Some(id) => {
                self.next_id.fetch_max(id + 1, Ordering::Relaxed);
                id
            }
            None => self.next_id.fetch_add(1, Ordering::Relaxed),
        };
        self.live.lock().unwrap().insert(id);
        Counters::add(&self.counters.connections_total, 1);
        id
    }

    /// The connection ended (client gone, or closed after a handoff).
    pub fn forget(&self, id: u64, handed_over: bool) {
        if self.live.lock().unwrap().remove(&id) {
            let counter = if handed_over { &self.counters.handed_over } else { &self.counters.disconnects };
            Counters::add(counter, 1);
        }
        self.gone.notify_waiters();
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
            Phase::Flush(_) => "released",
            Phase::Run if self.has_listener() => "active",
            Phase::Run if self.connections() > 0 => "probing",
            Phase::Run => "standby",
        }
    }
}
