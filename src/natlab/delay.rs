//! A userspace delay line for the NAT lab: this kernel has no `netem`, so a
//! router's forwarded packets are queued to userspace (iptables `NFQUEUE`)
//! and each is accepted once it has waited the link's one-way delay.
//!
//! It runs as a thread of the test process inside the router's network
//! namespace, and holds packets in order (a fixed delay never reorders).
//! Forwarded traffic only: delaying a host's own output would hold its
//! packets inside its TCP stack, where TCP small queues throttle the socket
//! to a trickle. A packet the line cannot take (its netlink buffer full) is
//! dropped by the kernel, as a loaded router would.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Packets the kernel may queue to the line (beyond: dropped).
const QUEUE_MAX: u32 = 1 << 16;
/// Bytes of each packet copied to userspace: none are needed.
const COPY_RANGE: u16 = 16;
/// The netlink socket's receive buffer: ~2 s of packet notices at 400 Mbit/s.
const RECV_BUFFER: libc::c_int = 64 << 20;
/// Longest sleep while nothing arrives.
const IDLE_POLL: Duration = Duration::from_micros(200);

/// A running delay line; stopped (and its queue released) on drop.
#[derive(Debug)]
pub struct DelayLine {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DelayLine {
    /// Hold every packet of NFQUEUE `queue` for `delay`, on a thread inside
    /// the network namespace at `netns` (`/run/netns/NAME`). Returns once
    /// the queue is bound, so rules sending packets to it can be added.
    pub fn start(netns: &str, queue: u16, delay: Duration) -> DelayLine {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, bound) = std::sync::mpsc::channel();
        let path = netns.to_string();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns(2) on a valid descriptor; it moves only this
            // fresh thread into the namespace.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            if rc != 0 {
                let _ = ready.send(Err(format!(
                    "setns {path}: {}",
                    std::io::Error::last_os_error()
                )));
                return;
            }
            let mut q = match open(queue) {
                Ok(q) => q,
                Err(e) => {
                    let _ = ready.send(Err(format!("NFQUEUE {queue} in {path}: {e}")));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            if let Err(e) = run(&mut q, delay, &stopping) {
                eprintln!("natlab: the delay line in {path} stopped: {e}");
            }
        });
        match bound.recv() {
            Ok(Ok(())) => DelayLine {
                stop,
                thread: Some(thread),
            },
            Ok(Err(e)) => panic!("NAT lab delay line: {e}"),
            Err(_) => panic!("NAT lab delay line: its thread died while starting"),
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open(queue: u16) -> std::io::Result<nfq::Queue> {
    let before = netfilter_sockets();
    let mut q = nfq::Queue::open()?;
    // The kernel drops a packet it cannot queue to a full socket; the
    // default 208 KiB buffer holds ~40 ms of a fast link, less than a
    // descheduled thread on a loaded box may miss. `nfq` does not expose
    // its descriptor: find it as the netfilter socket that just appeared
    // (another lab's line opening at the same instant only gains a buffer).
    for fd in netfilter_sockets().difference(&before) {
        let size: libc::c_int = RECV_BUFFER;
        // SAFETY: setsockopt(2) on a descriptor of this process with a
        // pointer to a live c_int of the length given.
        unsafe {
            libc::setsockopt(
                *fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of_val(&size) as libc::socklen_t,
            )
        };
    }
    q.bind(queue)?;
    q.set_queue_max_len(queue, QUEUE_MAX)?;
    q.set_copy_range(queue, COPY_RANGE)?;
    q.set_fail_open(queue, false)?;
    q.set_nonblocking(true);
    Ok(q)
}

/// Take packets as they come, accept each `delay` after it came, until
/// `stop`; then accept what is still held.
fn run(q: &mut nfq::Queue, delay: Duration, stop: &AtomicBool) -> std::io::Result<()> {
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let mut arrived = false;
        loop {
            match q.recv() {
                Ok(mut m) => {
                    m.set_verdict(nfq::Verdict::Accept);
                    held.push_back((Instant::now() + delay, m));
                    arrived = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ENOBUFS: the kernel dropped packets it could not queue.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => break,
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, m) = held.pop_front().expect("checked");
            q.verdict(m)?;
        }
        if !arrived {
            let next = held
                .front()
                .map_or(IDLE_POLL, |(due, _)| due.saturating_duration_since(now));
            std::thread::sleep(next.min(IDLE_POLL));
        }
    }
    for (_, m) in held {
        q.verdict(m)?;
    }
    Ok(())
}

/// This process's open `AF_NETLINK` sockets of protocol `NETLINK_NETFILTER`.
fn netfilter_sockets() -> BTreeSet<libc::c_int> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return BTreeSet::new();
    };
    let option = |fd: libc::c_int, name: libc::c_int| {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of_val(&v) as libc::socklen_t;
        // SAFETY: getsockopt(2) into a live c_int of the length given; a
        // descriptor that is not a socket just fails.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                std::ptr::from_mut(&mut v).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| {
            option(fd, libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
                && option(fd, libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
        })
        .collect()
}
