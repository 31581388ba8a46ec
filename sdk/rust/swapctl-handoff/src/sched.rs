//! The freeze's priority, lent to the threads it waits for.
//!
//! swapctl runs a releasing relay's control thread SCHED_FIFO through the pause (its
//! `pause_priority`, docs/config.md), and only that thread: raised for the whole
//! pause, a relay's workers that still serve would keep its clients from the CPU. But
//! the freeze waits for the workers: for a quiet moment between broadcasts, for the
//! fan-out in flight to be written, and for the writes that hold the gate to end. A
//! normal worker holding the gate was preempted each time the real-time control thread
//! woke (it looks every 100 µs), and the scheduler then ran the clients first: in a
//! perf trace at 5,000 clients, the holder was runnable, not running, for 1 ms; the
//! freeze waited for the gate up to 26 ms.
//!
//! So while the freeze runs (from the RELEASE until it has answered: at most its
//! waits, FAN_OUT_WAIT and DRAIN_WAIT, plus the answers it asks for) every other thread
//! of the relay runs real-time one level below the control thread, then goes back to
//! what it was. One level below: at the same level a busy worker would keep a woken
//! control thread waiting for its CPU (first-in, first-out has no time slices); that
//! made the waits worse, up to 12 ms. Measured the same way with this: at most 142 µs
//! in 100 freezes (idle and loaded), and the fan-out in flight mostly written before
//! the freeze instead of carried over.
//!
//! Priority inheritance by hand (std's locks have none). A control thread that is not
//! real-time lends nothing; a thread that already is keeps its setting; without the
//! privilege to raise (CAP_SYS_NICE, or an RLIMIT_RTPRIO that allows it) nothing
//! changes and the freeze's log says so.

use std::io;

/// The process's other threads (listed outside the pause, at a pre-copy).
pub fn siblings() -> Vec<libc::pid_t> {
    let me = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
    let mut tids: Vec<libc::pid_t> = match std::fs::read_dir("/proc/self/task") {
        Ok(dir) => dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect(),
        Err(_) => Vec::new(),
    };
    tids.retain(|&tid| tid != me);
    tids
}

/// Threads raised by `lend`; dropping it puts each back as it was.
pub struct Lent {
    saved: Vec<(libc::pid_t, libc::c_int, libc::sched_param)>,
    /// Why nothing or not everything was raised (for the log), if so.
    pub denied: Option<String>,
}

impl Lent {
    pub fn count(&self) -> usize {
        self.saved.len()
    }
}

/// Raise `tids` that run a normal policy to the calling thread's real-time policy, one
/// level below its priority (at least 1; with SCHED_RESET_ON_FORK); nothing when the
/// caller is not real-time.
pub fn lend(tids: &[libc::pid_t]) -> Lent {
    let mut lent = Lent { saved: Vec::new(), denied: None };
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy < 0 || !matches!(policy & !libc::SCHED_RESET_ON_FORK, libc::SCHED_FIFO | libc::SCHED_RR) {
        return lent;
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    if unsafe { libc::sched_getparam(0, &mut param) } != 0 {
        return lent;
    }
    param.sched_priority = (param.sched_priority - 1).max(1);
    let raised = (policy & !libc::SCHED_RESET_ON_FORK) | libc::SCHED_RESET_ON_FORK;
    for &tid in tids {
        let old = unsafe { libc::sched_getscheduler(tid) };
        if old < 0 || !matches!(old & !libc::SCHED_RESET_ON_FORK, libc::SCHED_OTHER | libc::SCHED_BATCH | libc::SCHED_IDLE) {
            continue; // ended, or real-time already
        }
        let mut old_param = libc::sched_param { sched_priority: 0 };
        if unsafe { libc::sched_getparam(tid, &mut old_param) } != 0 {
            continue;
        }
        if unsafe { libc::sched_setscheduler(tid, raised, &param) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                lent.denied = Some(format!("not permitted ({}): the relay needs CAP_SYS_NICE or an RLIMIT_RTPRIO", e));
                break;
            }
            continue;
        }
        lent.saved.push((tid, old, old_param));
    }
    lent
}

impl Drop for Lent {
    fn drop(&mut self) {
        for (tid, policy, param) in self.saved.drain(..) {
            unsafe { libc::sched_setscheduler(tid, policy, &param) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(tid: libc::pid_t) -> libc::c_int {
        (unsafe { libc::sched_getscheduler(tid) }) & !libc::SCHED_RESET_ON_FORK
    }

    #[test]
    fn a_normal_caller_lends_nothing() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            tx.send(unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert!(siblings().contains(&tid), "the worker is listed");
        let lent = lend(&[tid]);
        assert_eq!(lent.count(), 0, "this test's thread is not real-time: nothing to lend");
        assert_eq!(policy_of(tid), libc::SCHED_OTHER);
        drop(stop_tx);
        worker.join().unwrap();
    }

    #[test]
    fn a_real_time_caller_lends_its_priority_until_dropped() {
        let param = libc::sched_param { sched_priority: 1 };
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            eprintln!("skipped: this test needs the privilege to run real-time");
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            // (a thread started by a real-time one inherits it: start normal)
            let normal = libc::sched_param { sched_priority: 0 };
            unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &normal) };
            tx.send(unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let lent = lend(&[tid]);
        let raised = policy_of(tid);
        drop(lent);
        let after = policy_of(tid);
        let normal = libc::sched_param { sched_priority: 0 };
        unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &normal) };
        drop(stop_tx);
        worker.join().unwrap();
        assert_eq!(raised, libc::SCHED_FIFO, "raised to the caller's policy");
        assert_eq!(after, libc::SCHED_OTHER, "put back once dropped");
    }
}
