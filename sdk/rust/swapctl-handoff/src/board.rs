//! The board: what a pre-copy freeze reads of every connection, in one dense array.
//!
//! The freeze visits every live connection with every client frozen (precopy.rs).
//! Read from the connections' `Slot`s (one allocation each, ~250 bytes, last touched
//! by a worker) that walk cost ~25 ns a connection at 5,000 clients, cache misses
//! mostly: 130 µs of a 0.48 ms pause, the part of the pause that grew with the clients.
//! Here each connection has a 32-byte `Cell` (its id, how far it has written, when it
//! last found its receiver empty, its flags), 1,024 to a chunk: the walk reads
//! memory in order, two cells to a cache line.
//!
//! A connection's task is the only writer of its cell's state; its seat is claimed
//! (`claim`, under the `live` lock) when the connection registers and vacated
//! (`vacate`, under the same lock) when it is forgotten, so the cells with an id are
//! exactly the connections in `live` while that lock is held. The cell returns to
//! the free list when its `Seat` (owned by the `Slot`) is dropped, after the last
//! task that could write to it is gone.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const CHUNK: usize = 1024;

/// One connection's state as the freeze reads it.
#[repr(C, align(32))]
#[derive(Default)]
pub struct Cell {
    /// 1 + the connection's id; 0: a free seat.
    id: AtomicU64,
    /// 1 + the number of the last unit written whole to the client, when everything it
    /// is owed is broadcast units (so the ring can say what they are); 0: unknown.
    /// Published under the gate with every write (hub.rs).
    pub written: AtomicU64,
    /// `Hub::sent_seq` as read before the task last found its receiver empty.
    pub drained: AtomicU64,
    /// What the task last said about itself: PENDING, OWES, STARTED, STALE, HEAD (hub.rs).
    pub flags: AtomicU32,
}

impl Cell {
    /// The connection seated here, if any.
    pub fn id(&self) -> Option<u64> {
        self.id.load(Ordering::Relaxed).checked_sub(1)
    }
}

struct Chunks {
    chunks: Vec<Arc<[Cell]>>,
    free: Vec<usize>,
}

/// Every connection's cell; cloned cheaply (one shared board per hub).
#[derive(Clone)]
pub struct Board {
    inner: Arc<Mutex<Chunks>>,
}

impl Default for Board {
    fn default() -> Board {
        Board { inner: Arc::new(Mutex::new(Chunks { chunks: Vec::new(), free: Vec::new() })) }
    }
}

impl Board {
    /// A free seat (a new chunk when none is free), not yet claimed: its cell holds
    /// `flags` and reads as no connection until `claim`.
    pub fn seat(&self, flags: u32) -> Seat {
        let mut inner = self.inner.lock().unwrap();
        let at = match inner.free.pop() {
            Some(at) => at,
            None => {
                let base = inner.chunks.len() * CHUNK;
                inner.chunks.push((0..CHUNK).map(|_| Cell::default()).collect());
                inner.free.extend((base + 1..base + CHUNK).rev());
                base
            }
        };
        let chunk = inner.chunks[at / CHUNK].clone();
        let seat = Seat { chunk, at: at % CHUNK, board: self.inner.clone() };
        seat.cell().flags.store(flags, Ordering::Relaxed);
        seat
    }

    /// Every cell, seated or not, in order (a seated cell read under the `live` lock
    /// is a live connection).
    pub fn each(&self, mut visit: impl FnMut(&Cell)) {
        let chunks = self.inner.lock().unwrap().chunks.clone();
        for chunk in chunks.iter() {
            chunk.iter().for_each(&mut visit);
        }
    }
}

/// A connection's place on the board.
pub struct Seat {
    chunk: Arc<[Cell]>,
    at: usize,
    board: Arc<Mutex<Chunks>>,
}

impl Seat {
    pub fn cell(&self) -> &Cell {
        &self.chunk[self.at]
    }

    /// The connection `id` sits here (under the `live` lock).
    pub fn claim(&self, id: u64) {
        self.cell().id.store(id + 1, Ordering::Relaxed);
    }

    /// The connection left `live` (under its lock): the walk skips the cell from now.
    pub fn vacate(&self) {
        self.cell().id.store(0, Ordering::Relaxed);
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let cell = self.cell();
        cell.id.store(0, Ordering::Relaxed);
        cell.written.store(0, Ordering::Relaxed);
        cell.drained.store(0, Ordering::Relaxed);
        cell.flags.store(0, Ordering::Relaxed);
        let mut inner = self.board.lock().unwrap();
        let base = inner.chunks.iter().position(|c| Arc::ptr_eq(c, &self.chunk)).expect("a seat's chunk is the board's");
        inner.free.push(base * CHUNK + self.at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seated(board: &Board) -> Vec<u64> {
        let mut ids = Vec::new();
        board.each(|cell| ids.extend(cell.id()));
        ids
    }

    #[test]
    fn a_seat_reads_as_its_connection_from_claim_to_vacate_and_is_reused_once_dropped() {
        let board = Board::default();
        let seats: Vec<Seat> = (0..CHUNK + 2).map(|_| board.seat(8)).collect();
        assert_eq!(seated(&board), Vec::<u64>::new(), "not claimed yet");
        for (id, seat) in seats.iter().enumerate() {
            seat.claim(id as u64 * 10);
        }
        assert_eq!(seated(&board), (0..CHUNK as u64 + 2).map(|i| i * 10).collect::<Vec<_>>());
        assert_eq!(seats[CHUNK + 1].cell().flags.load(Ordering::Relaxed), 8, "a new seat holds the flags it was given");
        seats[1].vacate();
        assert!(!seated(&board).contains(&10), "vacated: the walk skips it");
        let mut seats = seats;
        let gone = seats.remove(1);
        gone.cell().written.store(7, Ordering::Relaxed);
        drop(gone);
        let again = board.seat(0);
        assert_eq!((again.at, again.cell().written.load(Ordering::Relaxed)), (1, 0), "the dropped seat, cleared");
        assert_eq!(board.inner.lock().unwrap().chunks.len(), 2);
    }
}
