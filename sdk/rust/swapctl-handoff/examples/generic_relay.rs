//! The integration guide's "after" relay (GUIDE.md): a generic relay with handoff.
//! Build: cargo build --release --offline --examples

use std::sync::Arc;
use swapctl_handoff::{Handoff, Inbound};
use tokio::sync::broadcast;

const PATH: &str = "/tmp/alphapulse/market_data.sock";

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut relay = match Handoff::join().await? {
        Some(relay) => relay,          // started by swapctl: listener and clients come from it
        None => Handoff::bind(PATH)?,  // started by hand: as before
    };
    let (tx, _) = broadcast::channel::<Arc<[u8]>>(16_384);
    relay.ready();
    loop {
        let conn = relay.accept().await;
        tokio::spawn(conn.serve(Check, tx.clone(), tx.subscribe()));
    }
}

struct Check;

impl Inbound for Check {
    fn feed(&mut self, data: &[u8], forward: &mut dyn FnMut(Vec<u8>, u64)) {
        if valid(data) {
            forward(data.to_vec(), 1);
        }
    }
}

/// The generic relay's check: a read starts with the magic and the relay's domain.
fn valid(data: &[u8]) -> bool {
    data.len() >= 32 && data[..4] == [0xEF, 0xBE, 0xAD, 0xDE] && data[4] == 1
}
