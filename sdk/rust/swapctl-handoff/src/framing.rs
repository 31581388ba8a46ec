//! What a relay does with the bytes a client sends: the `Inbound` trait, and
//! `V2Frames`, Protocol V2 framing (../shared/protocol/protocol-v2.md) that forwards
//! whole frames only, whatever the split or coalescing of the reads.
//!
//! `V2Frames` scans one 32-byte header at a time: a run of complete, valid frames is
//! forwarded as one unit; bytes that cannot start a frame (wrong magic, a declared
//! size over `max_message`) are skipped up to the next magic; a complete frame of
//! another domain is dropped whole. At most one incomplete frame is held: it is the
//! connection's `pending_in` in a handoff.

/// Turns bytes read from one client into units to broadcast.
pub trait Inbound: Send + 'static {
    /// Bytes read from the client (or carried over by a handoff, fed first): call
    /// `forward(unit, frames)` for each unit to broadcast, in order.
    fn feed(&mut self, data: &[u8], forward: &mut dyn FnMut(Vec<u8>, u64));
    /// Bytes held back, e.g. the start of a frame whose end has not arrived.
    fn pending(&self) -> &[u8] {
        &[]
    }
    /// What was read and never forwarded, if this inbound counts it: (bytes skipped as
    /// garbage or cut frames, times it resynchronised). None: not counted, and the
    /// relay's stats then leave `skipped_bytes` out (swapctl reports lost as unknown
    /// rather than vouch for bytes nobody counted).
    fn skipped(&self) -> Option<(u64, u64)> {
        None
    }
}

/// Forward each read as it is (like the real relays, which do not frame).
pub struct Chunks;

impl Inbound for Chunks {
    fn feed(&mut self, data: &[u8], forward: &mut dyn FnMut(Vec<u8>, u64)) {
        if !data.is_empty() {
            forward(data.to_vec(), 1);
        }
    }
    fn skipped(&self) -> Option<(u64, u64)> {
        Some((0, 0)) // every byte read is forwarded
    }
}

pub const HEADER_SIZE: usize = 32;
pub const MAX_MESSAGE: usize = 1_048_576;
const MAGIC: [u8; 4] = [0xEF, 0xBE, 0xAD, 0xDE];

/// Counters a `V2Frames` keeps (read them for stats).
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCounts {
    pub frames: u64,
    pub skipped_bytes: u64,
    pub resyncs: u64,
    pub rejected_domain: u64,
}

pub struct V2Frames {
    domain: Option<u8>,
    max_message: usize,
    tail: Vec<u8>,
    pub counts: FrameCounts,
}

impl V2Frames {
    /// `domain`: the relay_domain byte to accept (None: any).
    pub fn new(domain: Option<u8>) -> V2Frames {
        V2Frames { domain, max_message: MAX_MESSAGE, tail: Vec::new(), counts: FrameCounts::default() }
    }

    fn scan(&mut self, buf: &[u8], forward: &mut dyn FnMut(Vec<u8>, u64)) -> usize {
        let n = buf.len();
        let mut pos = 0;
        let mut run_start = 0;
        let mut run_frames = 0u64;
        while n - pos >= HEADER_SIZE {
            let size = u32::from_le_bytes([buf[pos + 24], buf[pos + 25], buf[pos + 26], buf[pos + 27]]) as usize;
            let total = HEADER_SIZE + size;
            if buf[pos..pos + 4] == MAGIC && total <= self.max_message {
                if n - pos < total {
                    break;
                }
                if self.domain.map_or(true, |d| d == buf[pos + 4]) {
                    if run_frames == 0 {
                        run_start = pos;
                    }
                    run_frames += 1;
                } else {
                    emit(buf, run_start, pos, &mut run_frames, forward);
                    self.counts.rejected_domain += 1;
                }
                pos += total;
                continue;
            }
            emit(buf, run_start, pos, &mut run_frames, forward);
            pos = self.skip(buf, pos);
        }
        emit(buf, run_start, pos, &mut run_frames, forward);
        if pos < n && !MAGIC.starts_with(&buf[pos..n.min(pos + 4)]) {
            pos = self.skip(buf, pos);
        }
        pos
    }

    /// From `pos` (which cannot start a frame) to the next place a frame could start.
    fn skip(&mut self, buf: &[u8], pos: usize) -> usize {
        let n = buf.len();
        let mut next = n;
        for i in pos + 1..n {
            if MAGIC.starts_with(&buf[i..n.min(i + 4)]) {
                next = i;
                break;
            }
        }
        self.counts.skipped_bytes += (next - pos) as u64;
        self.counts.resyncs += 1;
        next
    }
}

fn emit(buf: &[u8], start: usize, end: usize, frames: &mut u64, forward: &mut dyn FnMut(Vec<u8>, u64)) {
    if *frames > 0 {
        forward(buf[start..end].to_vec(), *frames);
        *frames = 0;
    }
}

impl Inbound for V2Frames {
    fn feed(&mut self, data: &[u8], forward: &mut dyn FnMut(Vec<u8>, u64)) {
        let mut total = 0u64;
        let mut counting = |unit: Vec<u8>, frames: u64| {
            total += frames;
            forward(unit, frames);
        };
        if self.tail.is_empty() {
            let pos = self.scan(data, &mut counting);
            self.tail = data[pos..].to_vec();
        } else {
            let mut buf = std::mem::take(&mut self.tail);
            buf.extend_from_slice(data);
            let pos = self.scan(&buf, &mut counting);
            buf.drain(..pos);
            self.tail = buf;
        }
        self.counts.frames += total;
    }

    fn skipped(&self) -> Option<(u64, u64)> {
        Some((self.counts.skipped_bytes, self.counts.resyncs))
    }

    fn pending(&self) -> &[u8] {
        &self.tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(domain: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&[domain, 1, 2, 0]);
        f.extend_from_slice(&[0u8; 16]);
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.extend_from_slice(&[0u8; 4]);
        f.extend_from_slice(payload);
        f
    }

    fn run(framer: &mut V2Frames, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in pieces {
            framer.feed(piece, &mut |unit, _| out.extend_from_slice(&unit));
        }
        out
    }

    #[test]
    fn whole_frames_whatever_the_split() {
        let a = frame(1, b"hello");
        let b = frame(1, &[7u8; 300]);
        let stream: Vec<u8> = [a.clone(), b.clone()].concat();
        for cut in 0..stream.len() {
            let mut f = V2Frames::new(Some(1));
            let mut seen = Vec::new();
            f.feed(&stream[..cut], &mut |unit, _| seen.push(unit));
            assert!(seen.iter().all(|u| *u == a || *u == stream), "cut {}", cut);
            f.feed(&stream[cut..], &mut |unit, _| seen.push(unit));
            assert_eq!(seen.concat(), stream);
            assert!(f.pending().is_empty());
        }
    }

    #[test]
    fn garbage_and_other_domains_are_dropped() {
        let good = frame(1, b"x");
        let other = frame(2, b"y");
        let mut f = V2Frames::new(Some(1));
        let out = run(&mut f, &[b"garbage!", &other, &good[..10], &good[10..]]);
        assert_eq!(out, good);
        assert_eq!(f.counts.rejected_domain, 1);
        assert_eq!(f.counts.skipped_bytes, 8);
        assert_eq!(f.counts.resyncs, 1);
        assert_eq!(f.skipped(), Some((8, 1)));
    }

    #[test]
    fn partial_frame_is_pending() {
        let good = frame(1, b"abcdef");
        let mut f = V2Frames::new(Some(1));
        assert!(run(&mut f, &[&good[..20]]).is_empty());
        assert_eq!(f.pending(), &good[..20]);
    }
}
