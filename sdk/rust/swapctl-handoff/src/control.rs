//! The control channel to the orchestrator, on a thread of its own (blocking I/O,
//! so the data path never waits on it): HELLO/WELCOME, READY, then one request at a
//! time: ADOPT, RELEASE, RESUME, CLOSE, PROBE, STATS, LISTENER. If the orchestrator
//! goes away the relay keeps serving and says HELLO again every 0.5 s.

use std::collections::HashSet;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::hub::{Counters, Decision, Export, Hub, Phase};
use crate::table::{self, Carried};
use crate::wire::{self, Message, MAX_FDS};
use crate::Conn;

pub const PROTOCOL_VERSION: u64 = 1;
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
}

impl Settings {
    /// None when SWAPCTL_HANDOFF is unset: run as before, without handoff.
    pub fn from_env() -> Option<Settings> {
        let control = std::env::var_os("SWAPCTL_HANDOFF")?;
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        Some(Settings { control: control.into(), token: var("SWAPCTL_TOKEN"),
                        socket: var("SWAPCTL_SOCKET"), release: var("SWAPCTL_RELEASE") })
    }
}

pub struct Control {
    settings: Settings,
    hub: Arc<Hub>,
    rt: tokio::runtime::Handle,
    writer: Mutex<Option<StdStream>>,
    ready_sent: AtomicBool,
}

type Reply = Result<Option<Value>, String>;

fn forget_gone(hub: &Hub, remaining: &mut HashSet<u64>) {
    let live = hub.live.lock().unwrap();
    remaining.retain(|id| live.contains(id));
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn log(event: &str, detail: String) {
    eprintln!("swapctl-handoff: {} {}", event, detail);
}

impl Control {
    /// Connect (retrying for 10 s), HELLO, wait for WELCOME; then serve requests on a
    /// thread of its own. Blocks: call it from `spawn_blocking`.
    pub fn start(settings: Settings, hub: Arc<Hub>, rt: tokio::runtime::Handle) -> io::Result<Arc<Control>> {
        let control = Arc::new(Control { settings, hub, rt, writer: Mutex::new(None),
                                         ready_sent: AtomicBool::new(false) });
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
        let hello = json!({
            "type": "hello", "versions": [PROTOCOL_VERSION], "pid": std::process::id(),
            "token": self.settings.token, "release": self.settings.release,
            "state": self.hub.state(), "connections": self.hub.connections(),
        });
        wire::send(&sock, &hello, &[], &[])?;
        let reply = wire::recv(&sock, Some(Duration::from_secs(5)))?;
        if reply.kind() != "welcome" || reply.json.get("version").and_then(Value::as_u64) != Some(PROTOCOL_VERSION) {
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused,
                                      format!("orchestrator refused HELLO: {}", reply.json)));
        }
        *self.writer.lock().unwrap() = Some(sock.try_clone()?);
        log("connected", format!("control={} token={}", self.settings.control.display(), self.settings.token));
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

    fn send(&self, msg: &Value, blob: &[u8], fds: &[RawFd]) -> io::Result<()> {
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
        let id = msg.json.get("id").cloned().unwrap_or(Value::Null);
        let kind = msg.kind().to_string();
        let reply = match kind.as_str() {
            "adopt" => self.adopt(sock, msg),
            "release" => self.release(&msg, &id),
            "resume" => self.resume(),
            "close" => self.close(),
            "probe" => self.probe(msg),
            "stats" => Ok(Some(json!({"type": "stats", "stats": self.stats()}))),
            "listener" => self.send_listener(&id),
            _ => {
                msg.close_fds();
                Err(format!("unknown request type {:?}", kind))
            }
        };
        match reply {
            Ok(Some(mut body)) => {
                body["re"] = id;
                self.send(&body, &[], &[])
            }
            Ok(None) => Ok(()),
            Err(text) => {
                log("refused", format!("{}: {}", kind, text));
                self.send(&json!({"type": "error", "re": id, "message": text}), &[], &[])
            }
        }
    }

    fn standby(&self) -> bool {
        self.hub.phase() == Phase::Run && !self.hub.has_listener() && self.hub.connections() == 0
    }

    fn adopt(&self, sock: &StdStream, mut first: Message) -> Reply {
        if !self.standby() || first.json.get("part").and_then(Value::as_u64) != Some(0) {
            first.close_fds();
            return Err(format!("cannot adopt in state {}: not standby", self.hub.state()));
        }
        let parts = first.json.get("parts").and_then(Value::as_u64).unwrap_or(1);
        self.hub.set_phase(Phase::Hold);
        let (mut connections, mut listener) = (0usize, false);
        let mut msg = first;
        for part in 0..parts {
            if part > 0 {
                msg = wire::recv(sock, Some(PART_TIMEOUT)).map_err(|e| format!("adopt part {}: {}", part, e))?;
                if msg.kind() != "adopt" || msg.json.get("part").and_then(Value::as_u64) != Some(part) {
                    msg.close_fds();
                    return Err(format!("expected adopt part {}, got {} {}", part, msg.kind(), msg.json));
                }
            }
            let (n, l) = self.adopt_part(&mut msg)?;
            connections += n;
            listener |= l;
        }
        self.wait_taken();
        log("adopted", format!("connections={} listener={}", connections, listener));
        Ok(Some(json!({"type": "adopted", "connections": connections, "listener": listener})))
    }

    fn adopt_part(&self, msg: &mut Message) -> Result<(usize, bool), String> {
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
            self.add_conn(carried.clone(), *fd).map_err(|e| format!("adopting connection {}: {}", carried.id, e))?;
        }
        Ok((conns.len(), listener_index.is_some()))
    }

    fn set_listener(&self, fd: RawFd) -> io::Result<()> {
        let listener = unsafe { StdListener::from_raw_fd(fd) };
        listener.set_nonblocking(true)?;
        *self.hub.listener.lock().unwrap() = Some(Arc::new(AsyncFd::new(listener)?));
        self.hub.wake();
        Ok(())
    }

    /// A connection from a descriptor (adopted or probe), queued for `Handoff::accept`.
    fn add_conn(&self, mut carried: Carried, fd: RawFd) -> io::Result<()> {
        let std_stream = unsafe { StdStream::from_raw_fd(fd) };
        std_stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(std_stream)?;
        carried.id = self.hub.register(if carried.id == 0 { None } else { Some(carried.id) });
        let conn = Conn { stream, hub: self.hub.clone(), carried };
        if self.hub.queue(conn) {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::Other, "relay stopped accepting"))
        }
    }

    /// Before answering ADOPT or PROBE: every connection queued is in the relay's hands
    /// (subscribed to its broadcast channel), so nothing broadcast after the answer is
    /// missed by one of them.
    fn wait_taken(&self) {
        if !self.hub.wait_taken(TAKE_DEADLINE) {
            log("slow_accept", "the relay did not take every handed-over connection within 2 s: \
                 call accept() in a loop, subscribing each connection before the next call".into());
        }
    }

    fn release(&self, msg: &Message, id: &Value) -> Reply {
        if self.hub.phase() != Phase::Run {
            return Err(format!("cannot release in state {}: already released or not resumed", self.hub.state()));
        }
        let flush_ms = msg.json.get("flush_ms").and_then(Value::as_f64).unwrap_or(10.0).max(0.0);
        let stopped_ns = monotonic_ns();
        let bytes_out = self.hub.counters.bytes_out.load(Ordering::Relaxed);
        let (sender, mut exports) = mpsc::unbounded_channel::<Export>();
        *self.hub.exports.lock().unwrap() = Some(sender);
        let deadline = Instant::now() + Duration::from_secs_f64(flush_ms / 1000.0);
        let expected: HashSet<u64> = {
            let mut gate = self.hub.gate.write().unwrap(); // waits for reads in flight
            *gate = Phase::Flush(deadline);
            let live = self.hub.live.lock().unwrap().clone();
            live
        };
        self.hub.wake();
        let hub = self.hub.clone();
        let got = self.rt.block_on(async move {
            // every connection live at the stop exports itself, or ends (client gone)
            let limit = tokio::time::Instant::from_std(deadline + Duration::from_secs(2));
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
        });
        *self.hub.exports.lock().unwrap() = None;
        self.send_manifest(got, id, stopped_ns, bytes_out)?;
        Ok(None)
    }

    fn send_manifest(&self, got: Vec<Export>, id: &Value, stopped_ns: u64, bytes_out: u64) -> Reply {
        let listener = self.hub.listener.lock().unwrap().as_ref().map(|l| l.get_ref().as_raw_fd());
        let mut parked = self.hub.parked.lock().unwrap();
        let mut conns: Vec<(Carried, RawFd)> = Vec::with_capacity(got.len());
        for export in got {
            parked.insert(export.carried.id, export.decision);
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
        let first_room = MAX_FDS - usize::from(listener.is_some());
        let mut chunks: Vec<&[(Carried, RawFd)]> = vec![&conns[..first_room.min(conns.len())]];
        if conns.len() > first_room {
            chunks.extend(conns[first_room..].chunks(MAX_FDS));
        }
        let parts = chunks.len();
        for (index, chunk) in chunks.into_iter().enumerate() {
            let mut fds: Vec<RawFd> = Vec::with_capacity(chunk.len() + 1);
            let mut msg = json!({"type": "manifest", "re": id, "part": index, "parts": parts,
                                 "table": table::TABLE, "connections": chunk.len(), "listener": null});
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
            }
            let carried: Vec<Carried> = chunk.iter().map(|(c, _)| c.clone()).collect();
            let blob = table::encode(&carried, fds.len() as u32);
            fds.extend(chunk.iter().map(|(_, fd)| *fd));
            self.send(&msg, &blob, &fds).map_err(|e| format!("sending manifest part {}: {}", index, e))?;
        }
        Ok(None)
    }

    fn resume(&self) -> Reply {
        match self.hub.phase() {
            Phase::Run => return Err(format!("nothing to resume in state {}", self.hub.state())),
            Phase::Hold | Phase::Flush(_) => self.hub.set_phase(Phase::Run),
        }
        let parked: Vec<_> = self.hub.parked.lock().unwrap().drain().collect();
        let resumed_ns = monotonic_ns();
        for (_, decide) in parked {
            let _ = decide.send(Decision::Resume);
        }
        log("resumed", format!("connections={}", self.hub.connections()));
        Ok(Some(json!({"type": "resumed", "resumed_ns": resumed_ns})))
    }

    fn close(&self) -> Reply {
        if let Phase::Flush(_) = self.hub.phase() {
        } else {
            return Err(format!("close without release, in state {}", self.hub.state()));
        }
        let parked: Vec<_> = self.hub.parked.lock().unwrap().drain().collect();
        let ids: Vec<u64> = parked.iter().map(|(id, _)| *id).collect();
        for (_, decide) in parked {
            let _ = decide.send(Decision::Close);
        }
        let hub = self.hub.clone();
        self.rt.block_on(async move {
            let limit = tokio::time::Instant::now() + Duration::from_secs(2);
            while ids.iter().any(|id| hub.live.lock().unwrap().contains(id)) && tokio::time::Instant::now() < limit {
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
            self.add_conn(Carried::default(), *fd).map_err(|e| format!("probe connection: {}", e))?;
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
        json!({
            "state": self.hub.state(), "connections_open": self.hub.connections(),
            "connections_total": get(&c.connections_total), "bytes_in": get(&c.bytes_in),
            "bytes_out": get(&c.bytes_out), "frames_in": get(&c.frames_in),
            "frames_out": get(&c.frames_out), "lag_drops_frames": get(&c.lag_drops),
            "disconnects": get(&c.disconnects), "adopted": get(&c.adopted),
            "handed_over": get(&c.handed_over), "pid": std::process::id(),
            "uptime_s": self.hub.started.elapsed().as_secs_f64(),
            "implementation": "swapctl-handoff (rust)",
        })
    }
}
