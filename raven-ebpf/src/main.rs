//! Raven's XDP program: finds telemetry datagrams and copies them into a ring
//! buffer for the agent.
//!
//! Invariants:
//! - Nothing is lost in this program. A datagram is either copied into
//!   `EVENTS` (and then dropped or passed, by its port's action) or passed to
//!   the kernel untouched, where the agent's UDP sockets pick it up. That
//!   covers IP fragments (no UDP header to match on), ring-full, and frames
//!   this parser does not understand.
//! - Every outcome is counted in `COUNTERS` (per CPU) and matched traffic
//!   per exporter in `EXPORTERS`.
//!
//! Format: Ethernet, up to two VLAN tags (802.1Q 0x8100, 802.1ad 0x88a8,
//! and the pre-standard 0x9100), IPv4 with any IHL or IPv6 with up to three
//! hop-by-hop / routing / destination-options headers, then UDP. A ring entry
//! is a `RecordHeader` plus the payload cut at the snap length, reserved in
//! the smallest of `PAYLOAD_CLASSES` that fits (the verifier needs constant
//! reservation sizes).
//!
//! Ring wakeups are batched: records are submitted with `BPF_RB_NO_WAKEUP`
//! and every `WAKEUP_EVERY`-th record per CPU forces one; the agent also
//! polls on a short timer, so a trickle is not held back.
#![no_std]
#![feature(asm_experimental_arch)]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, xdp_action},
    helpers::{bpf_ktime_get_boot_ns, generated::bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{Array, HashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use raven_common::{
    ExporterKey, ExporterStats, MAX_SNAP_LEN, PAYLOAD_CLASSES, PortRule, RecordHeader, action,
    counter, flags, setting,
};

/// UDP destination port (host byte order) → stream and action.
#[map]
static PORTS: HashMap<u16, PortRule> = HashMap::with_max_entries(1024, 0);

/// Run-time settings written by the agent (see `raven_common::setting`).
#[map]
static SETTINGS: Array<u32> = Array::with_max_entries(setting::COUNT, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Records submitted without a wakeup since the last forced one, per CPU.
#[map]
static UNWOKEN: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
static EXPORTERS: LruPerCpuHashMap<ExporterKey, ExporterStats> =
    LruPerCpuHashMap::with_max_entries(16384, 0);

/// The agent sets the real size at load time (`ring_bytes` in the config).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

const ETH_HDR_LEN: usize = 14;
const VLAN_HDR_LEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_QINQ_LEGACY: u16 = 0x9100;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
const UDP_HDR_LEN: usize = 8;

#[repr(C)]
struct Entry<const N: usize> {
    header: RecordHeader,
    payload: [u8; N],
}

/// What the parser found in a frame that it will copy.
struct Datagram {
    header: RecordHeader,
    payload_offset: usize,
    rule: PortRule,
}

enum Parsed {
    Matched(Datagram),
    /// Pass to the kernel, counting this counter.
    Pass(u32),
}

/// Drops every frame: the lab's ceiling for `cargo xtask bench capture`
/// (what a veth delivers into XDP when nothing is copied). Never attached
/// by the agent's capture.
#[xdp]
pub fn raven_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
pub fn raven(ctx: XdpContext) -> u32 {
    count(counter::FRAMES_SEEN);
    match parse(&ctx) {
        Parsed::Pass(reason) => {
            count(reason);
            xdp_action::XDP_PASS
        }
        Parsed::Matched(datagram) => capture(&ctx, datagram),
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and XDP runs with preemption disabled.
        unsafe { *value += 1 }
    }
}

/// A pointer to a `T` at `offset`, or `None` when the frame ends before it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    // SAFETY: ptr_at checked the bounds; read_unaligned needs no alignment.
    ptr_at::<[u8; 2]>(ctx, offset).map(|p| u16::from_be_bytes(unsafe { p.read_unaligned() }))
}

#[inline(always)]
fn byte_at(ctx: &XdpContext, offset: usize) -> Option<u8> {
    ptr_at::<u8>(ctx, offset).map(|p| unsafe { p.read() })
}

/// Copies a `T` from a variable `offset` with the helper, which checks the
/// bounds itself. Direct access at a variable offset is what LLVM turns
/// into `ptr >= end` compares the verifier cannot use to prove a range.
#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the destination is a T-sized stack slot; the helper fails
    // (non-zero) rather than read past the frame.
    let rc = unsafe {
        bpf_xdp_load_bytes(ctx.ctx, offset as u32, value.as_mut_ptr().cast(), size_of::<T>() as u32)
    };
    // SAFETY: rc == 0 means all size_of::<T>() bytes were written.
    (rc == 0).then(|| unsafe { value.assume_init() })
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Parsed {
    let Some(mut ethertype) = be16_at(ctx, 12) else {
        return Parsed::Pass(counter::MALFORMED);
    };
    let mut offset = ETH_HDR_LEN;
    let mut frame_flags = 0u8;
    // Two tags at most: 802.1ad outer + 802.1Q inner is what venues run.
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_LEGACY
        {
            let Some(inner) = be16_at(ctx, offset + 2) else {
                return Parsed::Pass(counter::MALFORMED);
            };
            ethertype = inner;
            offset += VLAN_HDR_LEN;
            frame_flags |= flags::VLAN;
        }
    }

    let mut header = RecordHeader {
        boot_time_ns: 0,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        ifindex: 0,
        wire_len: 0,
        cap_len: 0,
        src_port: 0,
        dst_port: 0,
        stream: 0,
        flags: frame_flags,
        _pad: [0; 6],
    };

    let udp_offset = match ethertype {
        ETH_P_IP => match parse_ipv4(ctx, offset, &mut header) {
            Ok(udp_offset) => udp_offset,
            Err(reason) => return Parsed::Pass(reason),
        },
        ETH_P_IPV6 => match parse_ipv6(ctx, offset, &mut header) {
            Ok(udp_offset) => udp_offset,
            Err(reason) => return Parsed::Pass(reason),
        },
        _ => return Parsed::Pass(counter::NON_IP),
    };

    let Some(udp) = load::<[u8; 8]>(ctx, udp_offset) else {
        return Parsed::Pass(counter::MALFORMED);
    };
    let src_port = u16::from_be_bytes([udp[0], udp[1]]);
    let dst_port = u16::from_be_bytes([udp[2], udp[3]]);
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]);
    // SAFETY: a plain lookup; the value is copied out at once.
    let Some(rule) = (unsafe { PORTS.get(&dst_port) }).copied() else {
        return Parsed::Pass(counter::UNMATCHED);
    };
    if (udp_len as usize) < UDP_HDR_LEN {
        return Parsed::Pass(counter::MALFORMED);
    }
    header.src_port = src_port;
    header.dst_port = dst_port;
    header.wire_len = udp_len as u32 - UDP_HDR_LEN as u32;
    header.stream = rule.stream;
    Parsed::Matched(Datagram { header, payload_offset: udp_offset + UDP_HDR_LEN, rule })
}

/// Returns the UDP header offset, or the counter to bump before passing.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize, header: &mut RecordHeader) -> Result<usize, u32> {
    let version_ihl = byte_at(ctx, offset).ok_or(counter::MALFORMED)?;
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return Err(counter::MALFORMED);
    }
    let fragment = be16_at(ctx, offset + 6).ok_or(counter::MALFORMED)?;
    let protocol = byte_at(ctx, offset + 9).ok_or(counter::MALFORMED)?;
    let addrs = ptr_at::<[u8; 8]>(ctx, offset + 12).ok_or(counter::MALFORMED)?;
    if protocol != IPPROTO_UDP {
        return Err(counter::NON_UDP);
    }
    // More-fragments bit or a non-zero offset: the kernel reassembles it.
    if fragment & 0x3fff != 0 {
        return Err(counter::FRAGMENT_PASSED);
    }
    // SAFETY: bounds checked by ptr_at.
    let addrs = unsafe { addrs.read_unaligned() };
    header.src_addr[..4].copy_from_slice(&addrs[..4]);
    header.dst_addr[..4].copy_from_slice(&addrs[4..]);
    Ok(offset + ihl)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize, header: &mut RecordHeader) -> Result<usize, u32> {
    let addrs = ptr_at::<[[u8; 16]; 2]>(ctx, offset + 8).ok_or(counter::MALFORMED)?;
    let mut next = byte_at(ctx, offset + 6).ok_or(counter::MALFORMED)?;
    // SAFETY: bounds checked by ptr_at.
    let [src, dst] = unsafe { addrs.read_unaligned() };
    header.src_addr = src;
    header.dst_addr = dst;
    header.flags |= flags::IPV6;
    let mut l4 = offset + 40;
    for _ in 0..3 {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let [next_header, ext_len] =
                    load::<[u8; 2]>(ctx, l4).ok_or(counter::MALFORMED)?;
                next = next_header;
                l4 += (ext_len as usize + 1) * 8;
            }
            _ => break,
        }
    }
    match next {
        IPPROTO_UDP => Ok(l4),
        IPV6_FRAGMENT => Err(counter::FRAGMENT_PASSED),
        _ => Err(counter::NON_UDP),
    }
}

#[inline(always)]
fn setting(index: u32, default: u32) -> u32 {
    match SETTINGS.get(index) {
        Some(&value) if value != 0 => value,
        _ => default,
    }
}

#[inline(always)]
fn capture(ctx: &XdpContext, mut datagram: Datagram) -> u32 {
    let snap_len = setting(setting::SNAP_LEN, MAX_SNAP_LEN as u32) as usize;
    let snap_len = if snap_len > MAX_SNAP_LEN { MAX_SNAP_LEN } else { snap_len };
    let in_frame = (ctx.data_end() - ctx.data()).saturating_sub(datagram.payload_offset);
    let wire_len = datagram.header.wire_len as usize;
    let mut cap_len = wire_len;
    if cap_len > in_frame {
        cap_len = in_frame;
    }
    if cap_len > snap_len {
        cap_len = snap_len;
    }
    if cap_len < wire_len {
        datagram.header.flags |= flags::TRUNCATED;
    }
    datagram.header.cap_len = cap_len as u32;
    datagram.header.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: a helper with no arguments.
    datagram.header.boot_time_ns = unsafe { bpf_ktime_get_boot_ns() };
    let tee = datagram.rule.action == action::TEE;
    if tee {
        datagram.header.flags |= flags::TEE;
    }

    let copied = if cap_len <= PAYLOAD_CLASSES[0] {
        emit::<{ PAYLOAD_CLASSES[0] }>(ctx, &datagram)
    } else if cap_len <= PAYLOAD_CLASSES[1] {
        emit::<{ PAYLOAD_CLASSES[1] }>(ctx, &datagram)
    } else if cap_len <= PAYLOAD_CLASSES[2] {
        emit::<{ PAYLOAD_CLASSES[2] }>(ctx, &datagram)
    } else if cap_len <= PAYLOAD_CLASSES[3] {
        emit::<{ PAYLOAD_CLASSES[3] }>(ctx, &datagram)
    } else {
        emit::<{ PAYLOAD_CLASSES[4] }>(ctx, &datagram)
    };

    record_exporter(&datagram.header, copied);
    match copied {
        Copied::Yes => {
            count(counter::MATCHED_BASE + datagram.header.stream as u32);
            if cap_len < wire_len {
                count(counter::TRUNCATED);
            }
            if tee { xdp_action::XDP_PASS } else { xdp_action::XDP_DROP }
        }
        Copied::RingFull => {
            count(counter::RING_FULL_PASSED);
            xdp_action::XDP_PASS
        }
        Copied::LoadFailed => {
            count(counter::MALFORMED);
            xdp_action::XDP_PASS
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Copied {
    Yes,
    RingFull,
    LoadFailed,
}

#[inline(always)]
fn emit<const N: usize>(ctx: &XdpContext, datagram: &Datagram) -> Copied {
    let Some(mut entry) = EVENTS.reserve::<Entry<N>>(0) else {
        return Copied::RingFull;
    };
    let slot = entry.as_mut_ptr();
    // SAFETY: `slot` points at a reserved, writable Entry<N>.
    unsafe { (*slot).header = datagram.header };
    let len = datagram.header.cap_len as u64;
    if len > 0 {
        let len = verifier_bounded_len::<N>(len);
        if len > N as u64 {
            entry.discard(0);
            return Copied::LoadFailed;
        }
        // SAFETY: the destination has N writable bytes and len <= N.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx,
                datagram.payload_offset as u32,
                (*slot).payload.as_mut_ptr().cast(),
                len as u32,
            )
        };
        if rc != 0 {
            entry.discard(0);
            return Copied::LoadFailed;
        }
    }
    entry.submit(wakeup_flag());
    Copied::Yes
}

/// Returns `len` (1 ≤ len ≤ N, which the caller guarantees) in a form whose
/// bounds the verifier can see: `bpf_xdp_load_bytes` needs 1 ≤ size ≤ N
/// proven. A plain `len > 0 && len <= N` gets folded by LLVM into one
/// unsigned compare of `len - 1`, which loses the lower bound ("R4 invalid
/// zero-sized read"). So LLVM is made to forget what it knows about `len`
/// (an empty asm), and the bounds are rebuilt with arithmetic the verifier
/// tracks: `((len - 1) & mask) + 1` lies in [1, mask + 1].
#[inline(always)]
fn verifier_bounded_len<const N: usize>(len: u64) -> u64 {
    let mut opaque = len;
    // SAFETY: an empty asm block; it only hides the value from the optimiser.
    unsafe { core::arch::asm!("/* {0} */", inout(reg) opaque) };
    let mask = (N.next_power_of_two() - 1) as u64;
    (opaque.wrapping_sub(1) & mask) + 1
}

/// No wakeup for most records; a forced one every `WAKEUP_EVERY` per CPU.
#[inline(always)]
fn wakeup_flag() -> u64 {
    let every = setting(setting::WAKEUP_EVERY, 0);
    if every <= 1 {
        return 0;
    }
    let Some(unwoken) = UNWOKEN.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot, and XDP runs with preemption disabled.
    unsafe {
        *unwoken += 1;
        if *unwoken >= every {
            *unwoken = 0;
            BPF_RB_FORCE_WAKEUP as u64
        } else {
            BPF_RB_NO_WAKEUP as u64
        }
    }
}

#[inline(always)]
fn record_exporter(header: &RecordHeader, copied: Copied) {
    let key = ExporterKey {
        addr: header.src_addr,
        stream: header.stream,
        is_ipv6: (header.flags & flags::IPV6 != 0) as u8,
        _pad: [0; 2],
    };
    let ring_full = (copied == Copied::RingFull) as u64;
    if let Some(stats) = EXPORTERS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value of an LRU map; at worst a concurrent eviction
        // loses one sample, which is what LRU accounting accepts.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += header.wire_len as u64;
            (*stats).ring_full += ring_full;
            (*stats).last_seen_boot_ns = header.boot_time_ns;
        }
    } else {
        let stats = ExporterStats {
            packets: 1,
            bytes: header.wire_len as u64,
            ring_full,
            last_seen_boot_ns: header.boot_time_ns,
        };
        let _ = EXPORTERS.insert(&key, &stats, 0);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
