//! The control channel to the orchestrator, on a thread of its own (blocking I/O,
//! so the data path never waits on it): HELLO/WELCOME, READY, then one request at a
//! time: ADOPT, RELEASE, RESUME, CLOSE, PROBE, STATS, LISTENER, and, when the
//! orchestrator granted the `precopy` extension, PRECOPY, PREADOPT, OWED and BACKLOG
//! (precopy.rs); with `adopt-resume` granted, an ADOPT that asks for it ends with what
//! RESUME does (no RESUME round trip inside the pause). If the orchestrator goes away the relay keeps serving and says HELLO
//! again every 0.5 s.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::{self, Write};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::conn::Sock;
use crate::hub::{Counters, Decision, Export, Gone, Hub, Phase};
use crate::precopy::{PreState, PRECOPY, PRECOPY_VERSION};
use crate::table::{self, Carried, Record, NO_FD};
use crate::wire::{self, Message, MAX_FDS};
use crate::Conn;

pub const PROTOCOL_VERSION: u64 = 1;
/// docs/handoff-protocol.md section 11: ADOPT with `resume: true` starts reading at its end.
pub const ADOPT_RESUME: &str = "adopt-resume";
pub const ADOPT_RESUME_VERSION: u64 = 1;
pub const TAIL: &str = "tail";
pub const TAIL_VERSION: u64 = 1;
/// docs/handoff-protocol.md section 13: the freeze describes no connection's output;
/// every staged connection waits for the BACKLOG, which says what each is owed.
pub const DEFER_ALL: &str = "defer-all";
pub const DEFER_ALL_VERSION: u64 = 1;
const CONNECT_FOR: Duration = Duration::from_secs(10);
const RECONNECT_EVERY: Duration = Duration::from_millis(500);
const PART_TIMEOUT: Duration = Duration::from_secs(5);
const TAKE_DEADLINE: Duration = Duration::from_secs(2);

/// The four environment variables the orchestrator sets.
#[derive(Clone, Debug)]
pub struct Settings {
    pub control: PathBuf,
    pub token: String,
    pub socket: String,
    pub release: String,
    /// Offer the `precopy` extension in HELLO.
    pub precopy: bool,
    /// Offer the `adopt-resume` extension in HELLO.
    pub adopt_resume: bool,
    /// Offer the `tail` extension in HELLO (with `precopy` only).
    pub tail: bool,
    /// Offer the `defer-all` extension in HELLO (with `precopy` only).
    pub defer_all: bool,
    /// Pre-copy: units and bytes a connection's BACKLOG carries at most (`Options`).
    pub max_owed_units: usize,
    pub max_owed_bytes: usize,
}

impl Settings {
    /// None when SWAPCTL_HANDOFF is unset: run as before, without handoff.
    pub fn from_env() -> Option<Settings> {
        let control = std::env::var_os("SWAPCTL_HANDOFF")?;
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        Some(Settings { control: control.into(), token: var("SWAPCTL_TOKEN"),
                        socket: var("SWAPCTL_SOCKET"), release: var("SWAPCTL_RELEASE"), precopy: true,
                        adopt_resume: true, tail: true, defer_all: true,
                        max_owed_units: crate::DEFAULT_MAX_OWED_UNITS,
                        max_owed_bytes: crate::DEFAULT_MAX_OWED_BYTES })
    }
}

pub struct Control {
    pub(crate) settings: Settings,
    pub(crate) hub: Arc<Hub>,
    pub(crate) rt: tokio::runtime::Handle,
    writer: Mutex<Option<StdStream>>,
    ready_sent: AtomicBool,
    /// The orchestrator granted `precopy` on the current channel.
    pub(crate) precopy_granted: AtomicBool,
    /// The orchestrator granted `adopt-resume` on the current channel.
    adopt_resume_granted: AtomicBool,
    /// The orchestrator granted `tail` on the current channel.
    pub(crate) tail_granted: AtomicBool,
    /// The orchestrator granted `defer-all` on the current channel.
    pub(crate) defer_all_granted: AtomicBool,
    pub(crate) pre: Mutex<PreState>,
}

pub(crate) type Reply = Result<Option<Value>, String>;

fn forget_gone(hub: &Hub, remaining: &mut HashSet<u64>) {
    let live = hub.live.lock().unwrap();
    remaining.retain(|id| live.contains_key(id));
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

thread_local! {
    /// The lines of the request the control thread is answering (see `LogsAfter`).
    static HELD: RefCell<Option<String>> = const { RefCell::new(None) };
}

pub(crate) fn log(event: &str, detail: String) {
    let line = format!("swapctl-handoff: {} {}\n", event, detail);
    HELD.with(|held| match held.borrow_mut().as_mut() {
        Some(lines) => lines.push_str(&line),
        None => {
            let _ = io::stderr().write_all(line.as_bytes());
        }
    });
}

/// While one lives, `log` on this thread holds its lines; they are written (in one
/// write) when it is dropped, after the request was answered. A write to stderr
/// costs 20-35 µs on these machines (`swapctl bench handoff`, 10 and 5,000
/// clients), and a freeze and an adopt logged three lines inside the pause.
pub(crate) struct LogsAfter;

impl LogsAfter {
    pub(crate) fn hold() -> LogsAfter {
        HELD.with(|held| *held.borrow_mut() = Some(String::new()));
        LogsAfter
    }
}

impl Drop for LogsAfter {
    fn drop(&mut self) {
        if let Some(lines) = HELD.with(|held| held.borrow_mut().take()).filter(|l| !l.is_empty()) {
            let _ = io::stderr().write_all(lines.as_bytes());
        }
    }
}

impl Control {
    /// Connect (retrying for 10 s), HELLO, wait for WELCOME; then serve requests on a
    /// thread of its own. Blocks: call it from `spawn_blocking`.
    pub fn start(settings: Settings, hub: Arc<Hub>, rt: tokio::runtime::Handle) -> io::Result<Arc<Control>> {
        let control = Arc::new(Control { settings, hub, rt, writer: Mutex::new(None),
                                         ready_sent: AtomicBool::new(false),
                                         precopy_granted: AtomicBool::new(false),
                                         adopt_resume_granted: AtomicBool::new(false),
                                         tail_granted: AtomicBool::new(false),
                                         defer_all_granted: AtomicBool::new(false),
                                         pre: Mutex::new(PreState::default()) });
        let deadline = Instant::now() + CONNECT_FOR;
        let sock = loop {
            match control.connect() {
                Ok(sock) => break sock,
                Err(e) if Instant::now() >= deadline => {
                    return Err(io::Error::new(e.kind(), format!(
                        "cannot reach the control socket {}: {}", control.settings.control.display(), e)));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let runner = control.clone();
        std::thread::Builder::new().name("swapctl-handoff".into()).spawn(move || runner.run(sock))?;
        Ok(control)
    }

    fn connect(&self) -> io::Result<StdStream> {
        let sock = StdStream::connect(&self.settings.control)?;
        let mut offered = json!({});
        if self.settings.precopy {
            offered[PRECOPY] = json!(PRECOPY_VERSION);
        }
        if self.settings.adopt_resume {
            offered[ADOPT_RESUME] = json!(ADOPT_RESUME_VERSION);
        }
        if self.settings.precopy && self.settings.tail {
            offered[TAIL] = json!(TAIL_VERSION);
        }
        if self.settings.precopy && self.settings.defer_all {
            offered[DEFER_ALL] = json!(DEFER_ALL_VERSION);
        }
        let hello = json!({
            "type": "hello", "versions": [PROTOCOL_VERSION], "pid": std::process::id(),
            "token": self.settings.token, "release": self.settings.release,
            "state": self.hub.state(), "connections": self.hub.connections(), "extensions": offered,
        });
        wire::send(&sock, &hello, &[], &[])?;
        let reply = wire::recv(&sock, Some(Duration::from_secs(5)))?;
        if reply.kind() != "welcome" || reply.json.get("version").and_then(Value::as_u64) != Some(PROTOCOL_VERSION) {
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused,
                                      format!("orchestrator refused HELLO: {}", reply.json)));
        }
        // only an exact name and version match counts; an orchestrator that does not
        // know the extension sends none, and this relay speaks plain version 1
        let granted = self.settings.precopy
            && reply.json.pointer("/extensions/precopy").and_then(Value::as_u64) == Some(PRECOPY_VERSION);
        self.precopy_granted.store(granted, Ordering::SeqCst);
        let resume_granted = self.settings.adopt_resume
            && reply.json.pointer("/extensions/adopt-resume").and_then(Value::as_u64) == Some(ADOPT_RESUME_VERSION);
        self.adopt_resume_granted.store(resume_granted, Ordering::SeqCst);
        let tail_granted = granted && self.settings.tail
            && reply.json.pointer("/extensions/tail").and_then(Value::as_u64) == Some(TAIL_VERSION);
        self.tail_granted.store(tail_granted, Ordering::SeqCst);
        let defer_all_granted = granted && self.settings.defer_all
            && reply.json.pointer("/extensions/defer-all").and_then(Value::as_u64) == Some(DEFER_ALL_VERSION);
        self.defer_all_granted.store(defer_all_granted, Ordering::SeqCst);
        *self.writer.lock().unwrap() = Some(sock.try_clone()?);
        log("connected", format!("control={} token={} precopy={} adopt_resume={} tail={} defer_all={}",
                                 self.settings.control.display(), self.settings.token, granted, resume_granted,
                                 tail_granted, defer_all_granted));
        if self.ready_sent.load(Ordering::SeqCst) {
            self.send_ready();
        }
        Ok(sock)
    }

    /// READY: this relay can take over (sent again after every reconnect).
    pub fn ready(&self) {
        self.ready_sent.store(true, Ordering::SeqCst);
        self.send_ready();
    }

    fn send_ready(&self) {
        let _ = self.send(&json!({"type": "ready", "state": self.hub.state()}), &[], &[]);
    }

    pub(crate) fn send(&self, msg: &Value, blob: &[u8], fds: &[RawFd]) -> io::Result<()> {
        match self.writer.lock().unwrap().as_ref() {
            Some(sock) => wire::send(sock, msg, blob, fds),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "no control channel")),
        }
    }

    fn run(&self, mut sock: StdStream) {
        loop {
            let outcome = wire::recv(&sock, None).and_then(|msg| self.dispatch(&sock, msg));
            if let Err(e) = outcome {
                log("control_lost", e.to_string());
                *self.writer.lock().unwrap() = None;
                self.precopy_granted.store(false, Ordering::SeqCst);
                self.adopt_resume_granted.store(false, Ordering::SeqCst);
                self.tail_granted.store(false, Ordering::SeqCst);
                self.defer_all_granted.store(false, Ordering::SeqCst);
                self.control_lost();
                sock = loop {
                    std::thread::sleep(RECONNECT_EVERY);
                    if let Ok(again) = self.connect() {
                        break again;
                    }
                };
            }
        }
    }

    fn dispatch(&self, sock: &StdStream, mut msg: Message) -> io::Result<()> {
        let _logs = LogsAfter::hold(); // written once answered: out of the pause
        let id = msg.json.get("id").cloned().unwrap_or(Value::Null);
        let kind = msg.kind().to_string();
        let precopy = msg.json.get("table").and_then(Value::as_str) == Some(table::DELTA)
            || msg.json.get("precopy").map_or(false, |g| !g.is_null())
            || matches!(kind.as_str(), "precopy" | "preadopt" | "owed" | "backlog");
        let resume = msg.json.get("resume").and_then(Value::as_bool) == Some(true);
        let tail = msg.json.get("tail").map_or(false, |t| !t.is_null());
        let defer_all = msg.json.get("defer_all").map_or(false, |d| !d.is_null())
            || msg.json.get("hold").map_or(false, |h| !h.is_null());
        let reply = match kind.as_str() {
            _ if precopy && !self.precopy_granted.load(Ordering::SeqCst) => {
                msg.close_fds();
                Err("the precopy extension was not negotiated on this channel".into())
            }
            _ if resume && (kind != "adopt" || !self.adopt_resume_granted.load(Ordering::SeqCst)) => {
                msg.close_fds();
                Err("resume on adopt needs the adopt-resume extension, negotiated on this channel, and an adopt".into())
            }
            _ if tail && !(precopy && matches!(kind.as_str(), "release" | "adopt")
                           && self.tail_granted.load(Ordering::SeqCst)) => {
                msg.close_fds();
                Err("a tail needs the tail extension, negotiated on this channel, on a pre-copy release or adopt".into())
            }
            _ if defer_all && !(precopy && matches!(kind.as_str(), "release" | "adopt")
                                && self.defer_all_granted.load(Ordering::SeqCst)) => {
                msg.close_fds();
                Err("defer_all (release) and hold (adopt) need the defer-all extension, negotiated on this \
                     channel, on a pre-copy release or adopt".into())
            }
            "adopt" if precopy => self.adopt_delta(sock, msg).and_then(|body| self.then_resume(body, resume)),
            "adopt" => self.adopt(sock, msg).and_then(|body| self.then_resume(body, resume)),
            "release" if precopy => self.freeze(&msg, &id),
            "release" => self.release(&msg, &id),
            "resume" => self.resume(),
            "close" => self.close(),
            "probe" => self.probe(msg),
            "stats" => Ok(Some(json!({"type": "stats", "stats": self.stats()}))),
            "listener" => self.send_listener(&id),
            "precopy" => self.precopy(&id),
            "preadopt" => self.preadopt(sock, msg),
            "owed" => self.owed(&id),
            "backlog" => self.backlog(msg),
            _ => {
                msg.close_fds();
                Err(format!("unknown request type {:?}", kind))
            }
        };
        let sent = match reply {
            Ok(Some(mut body)) => {
                body["re"] = id;
                self.send(&body, &[], &[])
            }
            Ok(None) => Ok(()),
            Err(text) => {
                log("refused", format!("{}: {}", kind, text));
                self.send(&json!({"type": "error", "re": id, "message": text}), &[], &[])
            }
        };
        self.hub.close_retired(); // (answered: out of the pause)
        sent
    }

    pub(crate) fn standby(&self) -> bool {
        self.hub.phase() == Phase::Run && !self.hub.has_listener() && self.hub.connections() == 0
    }

    fn adopt(&self, sock: &StdStream, mut first: Message) -> Reply {
        if !self.standby() || first.json.get("part").and_then(Value::as_u64) != Some(0) {
            first.close_fds();
            return Err(format!("cannot adopt in state {}: not standby", self.hub.state()));
        }
        self.hub.set_phase(Phase::Hold);
        let (connections, listener) = self.each_part(sock, first, "adopt", |msg| self.adopt_part(msg))?;
        self.wait_taken();
        log("adopted", format!("connections={} listener={}", connections, listener));
        Ok(Some(json!({"type": "adopted", "connections": connections, "listener": listener})))
    }

    /// The parts of one transfer, `first` then the rest as they arrive (the
    /// orchestrator forwards each as soon as the other relay sent it), each given to
    /// `take`; the sums of what it returned (connections, listener).
    pub(crate) fn each_part<F>(&self, sock: &StdStream, first: Message, kind: &str, mut take: F)
                               -> Result<(usize, bool), String>
    where
        F: FnMut(&mut Message) -> Result<(usize, bool), String>,
    {
        let parts = first.json.get("parts").and_then(Value::as_u64).unwrap_or(1);
        let (mut connections, mut listener) = (0usize, false);
        let mut msg = first;
        for part in 0..parts {
            if part > 0 {
                msg = wire::recv(sock, Some(PART_TIMEOUT)).map_err(|e| format!("{} part {}: {}", kind, part, e))?;
                if msg.kind() != kind || msg.json.get("part").and_then(Value::as_u64) != Some(part) {
                    msg.close_fds();
                    return Err(format!("expected {} part {}, got {} {}", kind, part, msg.kind(), msg.json));
                }
            }
            let (n, l) = take(&mut msg)?;
            connections += n;
            listener |= l;
        }
        Ok((connections, listener))
    }

    /// One conn-v1 part (ADOPT, or PREADOPT of a pre-copy): the listener and every
    /// connection, registered and queued for `accept`, neither read nor written.
    pub(crate) fn adopt_part(&self, msg: &mut Message) -> Result<(usize, bool), String> {
        if msg.json.get("table").and_then(Value::as_str) != Some(table::TABLE) {
            msg.close_fds();
            return Err(format!("unknown connection table format {}", msg.json["table"]));
        }
        let count = msg.json.get("connections").and_then(Value::as_u64).unwrap_or(0) as usize;
        let conns = match table::decode(count, &msg.blob, &msg.fds) {
            Ok(conns) => conns,
            Err(e) => {
                msg.close_fds();
                return Err(e);
            }
        };
        let listener_index = msg.json.get("listener").and_then(Value::as_u64).map(|i| i as usize);
        let fds = std::mem::take(&mut msg.fds);
        let _runtime = self.rt.enter();
        if let Some(index) = listener_index {
            let fd = *fds.get(index).ok_or("listener index out of range")?;
            self.set_listener(fd).map_err(|e| format!("adopting the listener: {}", e))?;
        }
        Counters::add(&self.hub.counters.adopted, conns.len() as u64);
        for (carried, fd) in conns.iter() {
            self.add_conn(carried.clone(), *fd, false)
                .map_err(|e| format!("adopting connection {}: {}", carried.id, e))?;
        }
        Ok((conns.len(), listener_index.is_some()))
    }

    pub(crate) fn set_listener(&self, fd: RawFd) -> io::Result<()> {
        let listener = unsafe { StdListener::from_raw_fd(fd) };
        listener.set_nonblocking(true)?;
        *self.hub.listener.lock().unwrap() = Some(Arc::new(AsyncFd::new(listener)?));
        self.hub.wake();
        Ok(())
    }

    /// A connection from a descriptor (adopted or probe), queued for `Handoff::accept`;
    /// `held`: write nothing to it until its BACKLOG (pre-copy).
    pub(crate) fn add_conn(&self, mut carried: Carried, fd: RawFd, held: bool) -> io::Result<()> {
        let std_stream = unsafe { StdStream::from_raw_fd(fd) };
        std_stream.set_nonblocking(true)?;
        let staged = self.hub.phase() == Phase::Hold; // (adopted, not yet serving)
        // staged: not registered with the reactor until the relay serves (conn.rs `Sock`)
        let stream = if staged { Sock::staged(std_stream) } else { Sock::live(tokio::net::UnixStream::from_std(std_stream)?) };
        let (id, slot) = self.hub.register(if carried.id == 0 { None } else { Some(carried.id) }, fd);
        carried.id = id;
        if staged {
            if let Err(e) = self.hub.stage(id, fd) {
                self.hub.forget(id, Gone::Disconnected);
                return Err(e);
            }
        }
        let conn = Conn { stream, hub: self.hub.clone(), carried, slot, held, staged };
        if self.hub.queue(conn) {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::Other, "relay stopped accepting"))
        }
    }

    /// Before answering ADOPT or PROBE: every connection queued is in the relay's hands
    /// (subscribed to its broadcast channel), so nothing broadcast after the answer is
    /// missed by one of them.
    pub(crate) fn wait_taken(&self) {
        if !self.hub.wait_taken(TAKE_DEADLINE) {
            log("slow_accept", "the relay did not take every handed-over connection within 2 s: \
                 call accept() in a loop, subscribing each connection before the next call".into());
        }
    }

    fn release(&self, msg: &Message, id: &Value) -> Reply {
        if self.hub.phase() != Phase::Run {
            return Err(format!("cannot release in state {}: already released or not resumed", self.hub.state()));
        }
        self.refuse_if_holding()?;
        let flush_ms = msg.json.get("flush_ms").and_then(Value::as_f64).unwrap_or(10.0).max(0.0);
        let stopped_ns = monotonic_ns();
        let bytes_out = self.hub.counters.bytes_out.load(Ordering::Relaxed);
        let (sender, mut exports) = mpsc::unbounded_channel::<Export>();
        *self.hub.exports.lock().unwrap() = Some(sender);
        let deadline = Instant::now() + Duration::from_secs_f64(flush_ms / 1000.0);
        let expected: HashSet<u64> = {
            self.hub.close_intake(); // waits for a read or accept in flight
            let mut gate = self.hub.gate.write().unwrap(); // and for writes
            *gate = Phase::Flush(deadline);
            let live = self.hub.live.lock().unwrap().keys().copied().collect();
            live
        };
        self.hub.wake();
        let got = self.collect(&mut exports, expected, deadline + Duration::from_secs(2));
        *self.hub.exports.lock().unwrap() = None;
        self.send_manifest(got, id, stopped_ns, bytes_out)?;
        Ok(None)
    }

    pub(crate) fn refuse_if_holding(&self) -> Result<(), String> {
        let holding = self.hub.holding.lock().unwrap().len();
        if self.hub.holds_staged() {
            return Err("every adopted client still waits for the bytes carried from the previous relay \
                        (BACKLOG not received)".into());
        }
        if holding > 0 {
            return Err(format!("{} clients still wait for bytes carried from the previous relay \
                                (BACKLOG not received)", holding));
        }
        Ok(())
    }

    /// Every connection in `expected` exports itself, or ends (client gone), until `limit`.
    pub(crate) fn collect(&self, exports: &mut mpsc::UnboundedReceiver<Export>, expected: HashSet<u64>,
                          limit: Instant) -> Vec<Export> {
        let hub = self.hub.clone();
        self.rt.block_on(async move {
            let limit = tokio::time::Instant::from_std(limit);
            let mut remaining = expected;
            let mut got: Vec<Export> = Vec::with_capacity(remaining.len());
            while !remaining.is_empty() {
                tokio::select! {
                    export = exports.recv() => if let Some(export) = export {
                        remaining.remove(&export.carried.id);
                        got.push(export);
                        while let Ok(more) = exports.try_recv() {
                            remaining.remove(&more.carried.id);
                            got.push(more);
                        }
                    },
                    _ = hub.gone.notified() => forget_gone(&hub, &mut remaining),
                    _ = tokio::time::sleep(Duration::from_millis(5)) => forget_gone(&hub, &mut remaining),
                    _ = tokio::time::sleep_until(limit) => break,
                }
            }
            while let Ok(export) = exports.try_recv() {
                got.push(export);
            }
            got
        })
    }

    fn send_manifest(&self, got: Vec<Export>, id: &Value, stopped_ns: u64, bytes_out: u64) -> Reply {
        let listener = self.hub.listener.lock().unwrap().as_ref().map(|l| l.get_ref().as_raw_fd());
        let mut parked = self.hub.parked.lock().unwrap();
        let mut conns: Vec<(Carried, RawFd)> = Vec::with_capacity(got.len());
        for export in got {
            if let Some(decision) = export.decision {
                parked.insert(export.carried.id, decision);
            }
            conns.push((export.carried, export.fd));
        }
        drop(parked);
        let meta = json!({
            "stopped_reading_ns": stopped_ns, "released_ns": monotonic_ns(),
            "flushed_bytes": self.hub.counters.bytes_out.load(Ordering::Relaxed) - bytes_out,
            "unsent_bytes": conns.iter().map(|(c, _)| c.unsent_out.len()).sum::<usize>(),
            "pending_bytes": conns.iter().map(|(c, _)| c.pending_in.len()).sum::<usize>(),
        });
        log("released", format!("connections={} {}", conns.len(), meta));
        let records = conns.into_iter()
            .map(|(carried, fd)| (Record { carried, ..Record::default() }, Some(fd)))
            .collect();
        self.send_parts("manifest", id, table::TABLE, &meta, listener, &[], records, &[])?;
        Ok(None)
    }

    /// A transfer as `kind` messages of at most 253 fds each: part 0 has `meta`, the
    /// listener (fd 0), the closed ids and every record without an fd (delta-v1).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_parts(&self, kind: &str, id: &Value, format: &str, meta: &Value, listener: Option<RawFd>,
                             closed: &[u64], records: Vec<(Record, Option<RawFd>)>, trailer: &[u8])
                             -> Result<(), String> {
        let (fdless, with_fd): (Vec<_>, Vec<_>) = records.into_iter().partition(|(_, fd)| fd.is_none());
        let first_room = MAX_FDS - usize::from(listener.is_some());
        let mut chunks: Vec<Vec<(Record, Option<RawFd>)>> = vec![fdless];
        let mut rest = with_fd.into_iter();
        chunks[0].extend(rest.by_ref().take(first_room));
        loop {
            let chunk: Vec<_> = rest.by_ref().take(MAX_FDS).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        let parts = chunks.len();
        for (index, chunk) in chunks.into_iter().enumerate() {
            let mut fds: Vec<RawFd> = Vec::with_capacity(chunk.len() + 1);
            let mut msg = json!({"type": kind, "re": id, "part": index, "parts": parts,
                                 "table": format, "connections": chunk.len(), "listener": null});
            let mut head: &[u64] = &[];
            if index == 0 {
                if let (Some(object), Some(extra)) = (msg.as_object_mut(), meta.as_object()) {
                    for (k, v) in extra {
                        object.insert(k.clone(), v.clone());
                    }
                }
                if let Some(fd) = listener {
                    msg["listener"] = json!(0);
                    fds.push(fd);
                }
                head = closed;
            }
            if format == table::DELTA {
                msg["closed"] = json!(head.len());
            }
            let mut records = Vec::with_capacity(chunk.len());
            for (mut record, fd) in chunk {
                record.fd_index = match fd {
                    Some(fd) => {
                        fds.push(fd);
                        (fds.len() - 1) as u32
                    }
                    None => NO_FD,
                };
                records.push(record);
            }
            let mut blob = table::encode_delta(head, &records);
            if index == 0 {
                blob.extend_from_slice(trailer);
            }
            self.send(&msg, &blob, &fds).map_err(|e| format!("sending {} part {}: {}", kind, index, e))?;
        }
        Ok(())
    }

    /// adopt-resume: once every part is in, what RESUME does; `resumed_ns` joins the reply.
    fn then_resume(&self, adopted: Option<Value>, resume: bool) -> Reply {
        match adopted {
            Some(mut body) if resume => {
                let resumed = self.resume()?.unwrap_or_default();
                body["resumed_ns"] = resumed["resumed_ns"].clone();
                Ok(Some(body))
            }
            other => Ok(other),
        }
    }

    fn resume(&self) -> Reply {
        match self.hub.phase() {
            Phase::Run | Phase::Closing => return Err(format!("nothing to resume in state {}", self.hub.state())),
            Phase::Hold | Phase::Flush(_) | Phase::Frozen => {}
        }
        let resumed_ns = self.hub.resume();
        self.pre.lock().unwrap().resumed();
        let parked: Vec<_> = self.hub.parked.lock().unwrap().drain().collect();
        for (_, decide) in parked {
            let _ = decide.send(Decision::Resume);
        }
        log("resumed", format!("connections={}", self.hub.connections()));
        Ok(Some(json!({"type": "resumed", "resumed_ns": resumed_ns})))
    }

    fn close(&self) -> Reply {
        let staged = self.pre.lock().unwrap().staged;
        match self.hub.phase() {
            Phase::Flush(_) => {}
            Phase::Frozen => return self.close_all(),
            Phase::Hold if staged => return self.close_all(),
            _ => return Err(format!("close without release, in state {}", self.hub.state())),
        }
        let parked: Vec<_> = self.hub.parked.lock().unwrap().drain().collect();
        let ids: Vec<u64> = parked.iter().map(|(id, _)| *id).collect();
        for (_, decide) in parked {
            let _ = decide.send(Decision::Close);
        }
        let hub = self.hub.clone();
        self.rt.block_on(async move {
            let limit = tokio::time::Instant::now() + Duration::from_secs(2);
            while ids.iter().any(|id| hub.live.lock().unwrap().contains_key(id)) && tokio::time::Instant::now() < limit {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        *self.hub.listener.lock().unwrap() = None;
        self.hub.set_phase(Phase::Run);
        log("closed", format!("state={}", self.hub.state()));
        Ok(Some(json!({"type": "closed"})))
    }

    fn probe(&self, mut msg: Message) -> Reply {
        if !(self.hub.phase() == Phase::Run && !self.hub.has_listener()) {
            msg.close_fds();
            return Err(format!("probe needs standby, relay is {}", self.hub.state()));
        }
        let fds = std::mem::take(&mut msg.fds);
        let _runtime = self.rt.enter();
        for fd in fds.iter() {
            self.add_conn(Carried::default(), *fd, false).map_err(|e| format!("probe connection: {}", e))?;
        }
        self.wait_taken();
        Ok(Some(json!({"type": "probing", "fds": fds.len()})))
    }

    fn send_listener(&self, id: &Value) -> Reply {
        let listener = self.hub.listener.lock().unwrap().clone();
        match listener {
            None => Err("no listener here (standby)".into()),
            Some(l) => {
                self.send(&json!({"type": "listener", "re": id}), &[], &[l.get_ref().as_raw_fd()])
                    .map_err(|e| e.to_string())?;
                Ok(None)
            }
        }
    }

    fn stats(&self) -> Value {
        let c = &self.hub.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut stats = json!({
            "state": self.hub.state(), "connections_open": self.hub.connections(),
            "connections_total": get(&c.connections_total), "bytes_in": get(&c.bytes_in),
            "bytes_out": get(&c.bytes_out), "frames_in": get(&c.frames_in),
            "frames_out": get(&c.frames_out), "lag_drops_frames": get(&c.lag_drops),
            "disconnects": get(&c.disconnects), "adopted": get(&c.adopted),
            "handed_over": get(&c.handed_over), "pid": std::process::id(),
            "uptime_s": self.hub.started.elapsed().as_secs_f64(),
            "implementation": "swapctl-handoff (rust)",
        });
        if c.skips_counted.load(Ordering::Relaxed) {
            stats["skipped_bytes"] = json!(get(&c.skipped_bytes));
            stats["resyncs"] = json!(get(&c.resyncs));
        }
        stats
    }
}
