//! UDP listeners on the captured ports: the whole capture in socket-only
//! mode, and the safety net beside XDP.
//!
//! Invariants:
//! - With XDP, a steal port's datagrams reach this socket only when the XDP
//!   program passed them on purpose: IP fragments (the kernel reassembles
//!   them first) and datagrams that found the ring full. So every datagram
//!   is captured exactly once, by one of the two paths.
//! - Tee ports get no listener under XDP: the host's own collector holds the
//!   port, and a listener of ours would receive every datagram a second time.
//! - Receives are batched (`recvmmsg`, up to [`RECV_BATCH`] per call) and
//!   handed on as one batch per readiness event.
//! - The receive buffer is set with `SO_RCVBUFFORCE` when privileged (it
//!   ignores `net.core.rmem_max`), `SO_RCVBUF` otherwise.
//!
//! Sockets are dual-stack (`[::]:port`, `IPV6_V6ONLY` off), so one socket per
//! port takes IPv4 and IPv6; IPv4 sources are reported unmapped.

use std::{
    io,
    mem::MaybeUninit,
    net::{Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::AsRawFd,
    time::SystemTime,
};

use bytes::Bytes;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{
    io::Interest,
    net::UdpSocket,
    sync::{mpsc, watch},
};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{self, CapturedBatch, SocketReceiveFailed},
    record::{Batch, Record, Stream, Via},
};

/// Datagrams fetched per `recvmmsg` call.
pub const RECV_BATCH: usize = 64;
/// The largest UDP payload over IPv4 or IPv6 (without jumbograms).
const MAX_DATAGRAM: usize = 65_535;

/// Binds a dual-stack UDP socket on `port` (falls back to IPv4-only where the
/// host has IPv6 disabled).
pub fn bind(port: u16, receive_buffer: u32) -> io::Result<std::net::UdpSocket> {
    let socket = match Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) {
        Ok(socket) => {
            socket.set_only_v6(false)?;
            socket.bind(&SockAddr::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)))?;
            socket
        }
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            socket.bind(&SockAddr::from(SocketAddr::from(([0, 0, 0, 0], port))))?;
            socket
        }
        Err(e) => return Err(e),
    };
    set_receive_buffer(&socket, receive_buffer);
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn set_receive_buffer(socket: &Socket, bytes: u32) {
    let value = bytes as libc::c_int;
    // SAFETY: valid fd, option and value size.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if !forced {
        // Unprivileged: capped by net.core.rmem_max, which is the best we get.
        let _ = socket.set_recv_buffer_size(bytes as usize);
    }
}

/// The socket's inode, which names it in `/proc/self/net/udp{,6}`.
pub fn inode(socket: &std::net::UdpSocket) -> u64 {
    // SAFETY: fstat on a valid fd into a zeroed stat.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(socket.as_raw_fd(), &mut stat) == 0 { stat.st_ino } else { 0 }
    }
}

/// Datagrams the kernel dropped because a socket's receive buffer was full,
/// by socket inode (the `drops` column of `/proc/self/net/udp{,6}`).
pub fn receive_buffer_drops() -> std::collections::HashMap<u64, u64> {
    let mut drops = std::collections::HashMap::new();
    for table in ["/proc/self/net/udp", "/proc/self/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            if let (Some(inode), Some(count)) = (cols.get(9), cols.last())
                && let (Ok(inode), Ok(count)) = (inode.parse::<u64>(), count.parse::<u64>())
            {
                drops.insert(inode, count);
            }
        }
    }
    drops
}

/// Buffers for one `recvmmsg` call, reused across calls.
struct RecvBuffers {
    data: Vec<u8>,
    addrs: Vec<MaybeUninit<libc::sockaddr_storage>>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in iovecs/headers point into `data`/`addrs`,
// which move with the struct (heap allocations never move).
unsafe impl Send for RecvBuffers {}

impl RecvBuffers {
    fn new() -> RecvBuffers {
        let mut data = vec![0u8; RECV_BATCH * MAX_DATAGRAM];
        let mut addrs = vec![MaybeUninit::<libc::sockaddr_storage>::zeroed(); RECV_BATCH];
        let iovecs: Vec<libc::iovec> = data
            .chunks_mut(MAX_DATAGRAM)
            .map(|chunk| libc::iovec { iov_base: chunk.as_mut_ptr().cast(), iov_len: chunk.len() })
            .collect();
        let mut buffers = RecvBuffers { data, addrs: Vec::new(), iovecs, headers: Vec::new() };
        buffers.headers = (0..RECV_BATCH)
            .map(|i| {
                // SAFETY: mmsghdr is plain data; zero is a valid empty header.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_name = addrs[i].as_mut_ptr().cast();
                header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
                header.msg_hdr.msg_iov = (&raw mut buffers.iovecs[i]).cast();
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        buffers.addrs = addrs;
        buffers
    }

    /// One `recvmmsg`; returns how many datagrams arrived.
    fn receive(&mut self, fd: i32) -> io::Result<usize> {
        for header in &mut self.headers {
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            header.msg_hdr.msg_flags = 0;
        }
        // SAFETY: headers point at live buffers of the sizes they state.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                RECV_BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    fn datagram(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let len = self.headers[i].msg_len as usize;
        let payload = &self.data[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len.min(MAX_DATAGRAM)];
        // SAFETY: zero-initialised storage, filled by the kernel.
        let storage = unsafe { self.addrs[i].assume_init_ref() };
        (payload, socket_addr(storage).map(unmap_v4))
    }
}

fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                0,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`, so both paths report the same address.
pub(crate) fn unmap_v4(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// What one listener captures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerSpec {
    pub port: u16,
    pub stream: Stream,
    pub snap_length: u32,
    pub batch_max: usize,
}

/// Receives until `cancel` fires, then takes what is still queued on the
/// socket before closing it. Errors are counted and the loop goes on: a
/// listener never exits on a bad datagram. `spec` may change while running
/// (a port moved to another stream, a new snap length) without a rebind.
pub async fn run(
    socket: std::net::UdpSocket,
    mut spec: watch::Receiver<ListenerSpec>,
    tx: mpsc::Sender<Batch>,
    cancel: CancellationToken,
) -> io::Result<()> {
    let socket = UdpSocket::from_std(socket)?;
    let mut buffers = RecvBuffers::new();
    loop {
        let last = tokio::select! {
            _ = cancel.cancelled() => true,
            ready = socket.readable() => { ready?; false }
        };
        let current = *spec.borrow_and_update();
        loop {
            let batch = receive_available(&socket, &mut buffers, &current);
            let more = batch.len() >= current.batch_max;
            if !batch.is_empty() && !super::ring::forward(&tx, vec![batch]).await {
                return Ok(());
            }
            if !more {
                break;
            }
        }
        if last {
            return Ok(());
        }
    }
}

/// Takes queued datagrams (at most `batch_max`) without waiting.
fn receive_available(socket: &UdpSocket, buffers: &mut RecvBuffers, spec: &ListenerSpec) -> Batch {
    let mut batch: Batch = Vec::new();
    let mut counts = CapturedBatch::new(Via::Socket);
    while batch.len() < spec.batch_max {
        let received = socket.try_io(Interest::READABLE, || buffers.receive(socket.as_raw_fd()));
        let n = match received {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                metrics::emit(SocketReceiveFailed { port: spec.port, reason: errno_name(&e) });
                break;
            }
        };
        let now = SystemTime::now();
        for i in 0..n {
            let (payload, src) = buffers.datagram(i);
            let Some(src) = src else { continue };
            let wire_len = payload.len() as u32;
            let kept = payload.len().min(spec.snap_length as usize);
            let truncated = kept < payload.len();
            counts.add(spec.stream, wire_len, truncated);
            batch.push(Record {
                captured_at: now,
                stream: spec.stream,
                src,
                dst_port: spec.port,
                ifindex: 0,
                wire_len,
                truncated,
                via: Via::Socket,
                payload: Bytes::copy_from_slice(&payload[..kept]),
            });
        }
        if n < RECV_BATCH {
            break;
        }
    }
    metrics::emit(counts);
    batch
}

fn errno_name(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connection_refused",
        Some(libc::ENOMEM) | Some(libc::ENOBUFS) => "no_memory",
        _ => "other",
    }
}
