//! Reading captures: every UDP datagram of a pcap or pcapng file, as
//! records (`raven-agent decode`, and the conformance tests).
//!
//! Invariants: link types Ethernet (VLAN tags and PPPoE sessions included),
//! Linux cooked and raw IP; IPv4, IPv6, and IP-in-IP (6in4, IPIP); datagrams come out in file order with their
//! capture time, addresses and ports. A frame that is not UDP is skipped
//! (counted in [`Datagrams::skipped`]); a file that is neither pcap nor
//! pcapng is an error.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;

/// One UDP datagram from a capture.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub captured_at: SystemTime,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Bytes,
}

#[derive(Debug, Default)]
pub struct Datagrams {
    pub datagrams: Vec<Datagram>,
    /// Frames that were not UDP over IP.
    pub skipped: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("not a pcap or pcapng file: {0}")]
pub struct NotACapture(String);

fn udp(link: pcap_file::DataLink, data: &[u8]) -> Option<(SocketAddr, SocketAddr, Bytes)> {
    let packet = match link {
        pcap_file::DataLink::ETHERNET => {
            // PPPoE session frames (venue uplinks): Ethernet, the 6-byte
            // PPPoE header, the PPP protocol (IPv4 0x0021, IPv6 0x0057).
            if data.get(12..14) == Some(&[0x88, 0x64][..])
                && matches!(data.get(20..22), Some([0x00, 0x21] | [0x00, 0x57]))
            {
                return udp(pcap_file::DataLink::RAW, data.get(22..)?);
            }
            match etherparse::SlicedPacket::from_ethernet(data) {
                Ok(p) => p,
                Err(_) => return lax_udp(etherparse::LaxSlicedPacket::from_ethernet(data).ok()?),
            }
        }
        pcap_file::DataLink::LINUX_SLL => etherparse::SlicedPacket::from_linux_sll(data).ok()?,
        _ => match etherparse::SlicedPacket::from_ip(data) {
            Ok(p) => p,
            Err(_) => return lax_udp(etherparse::LaxSlicedPacket::from_ip(data).ok()?),
        },
    };
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match packet.net.as_ref()? {
        etherparse::NetSlice::Ipv4(ip) => {
            // IP in IP (6in4 = 41, IPIP = 4): the datagram is inside.
            if packet.transport.is_none() && matches!(ip.header().protocol().0, 4 | 41) {
                return udp(pcap_file::DataLink::RAW, ip.payload().payload);
            }
            (ip.header().source_addr().into(), ip.header().destination_addr().into())
        }
        etherparse::NetSlice::Ipv6(ip) => {
            (ip.header().source_addr().into(), ip.header().destination_addr().into())
        }
        _ => return None,
    };
    let etherparse::TransportSlice::Udp(u) = packet.transport? else { return None };
    Some((
        SocketAddr::new(src_ip, u.source_port()),
        SocketAddr::new(dst_ip, u.destination_port()),
        Bytes::copy_from_slice(u.payload()),
    ))
}

/// A frame cut short by the capture's snap length, or whose lengths do not
/// add up: take the UDP datagram as far as it was captured (tshark does the
/// same), so malformed input is still seen and kept.
fn lax_udp(packet: etherparse::LaxSlicedPacket) -> Option<(SocketAddr, SocketAddr, Bytes)> {
    let (src_ip, dst_ip, payload): (IpAddr, IpAddr, _) = match packet.net? {
        etherparse::LaxNetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().clone(),
        ),
        etherparse::LaxNetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().clone(),
        ),
        _ => return None,
    };
    if payload.ip_number != etherparse::IpNumber::UDP || payload.fragmented {
        return None;
    }
    let head = payload.payload.get(..8)?;
    let port = |i: usize| u16::from_be_bytes([head[i], head[i + 1]]);
    Some((
        SocketAddr::new(src_ip, port(0)),
        SocketAddr::new(dst_ip, port(2)),
        Bytes::copy_from_slice(&payload.payload[8..]),
    ))
}

/// The records of a classic pcap file: (link type, time, captured bytes).
/// Read here rather than with `pcap_file`, whose reader refuses (and then
/// repeats) a record whose original length exceeds the snap length — which
/// is exactly what a capture cut at its snap length contains. A record cut
/// short by the end of the file ends the list.
fn classic_pcap(bytes: &[u8]) -> Option<Vec<(pcap_file::DataLink, Duration, &[u8])>> {
    let magic = bytes.get(..4)?;
    let (big_endian, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (false, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
        _ => return None,
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    };
    // The link type is the low 16 bits; the top bits may say an FCS follows.
    let link = pcap_file::DataLink::from(u32_at(20)? & 0xffff);
    let mut out = Vec::new();
    let mut at = 24;
    while let (Some(secs), Some(frac), Some(len)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) {
        let start = at + 16;
        let Some(data) = bytes.get(start..start + len as usize) else { break };
        let frac = if nanos { u64::from(frac) } else { u64::from(frac) * 1000 };
        out.push((link, Duration::from_secs(secs.into()) + Duration::from_nanos(frac), data));
        at = start + len as usize;
    }
    Some(out)
}

/// Every UDP datagram of a pcap or pcapng capture, in order.
pub fn read(bytes: &[u8]) -> Result<Datagrams, NotACapture> {
    let mut out = Datagrams::default();
    let mut push = |link, data: &[u8], at: Duration| match udp(link, data) {
        Some((src, dst, payload)) => {
            out.datagrams.push(Datagram { captured_at: UNIX_EPOCH + at, src, dst, payload })
        }
        None => out.skipped += 1,
    };
    if let Some(records) = classic_pcap(bytes) {
        for (link, at, data) in records {
            push(link, data, at);
        }
    } else {
        let mut reader =
            pcap_file::pcapng::PcapNgReader::new(bytes).map_err(|e| NotACapture(e.to_string()))?;
        let mut links = Vec::new();
        while let Some(Ok(block)) = reader.next_block() {
            match block {
                pcap_file::pcapng::Block::InterfaceDescription(idb) => links.push(idb.linktype),
                pcap_file::pcapng::Block::EnhancedPacket(epb) => {
                    let link = links
                        .get(epb.interface_id as usize)
                        .copied()
                        .unwrap_or(pcap_file::DataLink::ETHERNET);
                    push(link, &epb.data, epb.timestamp);
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;
    use crate::decode::samples;

    fn shared_captures() -> &'static [(String, Vec<u8>)] {
        static CAPTURES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
        CAPTURES.get_or_init(|| {
            let captures =
                samples::captures(&samples::default_root()).unwrap_or_else(|e| panic!("{e}"));
            assert!(captures.len() > 50, "only {} shared captures", captures.len());
            captures
        })
    }

    #[test]
    fn every_shared_capture_is_read() {
        for (file, bytes) in shared_captures() {
            let read = read(bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!read.datagrams.is_empty() || read.skipped > 0, "{file}: nothing in it");
        }
    }

    proptest! {
        /// Real capture files with bytes overwritten, inserted and cut:
        /// headers, record lengths, link types and frames all get hit.
        #[test]
        fn mutated_shared_captures_never_panic(
            m in samples::testing::mutation(),
            header_writes in proptest::collection::vec((0usize..64, any::<u8>()), 0..4),
        ) {
            let captures = shared_captures();
            let (_, bytes) = &captures[m.pick % captures.len()];
            let mut bytes = m.apply(bytes);
            // Most of a file is frames; aim some edits at the file and
            // first record headers too.
            for (at, byte) in header_writes {
                if let Some(b) = bytes.get_mut(at) { *b = byte; }
            }
            let _ = read(&bytes);
        }

        #[test]
        fn arbitrary_bytes_after_a_pcap_header_never_panic(
            link in prop_oneof![Just(1u32), Just(101), Just(113), Just(228), Just(229), any::<u32>()],
            body in proptest::collection::vec(any::<u8>(), 0..800),
        ) {
            let mut file = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
            file.extend([0u8; 8]);
            file.extend(65535u32.to_le_bytes());
            file.extend(link.to_le_bytes());
            file.extend(&body);
            let _ = read(&file);
            let _ = read(&body);
        }
    }
}
