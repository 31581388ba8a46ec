//! The relay side of the swapctl handoff protocol (docs/handoff-protocol.md) for
//! tokio relays shaped like the generic relay: a broadcast channel and a task per
//! connection.
//!
//! ```no_run
//! use std::sync::Arc;
//! use swapctl_handoff::{Handoff, V2Frames};
//! use tokio::sync::broadcast;
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let mut relay = match Handoff::join().await? {
//!         Some(relay) => relay,                                  // swapctl started us
//!         None => Handoff::bind("/tmp/alphapulse/market_data.sock")?, // as before
//!     };
//!     let (tx, _) = broadcast::channel::<Arc<[u8]>>(16_384);
//!     relay.ready();
//!     loop {
//!         let conn = relay.accept().await;
//!         tokio::spawn(conn.serve(V2Frames::new(Some(1)), tx.clone(), tx.subscribe()));
//!     }
//! }
//! ```
//!
//! `accept` yields every connection the relay must serve: accepted on the listener
//! (which the orchestrator hands over), adopted from the previous relay with its
//! carried state, or the orchestrator's probe clients. `Conn::serve` reads, forwards
//! through `Inbound`, writes what the broadcast channel brings, and takes part in
//! RELEASE / RESUME / CLOSE on its own. The control channel runs on a thread.
//!
//! The relay offers the `precopy` extension (docs/handoff-protocol.md section 10):
//! under an orchestrator that grants it, every descriptor moves before the pause, the
//! pause carries only what changed, and the bytes owed to clients follow after the
//! new relay resumed, as a memfd. It offers `adopt-resume` too (section 11): the
//! ADOPT that ends the pause may ask it to start reading, without a RESUME round trip.
//! And `tail` (section 12): a freeze that finds a fan-out in flight describes the
//! connections still owed its units from their slots, with those units once for all;
//! or, preferred, `defer-all` (section 13): it describes none of them, every adopted
//! client is held by one flag, and what each is owed comes after the resume.
//! `Handoff::join_with(Options { precopy: false, adopt_resume: false, tail: false, defer_all: false, ..Options::default() })`
//! offers plain version 1. Every broadcast must go through `Conn::serve` (the freeze
//! finds the connections that may owe bytes by counting them).

pub mod backlog;
mod board;
mod conn;
mod control;
pub mod framing;
mod hub;
mod precopy;
mod sched;
pub mod table;
pub mod wire;

use std::io;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener as StdListener;
use std::path::Path;
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

pub use conn::{Conn, READ_SIZE};
pub use control::{monotonic_ns, Settings, PROTOCOL_VERSION};
pub use precopy::PRECOPY_VERSION;
pub use framing::{Chunks, Inbound, V2Frames};
pub use table::Carried;

use control::Control;
use hub::{Gone, Hub, Phase};

/// The generic relay's broadcast capacity (chunks queued per consumer).
pub const DEFAULT_MAX_OWED_UNITS: usize = 16_384;
/// The bytes one client's BACKLOG carries at most: the Python reference relay's bound
/// on a slow consumer (`--max-backlog`).
pub const DEFAULT_MAX_OWED_BYTES: usize = 16 * 1024 * 1024;

/// What a relay offers the orchestrator.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Offer the `precopy` extension (section 10). Default: true.
    pub precopy: bool,
    /// Offer the `adopt-resume` extension (section 11): an ADOPT may ask this relay to
    /// start reading at its end, one round trip fewer inside the pause. Default: true.
    pub adopt_resume: bool,
    /// Offer the `tail` extension (section 12, with pre-copy): the units of a fan-out
    /// in flight at a freeze move once, in the delta, and each client still owed some
    /// of them is one record that says how many bytes. Default: true.
    pub tail: bool,
    /// Offer the `defer-all` extension (section 13, with pre-copy): a freeze describes
    /// no client's output (no tail, no records for what clients are owed), so the pause
    /// does not grow with a fan-out in flight; every client waits for its owed bytes,
    /// which move after the resume (BACKLOG). Default: true.
    pub defer_all: bool,
    /// With pre-copy, the units owed to one client that move to the next relay at most
    /// (the oldest whole units are shed past it, counted as lag drops): set it to your
    /// broadcast channel's capacity, the bound a slow consumer has on this relay.
    /// Default: 16,384.
    pub max_owed_units: usize,
    /// With pre-copy, the bytes owed to one client that move to the next relay at most,
    /// shed the same way. A channel's capacity is in messages, and a message can be a
    /// whole 64 KiB read: 16,384 of them are up to 1 GiB for every slow client, all
    /// written into the memfd at each swap (under a loaded bench, hundreds of MB per
    /// swap, a BACKLOG that missed its deadline and a candidate stuck holding its
    /// clients). Default: 16 MiB.
    pub max_owed_bytes: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { precopy: true, adopt_resume: true, tail: true, defer_all: true, max_owed_units: DEFAULT_MAX_OWED_UNITS, max_owed_bytes: DEFAULT_MAX_OWED_BYTES }
    }
}

/// A relay's link to its listener, its connections and (in handoff mode) swapctl.
pub struct Handoff {
    hub: Arc<Hub>,
    incoming: mpsc::UnboundedReceiver<Conn>,
    wake: watch::Receiver<u64>,
    control: Option<Arc<Control>>,
    took_queued: bool,
}

impl Handoff {
    fn with_hub() -> Handoff {
        let (sender, incoming) = mpsc::unbounded_channel();
        let hub = Hub::new(sender);
        let wake = hub.wakeups();
        Handoff { hub, incoming, wake, control: None, took_queued: false }
    }

    /// Join the orchestrator named by SWAPCTL_HANDOFF (connect, HELLO, WELCOME),
    /// with no listener yet; None when the variable is unset. Call `ready` next.
    pub async fn join() -> io::Result<Option<Handoff>> {
        Handoff::join_with(Options::default()).await
    }

    /// `join`, offering what `options` says.
    pub async fn join_with(options: Options) -> io::Result<Option<Handoff>> {
        let mut settings = match Settings::from_env() {
            Some(settings) => settings,
            None => return Ok(None),
        };
        settings.precopy = options.precopy;
        settings.adopt_resume = options.adopt_resume;
        settings.tail = options.tail;
        settings.defer_all = options.defer_all;
        settings.max_owed_units = options.max_owed_units;
        settings.max_owed_bytes = options.max_owed_bytes;
        let mut relay = Handoff::with_hub();
        let hub = relay.hub.clone();
        let rt = tokio::runtime::Handle::current();
        let control = tokio::task::spawn_blocking(move || Control::start(settings, hub, rt))
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::Other, e.to_string()))??;
        relay.control = Some(control);
        Ok(Some(relay))
    }

    /// No handoff: serve a listening socket of our own (the legacy way).
    pub fn listen(listener: StdListener) -> io::Result<Handoff> {
        listener.set_nonblocking(true)?;
        let relay = Handoff::with_hub();
        *relay.hub.listener.lock().unwrap() = Some(Arc::new(AsyncFd::new(listener)?));
        Ok(relay)
    }

    /// No handoff: delete whatever is at `path` and bind it, like the real relays.
    pub fn bind<P: AsRef<Path>>(path: P) -> io::Result<Handoff> {
        let path = path.as_ref();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        Handoff::listen(StdListener::bind(path)?)
    }

    /// True when swapctl manages this relay.
    pub fn managed(&self) -> bool {
        self.control.is_some()
    }

    /// READY: the relay can take over (buffers allocated, config loaded).
    pub fn ready(&self) {
        if let Some(control) = &self.control {
            control.ready();
        }
    }

    /// The next connection to serve (accepted, adopted or a probe client). Subscribe
    /// it to the broadcast channel before calling `accept` again: an ADOPT or PROBE is
    /// answered once the relay has come back for more after its last connection.
    pub async fn accept(&mut self) -> Conn {
        if self.took_queued {
            self.took_queued = false;
            self.hub.taken();
        }
        if let Ok(conn) = self.incoming.try_recv() {
            self.took_queued = true;
            return conn;
        }
        loop {
            let listener = self.hub.listener.lock().unwrap().clone();
            let accepting = listener.is_some() && self.hub.phase() == Phase::Run;
            self.wake.borrow_and_update();
            tokio::select! {
                biased;
                conn = self.incoming.recv() => {
                    if let Some(conn) = conn {
                        self.took_queued = true;
                        return conn;
                    }
                }
                _ = self.wake.changed() => {}
                accepted = accept_one(&self.hub, listener), if accepting => match accepted {
                    Ok(Some(conn)) => return conn,
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("swapctl-handoff: accept failed: {}", e);
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                },
            }
        }
    }
}

/// One accept, under the intake lock: a release waits for it, and the new connection is
/// registered before the release counts what it must export.
async fn accept_one(hub: &Arc<Hub>, listener: Option<Arc<AsyncFd<StdListener>>>) -> io::Result<Option<Conn>> {
    let listener = match listener {
        Some(listener) => listener,
        None => return Ok(None),
    };
    let mut ready = listener.readable().await?;
    let accepted = {
        let Some(_intake) = hub.take_in() else {
            return Ok(None);
        };
        match listener.get_ref().accept() {
            Ok((sock, _)) => {
                let registered = hub.register(None, sock.as_raw_fd());
                Some((sock, registered))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => return Err(e),
        }
    };
    let (sock, (id, slot)) = match accepted {
        Some(pair) => pair,
        None => {
            ready.clear_ready();
            return Ok(None);
        }
    };
    let made = sock.set_nonblocking(true).and_then(|_| tokio::net::UnixStream::from_std(sock));
    match made {
        Ok(stream) => Ok(Some(Conn { stream: conn::Sock::live(stream), hub: hub.clone(), carried: Carried { id, ..Carried::default() },
                                     slot, held: false, staged: false })),
        Err(e) => {
            hub.forget(id, Gone::Disconnected);
            Err(e)
        }
    }
}

/// The listening socket's descriptor, if this relay has one (for logs).
pub fn listener_fd(relay: &Handoff) -> Option<i32> {
    relay.hub.listener.lock().unwrap().as_ref().map(|l| l.get_ref().as_raw_fd())
}
