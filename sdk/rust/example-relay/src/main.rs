//! swapctl-example-relay: Protocol V2 broadcast with echo, whole frames only, on a
//! tokio multi-thread runtime, built on the swapctl-handoff crate.
//!
//!   swapctl-example-relay                       started by swapctl (SWAPCTL_HANDOFF set)
//!   swapctl-example-relay --legacy --socket P   no handoff: deletes and binds P, like
//!                                               the real relays with a compiled-in path
//! Options: --domain-byte N (relay_domain to forward, default 1), --any-domain,
//! --threads N (runtime worker threads, default: one per core), --no-precopy (offer
//! swapctl plain version 1 of the handoff, without the precopy, adopt-resume and tail
//! extensions), --no-tail (offer precopy and adopt-resume, not tail: to measure what
//! the tail extension saves), --no-defer-all (do not offer defer-all: the freeze then
//! describes what each client is owed inside the pause, as before it).

use std::process::exit;
use std::sync::Arc;

use swapctl_handoff::{Handoff, Options as Offer, V2Frames};
use tokio::sync::broadcast;

const QUEUE: usize = 16_384; // chunks queued per consumer, as the real relays

struct Options {
    legacy: Option<String>,
    domain: Option<u8>,
    threads: Option<usize>,
    precopy: bool,
    tail: bool,
    defer_all: bool,
}

fn usage(text: &str) -> ! {
    eprintln!("swapctl-example-relay: error: {}", text);
    eprintln!("usage: swapctl-example-relay [--legacy --socket PATH] [--domain-byte N | --any-domain] [--threads N] [--no-precopy] [--no-tail] [--no-defer-all]");
    exit(2)
}

fn options() -> Options {
    let mut o = Options { legacy: None, domain: Some(1), threads: None, precopy: true, tail: true, defer_all: true };
    let mut legacy = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| usage(&format!("{} needs a value", name)));
        match arg.as_str() {
            "--legacy" => legacy = true,
            "--socket" => o.legacy = Some(value("--socket")),
            "--domain-byte" => o.domain = Some(value("--domain-byte").parse().unwrap_or_else(|_| usage("--domain-byte: use 0-255"))),
            "--any-domain" => o.domain = None,
            "--no-precopy" => o.precopy = false,
            "--no-tail" => o.tail = false,
            "--no-defer-all" => o.defer_all = false,
            "--threads" => o.threads = Some(value("--threads").parse().unwrap_or_else(|_| usage("--threads: use a count"))),
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {:?}", other)),
        }
    }
    if legacy != o.legacy.is_some() {
        usage("--legacy and --socket PATH go together (a relay with a compiled-in path)");
    }
    o
}

async fn run(o: Options) -> std::io::Result<()> {
    let mut relay = match &o.legacy {
        Some(path) => Handoff::bind(path)?,
        None => match Handoff::join_with(Offer { precopy: o.precopy, adopt_resume: o.precopy, tail: o.tail,
                                                 defer_all: o.defer_all, max_owed_units: QUEUE,
                                                 ..Offer::default() }).await? {
            Some(relay) => relay,
            None => usage("SWAPCTL_HANDOFF is not set: start me through swapctl, or use --legacy --socket PATH"),
        },
    };
    let (tx, _) = broadcast::channel::<Arc<[u8]>>(QUEUE);
    eprintln!("swapctl-example-relay: serving (pid {}, {})", std::process::id(),
              if relay.managed() { "handoff" } else { "legacy" });
    relay.ready();
    loop {
        let conn = relay.accept().await;
        tokio::spawn(conn.serve(V2Frames::new(o.domain), tx.clone(), tx.subscribe()));
    }
}

fn main() {
    let o = options();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = o.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder.enable_all().build().unwrap_or_else(|e| {
        eprintln!("swapctl-example-relay: cannot start the runtime: {}", e);
        exit(3)
    });
    if let Err(e) = runtime.block_on(run(o)) {
        eprintln!("swapctl-example-relay: {}", e);
        exit(3);
    }
}
