//! Bytes owed to clients, carried out of band in a memfd (pre-copy extension,
//! `backlog-v1`, docs/handoff-protocol.md section 10).
//!
//! A relay frozen by a pre-copy RELEASE only says *that* a client is owed bytes (flag
//! DEFERRED). Once the candidate has resumed, OWED asks for them: every such
//! connection's units go into one memfd, which travels as a single descriptor (the
//! orchestrator never reads it). The adopter maps it and writes straight from the
//! mapping (`MappedUnit`), in front of anything newer for that client.
//!
//! Layout, little-endian, the table then the data:
//!   per connection: id u64, head_sent u32, units u32, flags u32 (0)   (20 bytes)
//!                   then `units` x (length u32, frames u32)             (8 bytes each)
//!   data:           each connection's units, in table order, back to back.
//! The first unit is the one the relay had started writing: its first `head_sent`
//! bytes already reached the client, and it is never shed. Units after the first are
//! coalesced up to `COALESCE` bytes (whole units only) to keep the table short.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::Arc;

/// A unit of bytes owed, whatever holds it (a broadcast message, a mapped slice).
pub type Owned = Box<dyn AsRef<[u8]> + Send>;

/// One connection's owed units, as its task hands them to the control thread.
pub struct Entry {
    pub id: u64,
    pub head_sent: usize,
    /// (unit, frames in it); frames is 1 for a broadcast message.
    pub units: Vec<(Owned, u32)>,
}

pub const ENTRY: usize = 20;
pub const UNIT: usize = 8;
pub const COALESCE: usize = 256 * 1024;
const IOV_MAX: usize = 1024;

/// (length, frames) of the units as the table lists them: the first alone, the
/// others merged while a group stays within COALESCE bytes.
pub fn coalesce(units: &[(usize, u32)]) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    let mut rest = units.iter();
    match rest.next() {
        Some(first) => out.push(*first),
        None => return out,
    }
    let (mut size, mut frames) = (0usize, 0u32);
    for (len, n) in rest {
        if size > 0 && size + len > COALESCE {
            out.push((size, frames));
            size = 0;
            frames = 0;
        }
        size += len;
        frames += n;
    }
    if size > 0 {
        out.push((size, frames));
    }
    out
}

/// The table for `entries` (the data is their units, back to back).
pub fn encode_table(entries: &[Entry]) -> Vec<u8> {
    let mut table = Vec::new();
    for e in entries {
        let lens: Vec<(usize, u32)> = e.units.iter().map(|(u, f)| ((**u).as_ref().len(), *f)).collect();
        let groups = coalesce(&lens);
        table.extend_from_slice(&e.id.to_le_bytes());
        table.extend_from_slice(&(e.head_sent as u32).to_le_bytes());
        table.extend_from_slice(&(groups.len() as u32).to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
        for (len, frames) in groups {
            table.extend_from_slice(&(len as u32).to_le_bytes());
            table.extend_from_slice(&frames.to_le_bytes());
        }
    }
    table
}

/// One connection's units as the table describes them: (offset in the data, length,
/// frames), offsets counted from the start of the memfd.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub id: u64,
    pub head_sent: usize,
    pub units: Vec<(usize, usize, u32)>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parse a backlog of `size` bytes whose first `table_len` bytes are the table.
pub fn parse(table: &[u8], table_len: usize, size: usize, count: usize) -> Result<Vec<Parsed>, String> {
    let mut out = Vec::with_capacity(count);
    let (mut pos, mut data) = (0usize, table_len);
    for _ in 0..count {
        if pos + ENTRY > table_len {
            return Err("backlog table runs past its length".into());
        }
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&table[pos..pos + 8]);
        let id = u64::from_le_bytes(raw);
        let head_sent = u32_at(table, pos + 8) as usize;
        let n = u32_at(table, pos + 12) as usize;
        pos += ENTRY;
        let mut units = Vec::with_capacity(n.min(table_len / UNIT));
        for _ in 0..n {
            if pos + UNIT > table_len {
                return Err("backlog table runs past its length".into());
            }
            let len = u32_at(table, pos) as usize;
            let frames = u32_at(table, pos + 4);
            pos += UNIT;
            if data + len > size {
                return Err(format!("connection {}: backlog bytes run past the memfd", id));
            }
            units.push((data, len, frames));
            data += len;
        }
        if head_sent > 0 && units.first().map_or(true, |u| head_sent >= u.1) {
            return Err(format!("connection {}: head_sent {} past its unit", id, head_sent));
        }
        out.push(Parsed { id, head_sent, units });
    }
    Ok(out)
}

fn err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{}: {}", what, e))
}

/// Write `entries` into a new memfd: (table_bytes, data_bytes, fd). The caller
/// closes the fd once sent. Nothing owed: no memfd.
pub fn write_memfd(entries: &[Entry]) -> io::Result<(usize, usize, Option<RawFd>)> {
    let table = encode_table(entries);
    let data: usize = entries.iter().flat_map(|e| e.units.iter()).map(|(u, _)| (**u).as_ref().len()).sum();
    if entries.is_empty() {
        return Ok((table.len(), data, None));
    }
    let fd = unsafe { libc::memfd_create(b"swapctl-backlog\0".as_ptr() as *const libc::c_char, libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(err("memfd_create"));
    }
    let mut bufs: Vec<&[u8]> = vec![&table];
    bufs.extend(entries.iter().flat_map(|e| e.units.iter()).map(|(u, _)| (**u).as_ref()).filter(|b| !b.is_empty()));
    if let Err(e) = write_all(fd, &bufs) {
        unsafe { libc::close(fd) };
        return Err(e);
    }
    Ok((table.len(), data, Some(fd)))
}

fn write_all(fd: RawFd, bufs: &[&[u8]]) -> io::Result<()> {
    let (mut index, mut offset) = (0usize, 0usize); // first buffer not fully written, bytes of it written
    while index < bufs.len() {
        let iov: Vec<libc::iovec> = bufs[index..bufs.len().min(index + IOV_MAX)].iter().enumerate()
            .map(|(i, b)| {
                let b = if i == 0 { &b[offset..] } else { *b };
                libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }
            })
            .collect();
        let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err("writing the backlog memfd"));
        }
        let mut written = n as usize;
        while index < bufs.len() && written >= bufs[index].len() - offset {
            written -= bufs[index].len() - offset;
            index += 1;
            offset = 0;
        }
        offset += written;
    }
    Ok(())
}

/// A read-only shared mapping of a backlog memfd; unmapped with its last unit.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    /// Bytes held on the heap instead (a delta's tail section): no mapping to undo.
    heap: Option<Box<[u8]>>,
}

// The mapping is read-only and lives until dropped: sharing it across threads is safe.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn map(fd: RawFd, len: usize) -> io::Result<Mapping> {
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(err("mapping the backlog memfd"));
        }
        Ok(Mapping { ptr, len, heap: None })
    }

    /// A copy of `bytes`, cut into units the same way (the `tail` extension's section).
    pub fn copy(bytes: &[u8]) -> Mapping {
        Mapping { ptr: std::ptr::null_mut(), len: bytes.len(), heap: Some(bytes.into()) }
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.heap {
            Some(heap) => heap,
            None => unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) },
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.heap.is_none() {
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

/// A delta's tail section (`tail` extension), shared by every record that owes its end.
pub struct SharedTail {
    map: Arc<Mapping>,
    /// (offset, length) of each unit in `map`.
    units: Vec<(usize, usize)>,
}

impl SharedTail {
    pub fn new(lens: &[usize], bytes: &[u8]) -> SharedTail {
        let mut offset = 0;
        let units = lens.iter().map(|&len| {
            offset += len;
            (offset - len, len)
        }).collect();
        SharedTail { map: Arc::new(Mapping::copy(bytes)), units }
    }

    /// The units holding the last `owed` bytes, and how much of the first precedes
    /// them (as `head_sent`: the previous relay had written that much of it).
    pub fn last(&self, owed: usize) -> Result<(Vec<MappedUnit>, usize), String> {
        let total = self.map.len;
        if owed == 0 || owed > total {
            return Err(format!("a record owes {} bytes of a tail of {}", owed, total));
        }
        let start = total - owed;
        let first = self.units.partition_point(|&(offset, len)| offset + len <= start);
        let head_sent = start - self.units[first].0;
        let units = self.units[first..].iter()
            .map(|&(offset, len)| MappedUnit { map: self.map.clone(), offset, len, frames: 1 })
            .collect();
        Ok((units, head_sent))
    }
}

/// One unit owed to a client, written straight from the mapping.
#[derive(Clone)]
pub struct MappedUnit {
    pub map: Arc<Mapping>,
    pub offset: usize,
    pub len: usize,
    pub frames: u32,
}

impl AsRef<[u8]> for MappedUnit {
    fn as_ref(&self) -> &[u8] {
        &self.map.bytes()[self.offset..self.offset + self.len]
    }
}

/// The size of the memfd (fstat).
pub fn memfd_size(fd: RawFd) -> io::Result<usize> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(err("fstat of the backlog memfd"));
    }
    Ok(st.st_size as usize)
}

/// Map a BACKLOG's memfd and cut it into each connection's units (no copy).
pub fn read_memfd(fd: RawFd, table_len: usize, data_len: usize, count: usize)
                  -> Result<Vec<(u64, usize, Vec<MappedUnit>)>, String> {
    let size = memfd_size(fd).map_err(|e| e.to_string())?;
    if size != table_len + data_len {
        return Err(format!("backlog memfd holds {} bytes, the message says {} + {}", size, table_len, data_len));
    }
    if size == 0 {
        return Ok(Vec::new());
    }
    let map = Arc::new(Mapping::map(fd, size).map_err(|e| e.to_string())?);
    let parsed = parse(&map.bytes()[..table_len], table_len, size, count)?;
    Ok(parsed.into_iter().map(|p| {
        let units = p.units.iter()
            .map(|&(offset, len, frames)| MappedUnit { map: map.clone(), offset, len, frames })
            .collect();
        (p.id, p.head_sent, units)
    }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_record_gets_the_units_that_hold_its_last_bytes() {
        let tail = SharedTail::new(&[4, 2, 6], b"aaaabbcccccc");
        let bytes = |units: &[MappedUnit]| units.iter().map(|u| u.as_ref().to_vec()).collect::<Vec<_>>();
        let (units, head_sent) = tail.last(6).unwrap();
        assert_eq!((bytes(&units), head_sent), (vec![b"cccccc".to_vec()], 0), "a whole unit");
        let (units, head_sent) = tail.last(7).unwrap();
        assert_eq!((bytes(&units), head_sent), (vec![b"bb".to_vec(), b"cccccc".to_vec()], 1), "mid-unit: started");
        let (units, head_sent) = tail.last(12).unwrap();
        assert_eq!((units.len(), head_sent), (3, 0));
        assert!(tail.last(13).is_err(), "more than the tail holds");
        assert!(tail.last(0).is_err(), "a tail record owes something");
    }

    fn boxed(b: &[u8]) -> (Owned, u32) {
        (Box::new(b.to_vec()), 1)
    }

    #[test]
    fn coalesces_all_but_the_first() {
        assert_eq!(coalesce(&[]), vec![]);
        assert_eq!(coalesce(&[(5, 1), (10, 1), (20, 2)]), vec![(5, 1), (30, 3)]);
        let big = COALESCE - 10;
        assert_eq!(coalesce(&[(1, 1), (big, 1), (20, 1), (5, 1)]), vec![(1, 1), (big, 1), (25, 2)]);
    }

    #[test]
    fn memfd_round_trip() {
        let entries = vec![
            Entry { id: 7, head_sent: 2, units: vec![boxed(b"abcd"), boxed(b"ef"), boxed(b"g")] },
            Entry { id: 9, head_sent: 0, units: vec![boxed(b"xyz")] },
        ];
        let (table, data, fd) = write_memfd(&entries).unwrap();
        let fd = fd.unwrap();
        assert_eq!(data, 10);
        let back = read_memfd(fd, table, data, 2).unwrap();
        unsafe { libc::close(fd) };
        assert_eq!(back.len(), 2);
        let (id, head, units) = &back[0];
        assert_eq!((*id, *head), (7, 2));
        let bytes: Vec<&[u8]> = units.iter().map(|u| u.as_ref()).collect();
        assert_eq!(bytes, vec![&b"abcd"[..], &b"efg"[..]]);
        assert_eq!(units[1].frames, 2);
        assert_eq!(back[1].2[0].as_ref(), b"xyz");
        assert!(read_memfd(-1, 0, 0, 0).is_err());
    }

    #[test]
    fn refuses_what_runs_past() {
        let entries = vec![Entry { id: 1, head_sent: 4, units: vec![boxed(b"abcd")] }];
        let table = encode_table(&entries);
        assert!(parse(&table, table.len(), table.len() + 4, 1).is_err(), "head_sent must be inside its unit");
        let ok = vec![Entry { id: 1, head_sent: 1, units: vec![boxed(b"abcd")] }];
        let table = encode_table(&ok);
        assert!(parse(&table, table.len(), table.len() + 3, 1).is_err(), "units past the memfd");
        assert!(parse(&table, table.len(), table.len() + 4, 2).is_err(), "more entries than the table holds");
        assert_eq!(parse(&table, table.len(), table.len() + 4, 1).unwrap()[0].units, vec![(table.len(), 4, 1)]);
    }
}
