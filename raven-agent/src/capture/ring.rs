//! Reads the XDP ring buffer and hands the pipeline batches of records.
//!
//! Invariants:
//! - An entry leaves the ring only when its record is in a batch; a batch is
//!   sent before the next wait, so nothing read is held back.
//! - When the pipeline is slow, `send` waits: the ring fills, and the XDP
//!   program passes further datagrams to the kernel for the socket
//!   listeners. Back-pressure never turns into silent loss.
//! - The kernel wakes the reader only every `wakeup_every` records; the reader
//!   also polls every `poll_interval`, which bounds the delay of a trickle.
//!
//! Format of an entry: `raven_common::RecordHeader` then `cap_len` payload
//! bytes. Payloads of one drain share one allocation (`Bytes` slices).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use bytes::BytesMut;
use raven_common::{HEADER_LEN, RecordHeader, flags};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{self, CaptureDropped, CapturedBatch},
    record::{Batch, Record, Stream, Via},
};

/// Converts CLOCK_BOOTTIME (what `bpf_ktime_get_boot_ns` returns) to wall
/// time. Sampled per drain, so NTP steps are followed within one batch.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    realtime_minus_boottime_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl BootClock {
    pub fn now() -> BootClock {
        BootClock {
            realtime_minus_boottime_ns: clock_ns(libc::CLOCK_REALTIME)
                - clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    pub fn to_system_time(self, boot_ns: u64) -> SystemTime {
        let unix_ns = i128::from(boot_ns) + self.realtime_minus_boottime_ns;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(unix_ns.max(0) as u64)
    }
}

/// Parses one ring entry; `None` if it is shorter than its header says
/// (cannot happen with a matching program, but never trust a length).
pub fn parse_entry(entry: &[u8]) -> Option<(RecordHeader, &[u8])> {
    if entry.len() < HEADER_LEN {
        return None;
    }
    // SAFETY: RecordHeader is Pod, repr(C); the read is unaligned-safe.
    let header: RecordHeader = unsafe { entry.as_ptr().cast::<RecordHeader>().read_unaligned() };
    let payload = entry.get(HEADER_LEN..HEADER_LEN + header.cap_len as usize)?;
    Some((header, payload))
}

pub fn source_address(header: &RecordHeader) -> SocketAddr {
    let ip = if header.flags & flags::IPV6 != 0 {
        IpAddr::V6(Ipv6Addr::from(header.src_addr))
    } else {
        let a = header.src_addr;
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    };
    SocketAddr::new(ip, header.src_port)
}

/// Drains every entry now in the ring into batches of at most `batch_max`.
pub fn drain(ring: &mut RingBuf<MapData>, batch_max: usize) -> Vec<Batch> {
    let clock = BootClock::now();
    let mut batches = Vec::new();
    loop {
        // First pass: headers and copies into one arena; then slice it.
        let mut arena = BytesMut::new();
        let mut pending: Vec<(RecordHeader, usize, usize)> = Vec::new();
        while pending.len() < batch_max {
            let Some(item) = ring.next() else { break };
            match parse_entry(&item) {
                Some((header, payload)) => {
                    let start = arena.len();
                    arena.extend_from_slice(payload);
                    pending.push((header, start, arena.len()));
                }
                None => metrics::emit(CaptureDropped {
                    stream: Stream::Syslog,
                    reason: "ring_entry_malformed",
                    count: 1,
                }),
            }
        }
        if pending.is_empty() {
            break;
        }
        let arena = arena.freeze();
        let full = pending.len() == batch_max;
        let mut counts = CapturedBatch::new(Via::Xdp);
        let batch: Batch = pending
            .into_iter()
            .filter_map(|(header, start, end)| {
                let stream = Stream::from_id(header.stream)?;
                let truncated = header.flags & flags::TRUNCATED != 0;
                counts.add(stream, header.wire_len, truncated);
                Some(Record {
                    captured_at: clock.to_system_time(header.boot_time_ns),
                    stream,
                    src: source_address(&header),
                    dst_port: header.dst_port,
                    ifindex: header.ifindex,
                    wire_len: header.wire_len,
                    truncated,
                    via: Via::Xdp,
                    payload: arena.slice(start..end),
                })
            })
            .collect();
        metrics::emit(counts);
        batches.push(batch);
        if !full {
            break;
        }
    }
    batches
}

/// Reads the ring until `cancel` fires, then drains it one last time.
pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Batch>,
    poll_interval: Duration,
    batch_max: usize,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    // SAFETY: the ring's fd stays open as long as the AsyncFd owns the ring.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
    loop {
        let batches = tokio::select! {
            _ = cancel.cancelled() => break,
            ready = tokio::time::timeout(poll_interval, ring.readable_mut()) => match ready {
                Ok(Ok(mut guard)) => {
                    let batches = drain(guard.get_inner_mut(), batch_max);
                    guard.clear_ready();
                    batches
                }
                Ok(Err(e)) => return Err(e),
                Err(_timeout) => drain(ring.get_mut(), batch_max),
            },
        };
        if !forward(&tx, batches).await {
            return Ok(());
        }
    }
    forward(&tx, drain(ring.get_mut(), batch_max)).await;
    Ok(())
}

/// Sends batches on; counts them as dropped if the pipeline has gone away.
pub(crate) async fn forward(tx: &mpsc::Sender<Batch>, batches: Vec<Batch>) -> bool {
    for batch in batches {
        if let Err(mpsc::error::SendError(lost)) = tx.send(batch).await {
            count_lost(&lost, "pipeline_closed");
            return false;
        }
    }
    true
}

pub(crate) fn count_lost(batch: &[Record], reason: &str) {
    for stream in Stream::ALL {
        let count = batch.iter().filter(|r| r.stream == stream).count() as u64;
        if count > 0 {
            metrics::emit(CaptureDropped { stream, reason, count });
        }
    }
}
