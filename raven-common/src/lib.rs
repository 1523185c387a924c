//! Types shared by the XDP program (`raven-ebpf`) and the agent.
//!
//! Invariants:
//! - Every type here is `#[repr(C)]`, has no implicit padding and no
//!   pointers, so the kernel and user side agree on the bytes without
//!   serialisation. Layout is checked by the size assertions at the bottom.
//! - Changing a layout is an ABI change between the embedded object and the
//!   agent; both are built from this crate in one build, so they cannot drift.
//!
//! Format of a ring-buffer entry: a [`RecordHeader`] followed by
//! `cap_len` payload bytes (the UDP payload, cut at the snap length). The
//! kernel reserves entries in a few fixed size classes
//! ([`PAYLOAD_CLASSES`]); the bytes after `cap_len` are unspecified.
#![no_std]

/// Stream a datagram belongs to, as stored in the `PORTS` map and in
/// [`RecordHeader::stream`]. 0 is never a valid stream.
pub mod stream {
    pub const SYSLOG: u8 = 1;
    pub const NETFLOW: u8 = 2;
    pub const IPFIX: u8 = 3;
    pub const SFLOW: u8 = 4;
    pub const SNMP: u8 = 5;
    /// One past the highest stream id; sizes per-stream counter arrays.
    pub const COUNT: usize = 6;
}

/// What the XDP program does with a matched datagram after copying it.
pub mod action {
    /// Copy, then `XDP_DROP`: the kernel stack never sees the datagram.
    pub const STEAL: u8 = 1;
    /// Copy, then `XDP_PASS`: collectors already on the host still get it.
    pub const TEE: u8 = 2;
}

/// Bits of [`RecordHeader::flags`].
pub mod flags {
    /// Source and destination are IPv6 (otherwise IPv4 in the first 4 bytes).
    pub const IPV6: u8 = 1 << 0;
    /// The payload was cut at the snap length (or at the end of the frame).
    pub const TRUNCATED: u8 = 1 << 1;
    /// The frame carried at least one VLAN tag.
    pub const VLAN: u8 = 1 << 2;
    /// The datagram was passed on to the kernel too (tee action).
    pub const TEE: u8 = 1 << 3;
}

/// Value of the `PORTS` hash map, keyed by UDP destination port (host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortRule {
    pub stream: u8,
    pub action: u8,
    pub _pad: [u8; 2],
}

/// Fixed header in front of every ring-buffer entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// `bpf_ktime_get_boot_ns()` when the XDP program ran (CLOCK_BOOTTIME).
    pub boot_time_ns: u64,
    /// Source address; IPv4 uses the first 4 bytes (see [`flags::IPV6`]).
    pub src_addr: [u8; 16],
    /// Destination address, same encoding as `src_addr`.
    pub dst_addr: [u8; 16],
    pub ifindex: u32,
    /// UDP payload length as the UDP header states it (what was on the wire).
    pub wire_len: u32,
    /// Payload bytes that follow this header in the entry.
    pub cap_len: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub stream: u8,
    pub flags: u8,
    pub _pad: [u8; 6],
}

/// Size of [`RecordHeader`] in bytes.
pub const HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();

/// Payload capacities of the ring-buffer size classes: header + payload make
/// 256 B, 512 B, 1 KiB, 2 KiB and 9 KiB + 64 B entries, so a 120-byte syslog
/// line does not take a jumbo-frame slot.
pub const PAYLOAD_CLASSES: [usize; 5] = [192, 448, 960, 1984, 9216];

/// The largest payload the XDP program copies, whatever the snap length.
pub const MAX_SNAP_LEN: usize = PAYLOAD_CLASSES[PAYLOAD_CLASSES.len() - 1];

/// Indices of the `SETTINGS` array map the agent fills.
pub mod setting {
    /// Payload bytes to copy at most (clamped to [`super::MAX_SNAP_LEN`]).
    pub const SNAP_LEN: u32 = 0;
    /// Force a ring wakeup every this many records per CPU (0 = every record).
    pub const WAKEUP_EVERY: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Indices of the per-CPU `COUNTERS` array.
pub mod counter {
    pub const FRAMES_SEEN: u32 = 0;
    pub const NON_IP: u32 = 1;
    pub const NON_UDP: u32 = 2;
    /// Headers cut short by the end of the frame (passed to the kernel).
    pub const MALFORMED: u32 = 3;
    /// UDP to a port not in `PORTS`.
    pub const UNMATCHED: u32 = 4;
    /// IP fragments to or from watched traffic, passed to the kernel.
    pub const FRAGMENT_PASSED: u32 = 5;
    /// Matched datagrams that found the ring full, passed to the kernel.
    pub const RING_FULL_PASSED: u32 = 6;
    /// Matched datagrams whose payload was cut at the snap length.
    pub const TRUNCATED: u32 = 7;
    /// Matched datagrams copied into the ring, per stream: `MATCHED_BASE + stream`.
    pub const MATCHED_BASE: u32 = 8;
    pub const COUNT: u32 = MATCHED_BASE + super::stream::COUNT as u32;
}

/// Key of the per-exporter LRU map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExporterKey {
    pub addr: [u8; 16],
    pub stream: u8,
    /// 1 when `addr` is IPv6.
    pub is_ipv6: u8,
    pub _pad: [u8; 2],
}

/// Value of the per-exporter LRU map (per CPU; the agent sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ExporterStats {
    pub packets: u64,
    pub bytes: u64,
    pub ring_full: u64,
    pub last_seen_boot_ns: u64,
}

const _: () = assert!(HEADER_LEN == 64);
const _: () = assert!(core::mem::size_of::<PortRule>() == 4);
const _: () = assert!(core::mem::size_of::<ExporterKey>() == 20);
const _: () = assert!(core::mem::size_of::<ExporterStats>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all four are repr(C), padding-free (asserted above) plain data.
    unsafe impl aya::Pod for super::PortRule {}
    unsafe impl aya::Pod for super::RecordHeader {}
    unsafe impl aya::Pod for super::ExporterKey {}
    unsafe impl aya::Pod for super::ExporterStats {}
}
