//! The `conn-v1` connection table (docs/handoff-protocol.md section 5): one 56-byte
//! little-endian record per connection (`<QIIIIQQQQ`), then each connection's
//! `pending_in` and `unsent_out` bytes in record order. And `delta-v1`, the pre-copy
//! extension's freeze (section 10): closed ids, then the same records where fd index
//! `NO_FD` means "pre-copied, no fd here" and flag DEFERRED means the unsent_out
//! length is owed but its bytes follow out of band (backlog.rs), not in this blob.
//! With the `tail` extension (section 12) flag TAIL means the unsent_out length is
//! owed and is the last that many bytes of the tail section, which ends part 0's blob.

use std::os::unix::io::RawFd;

pub const TABLE: &str = "conn-v1";
pub const DELTA: &str = "delta-v1";
pub const RECORD: usize = 56;
pub const NO_FD: u32 = 0xFFFF_FFFF;
/// Record flags (delta-v1).
pub const DEFERRED: u32 = 1;
pub const HEAD_STARTED: u32 = 2;
/// `tail` extension: the bytes owed are the end of the part's tail section.
pub const TAIL: u32 = 4;

/// The tail section (`tail` extension): each unit's length (u32), then the units.
pub fn encode_tail(blob: &mut Vec<u8>, units: &[&[u8]]) {
    for unit in units {
        blob.extend_from_slice(&(unit.len() as u32).to_le_bytes());
    }
    for unit in units {
        blob.extend_from_slice(unit);
    }
}

/// The tail section at the end of `blob`: `units` lengths then `bytes` bytes, after
/// the records' own bytes. Returns the units' lengths and the bytes.
pub fn decode_tail(blob: &[u8], units: usize, bytes: usize) -> Result<(Vec<usize>, &[u8]), String> {
    let size = units.checked_mul(4).and_then(|n| n.checked_add(bytes)).filter(|n| *n <= blob.len())
        .ok_or_else(|| format!("a tail of {} units and {} bytes runs past the blob", units, bytes))?;
    let start = blob.len() - size;
    let lens: Vec<usize> = (0..units).map(|i| u32_at(blob, start + i * 4) as usize).collect();
    if lens.iter().sum::<usize>() != bytes {
        return Err(format!("the tail's unit lengths do not add up to its {} bytes", bytes));
    }
    Ok((lens, &blob[blob.len() - bytes..]))
}

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
    let records: Vec<Record> = conns.iter().enumerate()
        .map(|(i, c)| Record { carried: c.clone(), fd_index: first_index + i as u32, flags: 0, owed: 0 })
        .collect();
    encode_delta(&[], &records)
}

/// A delta-v1 record: `fd_index` NO_FD for a pre-copied connection; with DEFERRED in
/// `flags`, `owed` is the length written and `carried.unsent_out` is not in the blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub carried: Carried,
    pub fd_index: u32,
    pub flags: u32,
    pub owed: u64,
}

/// A delta-v1 part's blob: closed ids, records, then each record's bytes (a conn-v1
/// blob when `closed` is empty and no record has flags).
pub fn encode_delta(closed: &[u64], records: &[Record]) -> Vec<u8> {
    let inline = |r: &Record| r.flags & (DEFERRED | TAIL) == 0;
    let data: usize = records.iter()
        .map(|r| r.carried.pending_in.len() + if inline(r) { r.carried.unsent_out.len() } else { 0 })
        .sum();
    let mut blob = Vec::with_capacity(closed.len() * 8 + records.len() * RECORD + data);
    for id in closed {
        blob.extend_from_slice(&id.to_le_bytes());
    }
    for r in records {
        let c = &r.carried;
        let n_out = if inline(r) { c.unsent_out.len() as u32 } else { r.owed.min(u32::MAX as u64) as u32 };
        blob.extend_from_slice(&c.id.to_le_bytes());
        blob.extend_from_slice(&r.fd_index.to_le_bytes());
        blob.extend_from_slice(&(c.pending_in.len() as u32).to_le_bytes());
        blob.extend_from_slice(&n_out.to_le_bytes());
        blob.extend_from_slice(&r.flags.to_le_bytes());
        for counter in c.counters.iter() {
            blob.extend_from_slice(&counter.to_le_bytes());
        }
    }
    for r in records {
        blob.extend_from_slice(&r.carried.pending_in);
        if inline(r) {
            blob.extend_from_slice(&r.carried.unsent_out);
        }
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

/// Decode `count` conn-v1 records; each comes back with its descriptor from `fds`.
pub fn decode(count: usize, blob: &[u8], fds: &[RawFd]) -> Result<Vec<(Carried, RawFd)>, String> {
    let (_, records) = decode_delta(0, count, blob, fds.len(), false)?;
    Ok(records.into_iter().map(|r| (r.carried, fds[r.fd_index as usize])).collect())
}

/// Decode a part: `closed` ids then `count` records (delta-v1 when `delta`: NO_FD and
/// DEFERRED allowed). Each record's fd index is checked against `nfds`.
pub fn decode_delta(closed: usize, count: usize, blob: &[u8], nfds: usize, delta: bool)
                    -> Result<(Vec<u64>, Vec<Record>), String> {
    let start = closed.checked_mul(8).filter(|end| *end <= blob.len())
        .ok_or_else(|| "closed-id list runs past the blob".to_string())?;
    let ids = (0..closed).map(|i| u64_at(blob, i * 8)).collect();
    let end = count.checked_mul(RECORD).and_then(|n| n.checked_add(start)).filter(|end| *end <= blob.len())
        .ok_or_else(|| format!("connection table of {} records runs past the blob", count))?;
    let mut pos = end;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let r = &blob[start + i * RECORD..start + (i + 1) * RECORD];
        let id = u64_at(r, 0);
        let index = u32_at(r, 8);
        let n_in = u32_at(r, 12) as usize;
        let n_out = u32_at(r, 16) as usize;
        let flags = if delta { u32_at(r, 20) } else { 0 };
        let inline = if flags & (DEFERRED | TAIL) != 0 { 0 } else { n_out };
        let fd_ok = (index as usize) < nfds || (delta && index == NO_FD);
        if !fd_ok || pos + n_in + inline > blob.len() {
            return Err(format!("connection {}: fd index or byte lengths out of range", id));
        }
        let counters = [u64_at(r, 24), u64_at(r, 32), u64_at(r, 40), u64_at(r, 48)];
        let carried = Carried {
            id,
            pending_in: blob[pos..pos + n_in].to_vec(),
            unsent_out: blob[pos + n_in..pos + n_in + inline].to_vec(),
            counters,
        };
        pos += n_in + inline;
        out.push(Record { carried, fd_index: index, flags, owed: if inline == 0 { n_out as u64 } else { 0 } });
    }
    Ok((ids, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_section_ends_the_blob_and_its_records_carry_no_bytes_inline() {
        let record = Record { carried: Carried { id: 7, ..Carried::default() }, fd_index: NO_FD, flags: TAIL, owed: 3 };
        let mut blob = encode_delta(&[], &[record.clone()]);
        encode_tail(&mut blob, &[b"xy", b"zzz"]);
        let (_, records) = decode_delta(0, 1, &blob, 0, true).unwrap();
        assert_eq!(records, vec![record]);
        let (lens, bytes) = decode_tail(&blob, 2, 5).unwrap();
        assert_eq!((lens, bytes), (vec![2, 3], &b"xyzzz"[..]));
        assert!(decode_tail(&blob, 2, 4).is_err(), "lengths that do not add up");
        assert!(decode_tail(&blob, 100, 5).is_err(), "past the blob");
    }

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

    #[test]
    fn delta_round_trip() {
        let pre = Record { carried: Carried { id: 3, pending_in: b"half".to_vec(), unsent_out: b"owed".to_vec(),
                                              counters: [1, 2, 3, 4] },
                           fd_index: NO_FD, flags: DEFERRED | HEAD_STARTED, owed: 9 };
        let new = Record { carried: Carried { id: 12, unsent_out: b"inline".to_vec(), ..Carried::default() },
                           fd_index: 0, flags: 0, owed: 0 };
        let blob = encode_delta(&[5, 6], &[pre.clone(), new.clone()]);
        assert_eq!(blob.len(), 16 + 2 * RECORD + 4 + 6, "a DEFERRED record's bytes are not in the blob");
        let (closed, back) = decode_delta(2, 2, &blob, 1, true).unwrap();
        assert_eq!(closed, vec![5, 6]);
        let expect_pre = Record { carried: Carried { unsent_out: Vec::new(), ..pre.carried.clone() }, ..pre };
        assert_eq!(back, vec![expect_pre, new]);
        assert!(decode_delta(2, 2, &blob, 1, false).is_err(), "NO_FD is not a conn-v1 index");
        assert!(decode_delta(3, 2, &blob, 1, true).is_err());
        assert!(decode_delta(2, 2, &blob[..blob.len() - 1], 1, true).is_err());
    }
}
