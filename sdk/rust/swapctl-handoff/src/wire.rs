//! Handoff protocol framing (docs/handoff-protocol.md section 3) over a blocking Unix
//! stream socket: 16-byte header (`SWH1`, json_len, blob_len, nfds, flags), JSON, blob,
//! and up to 253 file descriptors as one SCM_RIGHTS message on the header's sendmsg.

use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;

pub const MAGIC: &[u8; 4] = b"SWH1";
pub const MAX_FDS: usize = 253;
const MAX_JSON: u32 = 16 * 1024 * 1024;
const MAX_BLOB: u32 = 512 * 1024 * 1024;
const HEADER: usize = 16;

/// One message: its JSON object, its blob and the descriptors that came with it
/// (owned by the receiver: close them or hand them on).
pub struct Message {
    pub json: Value,
    pub blob: Vec<u8>,
    pub fds: Vec<RawFd>,
}

impl Message {
    pub fn kind(&self) -> &str {
        self.json.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// Close every descriptor that came with the message (refusing or discarding it).
    pub fn close_fds(&mut self) {
        for fd in self.fds.drain(..) {
            unsafe { libc::close(fd) };
        }
    }
}

fn bad(text: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, text)
}

/// Send one message; `fds` are copied by the kernel (the caller keeps its own).
pub fn send(sock: &UnixStream, json: &Value, blob: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(bad(format!("{} fds in one message; the limit is {}", fds.len(), MAX_FDS)));
    }
    let body = serde_json::to_vec(json).map_err(|e| bad(e.to_string()))?;
    let mut data = Vec::with_capacity(HEADER + body.len() + blob.len());
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(&(body.len() as u32).to_le_bytes());
    data.extend_from_slice(&(blob.len() as u32).to_le_bytes());
    data.extend_from_slice(&(fds.len() as u16).to_le_bytes());
    data.extend_from_slice(&0u16.to_le_bytes());
    data.extend_from_slice(&body);
    data.extend_from_slice(blob);
    let sent = sendmsg_fds(sock.as_raw_fd(), &data, fds)?;
    let mut rest = &data[sent..];
    let mut writer = sock;
    while !rest.is_empty() {
        match writer.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn sendmsg_fds(fd: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let int = std::mem::size_of::<RawFd>();
    let space = unsafe { libc::CMSG_SPACE((fds.len() * int) as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * int) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg) as *mut RawFd, fds.len());
        }
    }
    loop {
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Read one whole message. `timeout` bounds every read (None: wait for ever).
/// EOF before a header is `UnexpectedEof`.
pub fn recv(sock: &UnixStream, timeout: Option<Duration>) -> io::Result<Message> {
    sock.set_read_timeout(timeout)?;
    let (mut head, fds) = recv_head(sock.as_raw_fd())?;
    let mut guard = Message { json: Value::Null, blob: Vec::new(), fds };
    if head.len() < HEADER {
        let mut rest = vec![0u8; HEADER - head.len()];
        read_exact(sock, &mut rest)?;
        head.extend_from_slice(&rest);
    }
    let json_len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let blob_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    let nfds = u16::from_le_bytes([head[12], head[13]]) as usize;
    if &head[..4] != MAGIC || json_len > MAX_JSON || blob_len > MAX_BLOB {
        guard.close_fds();
        return Err(bad("bad handoff header: not protocol v1 framing".into()));
    }
    if nfds != guard.fds.len() {
        let got = guard.fds.len();
        guard.close_fds();
        return Err(bad(format!("header announced {} fds, {} arrived", nfds, got)));
    }
    let mut body = vec![0u8; json_len as usize + blob_len as usize];
    if let Err(e) = read_exact(sock, &mut body) {
        guard.close_fds();
        return Err(e);
    }
    let blob = body.split_off(json_len as usize);
    match serde_json::from_slice::<Value>(&body) {
        Ok(json) if json.get("type").map_or(false, Value::is_string) => {
            guard.json = json;
            guard.blob = blob;
            Ok(guard)
        }
        _ => {
            guard.close_fds();
            Err(bad("handoff message without a JSON object with a type".into()))
        }
    }
}

fn read_exact(mut sock: &UnixStream, buf: &mut [u8]) -> io::Result<()> {
    sock.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(io::ErrorKind::UnexpectedEof, "control channel closed mid-message")
        } else {
            e
        }
    })
}

fn recv_head(fd: RawFd) -> io::Result<(Vec<u8>, Vec<RawFd>)> {
    let int = std::mem::size_of::<RawFd>();
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * int) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut head = vec![0u8; HEADER];
    let mut iov = libc::iovec { iov_base: head.as_mut_ptr() as *mut libc::c_void, iov_len: HEADER };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    let n = loop {
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut fds = Vec::new();
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..bytes / int {
                    fds.push(std::ptr::read_unaligned(data.add(i)));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        for fd in fds {
            unsafe { libc::close(fd) };
        }
        return Err(bad("file descriptors were truncated in transit (MSG_CTRUNC)".into()));
    }
    if n == 0 {
        for fd in fds {
            unsafe { libc::close(fd) };
        }
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "control channel closed by peer"));
    }
    head.truncate(n);
    Ok((head, fds))
}
