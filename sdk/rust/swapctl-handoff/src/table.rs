//! The `conn-v1` connection table (docs/handoff-protocol.md section 5): one 56-byte
//! little-endian record per connection (`<QIIIIQQQQ`), then each connection's
//! `pending_in` and `unsent_out` bytes in record order.

use std::os::unix::io::RawFd;

pub const TABLE: &str = "conn-v1";
pub const RECORD: usize = 56;

/// What a connection carries from one relay to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    /// Kept across handoffs (logs and reports).
    pub id: u64,
    /// Bytes read from the client, not yet forwarded: the start of a message.
    pub pending_in: Vec<u8>,
    /// Bytes owed to the client, possibly starting mid-message: written first.
    pub unsent_out: Vec<u8>,
    /// bytes_in, frames_in, frames_out, lag_drops (opaque to the protocol).
    pub counters: [u64; 4],
}

/// One part's blob: the records (fd index = `first_index + i`) then the bytes.
pub fn encode(conns: &[Carried], first_index: u32) -> Vec<u8> {
    let data: usize = conns.iter().map(|c| c.pending_in.len() + c.unsent_out.len()).sum();
    let mut blob = Vec::with_capacity(conns.len() * RECORD + data);
    for (i, c) in conns.iter().enumerate() {
        blob.extend_from_slice(&c.id.to_le_bytes());
        blob.extend_from_slice(&(first_index + i as u32).to_le_bytes());
        blob.extend_from_slice(&(c.pending_in.len() as u32).to_le_bytes());
        blob.extend_from_slice(&(c.unsent_out.len() as u32).to_le_bytes());
        blob.extend_from_slice(&0u32.to_le_bytes());
        for counter in c.counters.iter() {
            blob.extend_from_slice(&counter.to_le_bytes());
        }
    }
    for c in conns {
        blob.extend_from_slice(&c.pending_in);
        blob.extend_from_slice(&c.unsent_out);
    }
    blob
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Decode `count` records; each comes back with its descriptor from `fds`.
pub fn decode(count: usize, blob: &[u8], fds: &[RawFd]) -> Result<Vec<(Carried, RawFd)>, String> {
    let end = count.checked_mul(RECORD).filter(|end| *end <= blob.len())
        .ok_or_else(|| format!("connection table of {} records runs past the blob", count))?;
    let mut pos = end;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let r = &blob[i * RECORD..(i + 1) * RECORD];
        let id = u64_at(r, 0);
        let index = u32_at(r, 8) as usize;
        let n_in = u32_at(r, 12) as usize;
        let n_out = u32_at(r, 16) as usize;
        if index >= fds.len() || pos + n_in + n_out > blob.len() {
            return Err(format!("connection {}: fd index or byte lengths out of range", id));
        }
        let counters = [u64_at(r, 24), u64_at(r, 32), u64_at(r, 40), u64_at(r, 48)];
        let carried = Carried {
            id,
            pending_in: blob[pos..pos + n_in].to_vec(),
            unsent_out: blob[pos + n_in..pos + n_in + n_out].to_vec(),
            counters,
        };
        pos += n_in + n_out;
        out.push((carried, fds[index]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let a = Carried { id: 7, pending_in: b"abc".to_vec(), unsent_out: b"xy".to_vec(), counters: [1, 2, 3, 4] };
        let b = Carried { id: 9, ..Default::default() };
        let blob = encode(&[a.clone(), b.clone()], 1);
        assert_eq!(blob.len(), 2 * RECORD + 5);
        let back = decode(2, &blob, &[10, 11, 12]).unwrap();
        assert_eq!(back, vec![(a, 11), (b, 12)]);
        assert!(decode(3, &blob, &[10, 11, 12]).is_err());
    }
}
