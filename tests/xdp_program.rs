//! The XDP program on hand-built frames, through `BPF_PROG_TEST_RUN`: the
//! verdict, the ring record (header and payload bytes) and the counters for
//! every parser path, with no interface involved.

mod common;

use common::frame::{DST4, DST6, Frame, Ip, SRC4, SRC6};

use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use raven_agent::{
    capture::{KernelCounters, XdpProgram, ring::parse_entry},
    config::{PortAction, PortConfig},
    record::Stream,
};
use raven_common::{HEADER_LEN, RecordHeader, flags};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const SYSLOG: u16 = 514;
const NETFLOW_TEE: u16 = 2055;

struct Fixture {
    program: XdpProgram,
    ring: RingBuf<MapData>,
}

fn fixture(ring_bytes: u32) -> Fixture {
    common::require_root();
    let (mut program, ring) =
        XdpProgram::load(ring_bytes).expect("the verifier accepts the program");
    program
        .set_ports(&[
            PortConfig { port: SYSLOG, stream: Stream::Syslog, action: PortAction::Steal },
            PortConfig { port: NETFLOW_TEE, stream: Stream::Netflow, action: PortAction::Tee },
        ])
        .unwrap();
    program.set_snap_length(raven_common::MAX_SNAP_LEN as u32).unwrap();
    Fixture { program, ring }
}

impl Fixture {
    fn run(&self, frame: &[u8]) -> u32 {
        self.run_repeat(frame, 1)
    }

    fn run_repeat(&self, frame: &[u8], repeat: u32) -> u32 {
        let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
        self.program.program().test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
    }

    /// Every record now in the ring: (entry size, header, payload).
    fn drain(&mut self) -> Vec<(usize, RecordHeader, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            let (header, payload) = parse_entry(&item).expect("well-formed entry");
            out.push((item.len(), header, payload.to_vec()));
        }
        out
    }

    fn counters(&self) -> KernelCounters {
        self.program.counters().unwrap()
    }
}

const LINE: &[u8] = b"<189>52: *Mar  1 00:01:02.123: %SYS-5-CONFIG_I: Configured from console";

fn assert_only(counters: &KernelCounters, field: &str, expected: u64) {
    let KernelCounters {
        frames_seen,
        non_ip,
        non_udp,
        malformed,
        unmatched,
        fragment_passed,
        ring_full_passed,
        truncated: _,
        matched,
    } = counters;
    let all = [
        ("non_ip", *non_ip),
        ("non_udp", *non_udp),
        ("malformed", *malformed),
        ("unmatched", *unmatched),
        ("fragment_passed", *fragment_passed),
        ("ring_full_passed", *ring_full_passed),
        ("matched", matched.values().sum()),
    ];
    for (name, value) in all {
        let want = if name == field { expected } else { 0 };
        assert_eq!(value, want, "counter {name} in {counters:?}");
    }
    assert_eq!(*frames_seen, expected, "frames_seen in {counters:?}");
}

#[test]
fn ipv4_syslog_is_copied_and_stolen() {
    let mut fx = fixture(1 << 20);
    let (frame, _) = Frame::v4(SYSLOG, LINE).build();
    assert_eq!(fx.run(&frame), XDP_DROP);
    let records = fx.drain();
    assert_eq!(records.len(), 1);
    let (size, h, payload) = &records[0];
    assert_eq!(*size, HEADER_LEN + raven_common::PAYLOAD_CLASSES[0], "smallest size class");
    assert_eq!(payload, LINE);
    assert_eq!(&h.src_addr[..4], &SRC4.octets());
    assert_eq!(&h.dst_addr[..4], &DST4.octets());
    assert_eq!((h.src_port, h.dst_port), (40000, SYSLOG));
    assert_eq!(h.stream, Stream::Syslog.id());
    assert_eq!((h.wire_len, h.cap_len), (LINE.len() as u32, LINE.len() as u32));
    assert_eq!(h.flags, 0);
    assert!(h.boot_time_ns > 0);
    let c = fx.counters();
    assert_only(&c, "matched", 1);
    assert_eq!(c.matched[&Stream::Syslog], 1);
    let exporters = fx.program.exporters();
    assert_eq!(exporters.len(), 1);
    assert_eq!(exporters[0].exporter, std::net::IpAddr::V4(SRC4));
    assert_eq!((exporters[0].packets, exporters[0].bytes), (1, LINE.len() as u64));
}

#[test]
fn ipv4_with_options_is_parsed_past_the_options() {
    let mut fx = fixture(1 << 20);
    let mut frame = Frame::v4(SYSLOG, LINE);
    // Record-route style option padding: IHL 8 (12 option bytes).
    frame.ip = Ip::V4 { options: vec![1; 12], fragment: 0 };
    assert_eq!(fx.run(&frame.build().0), XDP_DROP);
    let records = fx.drain();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].2, LINE);
    assert_eq!(records[0].1.dst_port, SYSLOG);
}

#[test]
fn ipv6_and_ipv6_with_hop_by_hop_header_are_copied() {
    let mut fx = fixture(1 << 20);
    let plain = Frame::v6(SYSLOG, LINE);
    let mut hop_by_hop = plain.clone();
    hop_by_hop.ip = Ip::V6 { extension: Some(0) };
    for frame in [plain, hop_by_hop] {
        assert_eq!(fx.run(&frame.build().0), XDP_DROP);
        let records = fx.drain();
        assert_eq!(records.len(), 1);
        let (_, h, payload) = &records[0];
        assert_eq!(payload, LINE);
        assert_eq!(h.src_addr, SRC6.octets());
        assert_eq!(h.dst_addr, DST6.octets());
        assert_eq!(h.flags & flags::IPV6, flags::IPV6);
    }
    assert_eq!(fx.counters().matched[&Stream::Syslog], 2);
}

#[test]
fn one_and_two_vlan_tags_are_parsed() {
    let mut fx = fixture(1 << 20);
    for vlans in [vec![0x8100], vec![0x88a8, 0x8100], vec![0x8100, 0x8100]] {
        for mut frame in [Frame::v4(SYSLOG, LINE), Frame::v6(SYSLOG, LINE)] {
            frame.vlans = vlans.clone();
            assert_eq!(fx.run(&frame.build().0), XDP_DROP, "tags {vlans:x?}");
            let records = fx.drain();
            assert_eq!(records.len(), 1, "tags {vlans:x?}");
            assert_eq!(records[0].2, LINE);
            assert_eq!(records[0].1.flags & flags::VLAN, flags::VLAN);
        }
    }
    assert_only(&fx.counters(), "matched", 6);
}

#[test]
fn tee_port_is_copied_and_passed() {
    let mut fx = fixture(1 << 20);
    let payload = [0u8, 9, 0, 1, 2, 3, 4, 5];
    assert_eq!(fx.run(&Frame::v4(NETFLOW_TEE, &payload).build().0), XDP_PASS);
    let records = fx.drain();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1.flags & flags::TEE, flags::TEE);
    assert_eq!(records[0].1.stream, Stream::Netflow.id());
    assert_eq!(records[0].2, payload);
}

#[test]
fn non_udp_non_ip_and_unmatched_ports_pass_uncopied() {
    let fx = fixture(1 << 20);
    let mut tcp = Frame::v4(SYSLOG, LINE);
    tcp.protocol = 6;
    assert_eq!(fx.run(&tcp.build().0), XDP_PASS);
    assert_only(&fx.counters(), "non_udp", 1);

    let fx = fixture(1 << 20);
    let mut arp = Frame::v4(SYSLOG, LINE);
    arp.ethertype = 0x0806;
    assert_eq!(fx.run(&arp.build().0), XDP_PASS);
    assert_only(&fx.counters(), "non_ip", 1);

    let mut fx = fixture(1 << 20);
    assert_eq!(fx.run(&Frame::v4(53, LINE).build().0), XDP_PASS);
    assert_eq!(fx.run(&Frame::v6(53, LINE).build().0), XDP_PASS);
    assert_only(&fx.counters(), "unmatched", 2);
    assert!(fx.drain().is_empty());
}

#[test]
fn first_and_later_fragments_pass_to_the_kernel() {
    let mut fx = fixture(1 << 20);
    let more_fragments = 0x2000;
    for fragment in [more_fragments, more_fragments | 185, 185] {
        let mut frame = Frame::v4(SYSLOG, LINE);
        frame.ip = Ip::V4 { options: vec![], fragment };
        assert_eq!(fx.run(&frame.build().0), XDP_PASS, "fragment field {fragment:#x}");
    }
    let mut v6 = Frame::v6(SYSLOG, LINE);
    v6.ip = Ip::V6 { extension: Some(44) };
    assert_eq!(fx.run(&v6.build().0), XDP_PASS);
    assert_only(&fx.counters(), "fragment_passed", 4);
    assert!(fx.drain().is_empty());
}

#[test]
fn frames_cut_at_every_header_boundary_pass_as_malformed() {
    let mut frames = Vec::new();
    for vlans in [vec![], vec![0x88a8, 0x8100]] {
        let mut v4 = Frame::v4(SYSLOG, LINE);
        v4.vlans = vlans.clone();
        v4.ip = Ip::V4 { options: vec![1; 4], fragment: 0 };
        let mut v6 = Frame::v6(SYSLOG, LINE);
        v6.vlans = vlans;
        v6.ip = Ip::V6 { extension: Some(0) };
        frames.extend([v4, v6]);
    }
    for frame in frames {
        let (bytes, payload_at) = frame.build();
        // The kernel refuses test frames shorter than an Ethernet header.
        for cut in 14..payload_at {
            let mut fx = fixture(1 << 16);
            assert_eq!(fx.run(&bytes[..cut]), XDP_PASS, "cut at {cut}");
            assert_only(&fx.counters(), "malformed", 1);
            assert!(fx.drain().is_empty(), "cut at {cut}");
        }
    }
}

#[test]
fn a_frame_cut_inside_the_payload_is_copied_as_truncated() {
    let mut fx = fixture(1 << 20);
    let (bytes, payload_at) = Frame::v4(SYSLOG, LINE).build();
    let keep = 10;
    assert_eq!(fx.run(&bytes[..payload_at + keep]), XDP_DROP);
    let records = fx.drain();
    let (_, h, payload) = &records[0];
    assert_eq!(payload, &LINE[..keep]);
    assert_eq!((h.wire_len, h.cap_len), (LINE.len() as u32, keep as u32));
    assert_eq!(h.flags & flags::TRUNCATED, flags::TRUNCATED);
    assert_eq!(fx.counters().truncated, 1);
}

#[test]
fn empty_payload_is_copied() {
    let mut fx = fixture(1 << 20);
    assert_eq!(fx.run(&Frame::v4(SYSLOG, b"").build().0), XDP_DROP);
    let records = fx.drain();
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].1.wire_len, records[0].1.cap_len), (0, 0));
    assert!(records[0].2.is_empty());
}

#[test]
fn payload_longer_than_the_snap_length_is_cut_and_flagged() {
    let mut fx = fixture(1 << 20);
    fx.program.set_snap_length(100).unwrap();
    let long: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(fx.run(&Frame::v4(SYSLOG, &long).build().0), XDP_DROP);
    let records = fx.drain();
    let (size, h, payload) = &records[0];
    assert_eq!(payload, &long[..100]);
    assert_eq!((h.wire_len, h.cap_len), (1500, 100));
    assert_eq!(h.flags & flags::TRUNCATED, flags::TRUNCATED);
    assert_eq!(*size, HEADER_LEN + raven_common::PAYLOAD_CLASSES[0], "class by copied length");
    assert_eq!(fx.counters().truncated, 1);
}

#[test]
fn each_size_class_holds_its_largest_payload_exactly() {
    let mut fx = fixture(1 << 22);
    // BPF_PROG_TEST_RUN takes linear frames of up to about one page, so the
    // 9216-byte class is exercised with a payload just past the 1984 class.
    let sizes = [1, 192, 193, 448, 449, 960, 961, 1984, 1985, 3000];
    for &n in &sizes {
        let payload: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(fx.run(&Frame::v4(SYSLOG, &payload).build().0), XDP_DROP, "payload {n}");
        let records = fx.drain();
        let (size, h, copied) = &records[0];
        assert_eq!(copied, &payload, "payload {n}");
        assert_eq!(h.cap_len as usize, n);
        let class = raven_common::PAYLOAD_CLASSES.iter().find(|&&c| c >= n).unwrap();
        assert_eq!(*size, HEADER_LEN + class, "payload {n}");
    }
}

#[test]
fn a_full_ring_passes_datagrams_to_the_kernel_and_counts_them() {
    // One page of ring: fifteen 256-byte entries (plus their 8-byte headers).
    let mut fx = fixture(4096);
    let sent = 40;
    assert_eq!(fx.run_repeat(&Frame::v4(SYSLOG, LINE).build().0, sent), XDP_PASS);
    let c = fx.counters();
    let copied = fx.drain().len() as u64;
    assert!(c.ring_full_passed > 0, "{c:?}");
    assert_eq!(c.matched[&Stream::Syslog], copied);
    assert_eq!(copied + c.ring_full_passed, u64::from(sent), "{c:?}");
    assert_eq!(fx.program.exporters()[0].ring_full, c.ring_full_passed);
}

#[test]
fn ports_can_be_changed_while_loaded() {
    let mut fx = fixture(1 << 20);
    assert_eq!(fx.run(&Frame::v4(5514, LINE).build().0), XDP_PASS);
    fx.program
        .set_ports(&[PortConfig { port: 5514, stream: Stream::Syslog, action: PortAction::Steal }])
        .unwrap();
    assert_eq!(fx.run(&Frame::v4(5514, LINE).build().0), XDP_DROP);
    assert_eq!(fx.run(&Frame::v4(SYSLOG, LINE).build().0), XDP_PASS, "514 was removed");
    assert_eq!(fx.drain().len(), 1);
}
