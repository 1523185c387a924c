//! Decode throughput on the shared real captures (`cargo xtask bench
//! decode` runs this and prints the table for docs/benchmarks.md).
//!
//! Invariants:
//! - The measured code is `raven_agent::decode::Decoder::decode`, the call
//!   the pipeline makes per record, on one thread, over real payloads
//!   (`decode::samples`), looped: one iteration decodes every payload of a
//!   row once, in capture order.
//! - Flow rows decode every shared NetFlow/IPFIX datagram once before
//!   measuring, so templates are learned first (as at a collector that has
//!   been running); template datagrams stay in the loop, as exporters resend
//!   them. The per-stream rows keep the datagrams whose template never
//!   arrives in the shared data (the parser holds them, bounded); the goal
//!   rows (`*_templated`) are the datagrams that decode without an error.
//! - Every stream in `Stream::ALL` that has shared payloads and a decoder
//!   gets a row, so a decoder added later is measured without changes here.
//!
//! With `RAVEN_BENCH_DECODE_OUT=DIR` it also writes `DIR/rows.json` (what
//! each row holds) and `DIR/<row>.pcap` (the row's payloads in Ethernet/IP/
//! UDP frames to the stream's default port, repeated to at least
//! `PEER_PACKETS`) for the peer measurement the xtask makes with tshark.

use std::{hint::black_box, net::IpAddr, path::Path, time::Duration};

/// The agent's allocator (`raven-agent/src/main.rs`): the decode figures
/// are the agent's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput};
use raven_agent::{
    config::DecodeConfig,
    decode::{
        Decoder, Fields,
        samples::{self, Sample},
        snmp,
    },
    record::{Record, Stream},
};
use serde_json::json;

const PEER_PACKETS: usize = 20_000;

/// An issue goal: at least so many records per second per core, or at
/// most so many nanoseconds per packet.
#[derive(Clone, Copy)]
enum Goal {
    None,
    PerSecond(f64, &'static str),
    MaxNanos(f64, &'static str),
}

struct Row {
    id: String,
    stream: Stream,
    records: Vec<Record>,
    /// How many shared files the payloads came from.
    files: usize,
    goal: Goal,
}

fn flow_version(s: &Sample) -> Option<u16> {
    s.payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

fn is_v2c_trap(s: &Sample) -> bool {
    matches!(
        snmp::classify(&s.payload),
        Some(snmp::Message::Community { version: 1, pdu_tag: snmp::TRAP_V2, .. })
    )
}

fn rows(all: &[Sample], decoder: &Decoder) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |id: &str, stream: Stream, keep: &dyn Fn(&Sample) -> bool, goal: Goal| {
        let chosen: Vec<&Sample> = all.iter().filter(|s| s.stream == stream && keep(s)).collect();
        let records: Vec<Record> = chosen.iter().map(|s| s.record()).collect();
        let files = chosen.iter().map(|s| &s.file).collect::<std::collections::BTreeSet<_>>().len();
        // A stream without a decoder yet is kept raw: nothing to measure.
        if !records.is_empty() && decoder.decode(&records[0]).0.is_some() {
            rows.push(Row { id: id.to_string(), stream, records, files, goal });
        }
    };
    // Every payload of each stream: what a real mixed feed costs, data
    // whose template never came (held by the parser) included.
    for stream in Stream::ALL {
        let goal = match stream {
            Stream::Syslog => Goal::PerSecond(1e6, "≥ 1 M messages/s/core"),
            _ => Goal::None,
        };
        add(stream.name(), stream, &|_| true, goal);
    }
    // The goals' own inputs: v9 and IPFIX datagrams whose templates are
    // known (they decode without an error after the warm-up), v2c traps.
    let known = |s: &Sample| decoder.decode(&s.record()).0.is_some_and(|d| d.parse_error.is_none());
    let two_us = Goal::MaxNanos(2000.0, "≤ 2 µs/packet");
    let v9 = |s: &Sample| flow_version(s) == Some(9) && known(s);
    add("netflow_v9_templated", Stream::Netflow, &v9, two_us);
    add("ipfix_templated", Stream::Ipfix, &known, two_us);
    let traps = Goal::PerSecond(5e5, "≥ 500 k traps/s/core");
    add("snmp_v2c_traps", Stream::Snmp, &is_v2c_trap, traps);
    rows
}

/// The row's payloads as a pcap tshark can read, to the stream's port;
/// returns how many packets it holds.
fn peer_pcap(row: &Row, path: &Path) -> anyhow::Result<usize> {
    let file = std::fs::File::create(path)?;
    let mut writer = pcap_file::pcap::PcapWriter::new(std::io::BufWriter::new(file))?;
    let dst_v4 = [198, 18, 0, 1];
    let dst_v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let mut written = 0;
    while written < PEER_PACKETS.max(row.records.len()) {
        for r in &row.records {
            let eth = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
            let port = row.stream.default_port();
            let builder = match r.src.ip() {
                IpAddr::V4(ip) => eth.ipv4(ip.octets(), dst_v4, 64).udp(r.src.port(), port),
                IpAddr::V6(ip) => eth.ipv6(ip.octets(), dst_v6, 64).udp(r.src.port(), port),
            };
            let mut frame = Vec::with_capacity(builder.size(r.payload.len()));
            builder.write(&mut frame, &r.payload)?;
            let at = Duration::from_micros(written as u64);
            writer.write_packet(&pcap_file::pcap::PcapPacket::new(
                at,
                frame.len() as u32,
                &frame,
            ))?;
            written += 1;
        }
    }
    writer.into_writer().into_inner()?.sync_all()?;
    Ok(written)
}

fn main() -> anyhow::Result<()> {
    let all = samples::load(&samples::default_root())?;
    let decoder = Decoder::new(&DecodeConfig::default());
    // Learn every template (and each exporter's sequence) first.
    for s in all.iter().filter(|s| matches!(s.stream, Stream::Netflow | Stream::Ipfix)) {
        decoder.decode(&s.record());
    }
    let rows = rows(&all, &decoder);

    if let Some(out) = std::env::var_os("RAVEN_BENCH_DECODE_OUT") {
        let out = Path::new(&out);
        std::fs::create_dir_all(out)?;
        let mut summary = Vec::new();
        for row in &rows {
            let (mut errors, mut flows) = (0, 0);
            let mut reasons = std::collections::BTreeMap::<&str, usize>::new();
            for r in &row.records {
                if let (Some(d), _) = decoder.decode(r) {
                    errors += usize::from(d.parse_error.is_some());
                    if let Some(e) = &d.parse_error {
                        *reasons.entry(e.reason).or_default() += 1;
                    }
                    if let Fields::Flow(message) = &d.fields {
                        flows += message.flows.len();
                    }
                }
            }
            let peer_packets = peer_pcap(row, &out.join(format!("{}.pcap", row.id)))?;
            let (goal, min_per_second, max_nanos) = match row.goal {
                Goal::None => ("", None, None),
                Goal::PerSecond(v, text) => (text, Some(v), None),
                Goal::MaxNanos(v, text) => (text, None, Some(v)),
            };
            summary.push(json!({
                "id": row.id, "stream": row.stream.name(), "payloads": row.records.len(),
                "bytes": row.records.iter().map(|r| r.payload.len()).sum::<usize>(),
                "errors": errors, "reasons": reasons, "flows": flows, "files": row.files,
                "goal": goal, "min_per_second": min_per_second, "max_nanos": max_nanos,
                "peer_packets": peer_packets,
            }));
        }
        std::fs::write(out.join("rows.json"), serde_json::to_vec_pretty(&summary)?)?;
    }

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(30)
        .configure_from_args();
    let mut group = criterion.benchmark_group("decode");
    for row in &rows {
        group.throughput(Throughput::Elements(row.records.len() as u64));
        group.bench_function(&row.id, |b| {
            b.iter(|| {
                for r in &row.records {
                    black_box(decoder.decode(black_box(r)));
                }
            })
        });
    }
    group.finish();
    criterion.final_summary();
    Ok(())
}
