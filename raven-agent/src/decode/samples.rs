//! The shared real captures as decoder inputs: seeds for the fuzz targets
//! (`raven-agent/fuzz`, `examples/fuzz_seeds.rs`), the payloads of
//! `benches/decode.rs`, and the payloads the property tests mutate.
//!
//! Invariants:
//! - Only what `../shared/data/catalog.tsv` lists is read, and nothing is
//!   copied into the repository; a missing directory or catalog is an error
//!   ([`SamplesError`]), never an empty list, so a test that depends on the
//!   captures fails loudly instead of passing on nothing.
//! - Captures are read with [`capture_file::read`], the reader
//!   `raven-agent decode` uses, so every UDP datagram it would see is here.
//! - Every sample names its stream; [`stream_of`] decides it from the ports
//!   and the first bytes, the way a collector configured with the usual
//!   ports would (the shared captures use more ports than the defaults).
//!
//! Format of a framed fuzz input ([`frame`] / [`frames`]), for targets that
//! need several datagrams (templates before data): repeated
//! `selector: u8, length: u16 big-endian, payload`. The selector's low
//! nibble picks the stream (`Stream::ALL[n % ALL.len()]`, so streams added
//! later are reachable), its high nibble the exporter (`192.0.2.1`..`.16`).
//! A length past the end of the input takes what is left.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::SystemTime,
};

use bytes::Bytes;

use super::capture_file;
use crate::record::{Record, Stream, Via};

/// One payload from the shared data.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The file it came from, relative to the data directory.
    pub file: String,
    pub stream: Stream,
    pub src: SocketAddr,
    pub dst_port: u16,
    pub captured_at: SystemTime,
    pub payload: Bytes,
}

impl Sample {
    /// The record the capture path would have made of it.
    pub fn record(&self) -> Record {
        Record {
            captured_at: self.captured_at,
            stream: self.stream,
            src: self.src,
            dst_port: self.dst_port,
            ifindex: 0,
            wire_len: self.payload.len() as u32,
            truncated: false,
            via: Via::File,
            payload: self.payload.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SamplesError {
    #[error(
        "the shared captures are missing: {path}: {source} (they live in ../shared/data beside the repository)"
    )]
    Missing { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
}

/// `../shared/data` beside the repository this crate was built from.
pub fn default_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

/// The catalog's rows: (relative path, kind, protocol) of each file.
fn catalog(root: &Path) -> Result<Vec<(String, String, String)>, SamplesError> {
    let path = root.join("catalog.tsv");
    let text = std::fs::read_to_string(&path)
        .map_err(|source| SamplesError::Missing { path: path.clone(), source })?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let column = |name: &str| {
        header.iter().position(|h| *h == name).ok_or_else(|| SamplesError::Bad {
            path: path.clone(),
            message: format!("no {name:?} column"),
        })
    };
    let (file, kind, protocol) = (column("local_path")?, column("kind")?, column("protocol")?);
    Ok(lines
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|cols| cols.len() > file.max(kind).max(protocol))
        .map(|cols| (cols[file].to_string(), cols[kind].to_string(), cols[protocol].to_string()))
        .collect())
}

fn read(root: &Path, relative: &str) -> Result<Vec<u8>, SamplesError> {
    let path = root.join(relative);
    std::fs::read(&path).map_err(|source| SamplesError::Missing { path, source })
}

/// Every pcap and pcapng file of the catalog, as (relative path, bytes).
pub fn captures(root: &Path) -> Result<Vec<(String, Vec<u8>)>, SamplesError> {
    catalog(root)?
        .into_iter()
        .filter(|(_, kind, _)| kind == "pcap" || kind == "pcapng")
        .map(|(file, _, _)| Ok((file.clone(), read(root, &file)?)))
        .collect()
}

/// The stream a collector would give a datagram, from its ports and first
/// bytes; `None` for traffic that is none of Raven's (DNS, DHCP, …).
pub fn stream_of(src_port: u16, dst_port: u16, payload: &[u8]) -> Option<Stream> {
    let u16_at = |at: usize| payload.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let u32_at =
        |at: usize| payload.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let ports = [dst_port, src_port];
    if ports.contains(&514) {
        return Some(Stream::Syslog);
    }
    if ports.iter().any(|p| matches!(p, 161 | 162)) {
        return Some(Stream::Snmp);
    }
    // sFlow v5 starts with a 32-bit version; NetFlow/IPFIX with a 16-bit one
    // (tcpdump's sFlow capture also carries NetFlow v5 on 6343).
    if matches!(u32_at(0), Some(2 | 4 | 5)) && ports.contains(&6343) {
        return Some(Stream::Sflow);
    }
    match u16_at(0) {
        Some(10) => Some(Stream::Ipfix),
        Some(1 | 5 | 7 | 9) => Some(Stream::Netflow),
        _ => None,
    }
}

/// The input lines of an rsyslog `.parse1` test vector: comments dropped,
/// then input and expected lines alternate.
fn parse1_inputs(text: &[u8]) -> Vec<Bytes> {
    text.split(|&b| b == b'\n')
        .filter(|l| !l.starts_with(b"#") && !l.is_empty())
        .step_by(2)
        .map(Bytes::copy_from_slice)
        .collect()
}

/// Every payload of the shared data that belongs to one of Raven's streams,
/// in catalog and file order: the UDP datagrams of every capture, the raw
/// payload files, and the syslog lines of the text vectors.
pub fn load(root: &Path) -> Result<Vec<Sample>, SamplesError> {
    let mut out = Vec::new();
    let nowhere = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 0);
    for (file, kind, protocol) in catalog(root)? {
        let raw = |stream: Stream, payload: Bytes| Sample {
            file: file.clone(),
            stream,
            src: nowhere,
            dst_port: stream.default_port(),
            captured_at: SystemTime::UNIX_EPOCH,
            payload,
        };
        match kind.as_str() {
            "pcap" | "pcapng" => {
                let bytes = read(root, &file)?;
                let capture = capture_file::read(&bytes).map_err(|e| SamplesError::Bad {
                    path: root.join(&file),
                    message: e.to_string(),
                })?;
                for d in capture.datagrams {
                    if let Some(stream) = stream_of(d.src.port(), d.dst.port(), &d.payload) {
                        out.push(Sample {
                            file: file.clone(),
                            stream,
                            src: d.src,
                            dst_port: d.dst.port(),
                            captured_at: d.captured_at,
                            payload: d.payload,
                        });
                    }
                }
            }
            "raw-udp-payload" if protocol.starts_with("SNMP") => {
                out.push(raw(Stream::Snmp, read(root, &file)?.into()));
            }
            "text (1 payload)" if protocol.starts_with("syslog") => {
                out.push(raw(Stream::Syslog, read(root, &file)?.into()));
            }
            "text (input + expected)" if file.ends_with(".parse1") => {
                for line in parse1_inputs(&read(root, &file)?) {
                    out.push(raw(Stream::Syslog, line));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The exporter address a selector names.
pub fn exporter(selector: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1 + (selector >> 4))), 2055)
}

/// The stream a selector names.
pub fn selected_stream(selector: u8) -> Stream {
    Stream::ALL[usize::from(selector & 0x0f) % Stream::ALL.len()]
}

/// Appends one framed datagram (see the module doc).
pub fn frame(out: &mut Vec<u8>, stream: Stream, exporter: u8, payload: &[u8]) {
    let index = Stream::ALL.iter().position(|s| *s == stream).unwrap_or(0) as u8;
    let len = payload.len().min(usize::from(u16::MAX));
    out.push((exporter << 4) | (index & 0x0f));
    out.extend((len as u16).to_be_bytes());
    out.extend(&payload[..len]);
}

/// The framed datagrams of a fuzz input: (selector, payload).
pub fn frames(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&selector, rest) = input.split_first()?;
        let len = match rest {
            [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
            _ => rest.len(),
        };
        let rest = rest.get(2..).unwrap_or_default();
        let (payload, next) = rest.split_at(len.min(rest.len()));
        input = next;
        Some((selector, payload))
    })
}

/// A record for a framed datagram, as the capture path makes them.
pub fn framed_record(selector: u8, payload: &[u8]) -> Record {
    let stream = selected_stream(selector);
    Record {
        captured_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        stream,
        src: exporter(selector),
        dst_port: stream.default_port(),
        ifindex: 0,
        wire_len: payload.len() as u32,
        truncated: false,
        via: Via::File,
        payload: Bytes::copy_from_slice(payload),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! The shared samples for unit tests: loaded once, and a test that
    //! needs them fails (never skips) when they are missing.

    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;

    pub fn shared() -> &'static [Sample] {
        static SAMPLES: OnceLock<Vec<Sample>> = OnceLock::new();
        SAMPLES.get_or_init(|| {
            let samples = load(&default_root()).unwrap_or_else(|e| panic!("{e}"));
            assert!(!samples.is_empty(), "no payloads in {}", default_root().display());
            samples
        })
    }

    /// The shared payloads of one stream (at least one, or the test fails).
    pub fn of(stream: Stream) -> Vec<&'static Sample> {
        let out: Vec<_> = shared().iter().filter(|s| s.stream == stream).collect();
        assert!(!out.is_empty(), "no shared {stream} payloads");
        out
    }

    /// Edits to a real payload: bytes overwritten at fractions of its
    /// length, a range inserted, and a cut.
    #[derive(Clone, Debug)]
    pub struct Mutation {
        pub pick: usize,
        pub writes: Vec<(u16, u8)>,
        pub insert: Option<(u16, Vec<u8>)>,
        pub cut: Option<u16>,
    }

    impl Mutation {
        pub fn apply(&self, original: &[u8]) -> Vec<u8> {
            let mut out = original.to_vec();
            let at = |fraction: u16, len: usize| fraction as usize * len / (u16::MAX as usize + 1);
            for &(position, byte) in &self.writes {
                if !out.is_empty() {
                    let i = at(position, out.len());
                    out[i] = byte;
                }
            }
            if let Some((position, bytes)) = &self.insert {
                let i = at(*position, out.len() + 1);
                out.splice(i..i, bytes.iter().copied());
            }
            if let Some(cut) = self.cut {
                out.truncate(at(cut, out.len() + 1));
            }
            out
        }
    }

    pub fn mutation() -> impl Strategy<Value = Mutation> {
        (
            any::<usize>(),
            proptest::collection::vec((any::<u16>(), any::<u8>()), 0..6),
            proptest::option::of((any::<u16>(), proptest::collection::vec(any::<u8>(), 1..40))),
            proptest::option::weighted(0.3, any::<u16>()),
        )
            .prop_map(|(pick, writes, insert, cut)| Mutation { pick, writes, insert, cut })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{testing::*, *};
    use crate::{config::DecodeConfig, decode::Decoder};

    #[test]
    fn the_shared_data_has_payloads_of_every_decoded_wire_stream() {
        for stream in [Stream::Syslog, Stream::Netflow, Stream::Ipfix, Stream::Sflow, Stream::Snmp]
        {
            assert!(of(stream).len() >= 5, "{stream}: {}", of(stream).len());
        }
        // The text vectors and raw payload files are read too, and so are
        // the malformed captures (frames cut short, lengths that lie).
        for file in [
            "weird.parse1",
            "malformed1.parse1",
            "snmpv3_req_encrypted.bin",
            "snmp-heapoverflow-1.pcap",
            "snmp-heapoverflow-2.pcap",
            "ip-snmp-leftshift-unsigned.pcap",
            "ip6-snmp-oid-unsigned.pcap",
            "sflow_print-segv.pcap",
            "snmp-oid-subidentifier-too-long.pcap",
            "fake-syslog-with-padding.pcap",
        ] {
            assert!(shared().iter().any(|s| s.file.ends_with(file)), "nothing from {file}");
        }
    }

    #[test]
    fn a_missing_data_directory_is_an_error_not_an_empty_list() {
        let e = load(Path::new("/nonexistent/shared/data")).unwrap_err();
        assert!(matches!(e, SamplesError::Missing { .. }), "{e}");
    }

    #[test]
    fn frames_round_trip_and_never_read_past_the_end() {
        let mut input = Vec::new();
        frame(&mut input, Stream::Ipfix, 3, b"abc");
        frame(&mut input, Stream::Snmp, 0, b"");
        frame(&mut input, Stream::Syslog, 15, b"<14>x");
        let got: Vec<_> = frames(&input)
            .map(|(s, p)| (selected_stream(s), exporter(s).ip().to_string(), p.to_vec()))
            .collect();
        assert_eq!(
            got,
            [
                (Stream::Ipfix, "192.0.2.4".into(), b"abc".to_vec()),
                (Stream::Snmp, "192.0.2.1".into(), vec![]),
                (Stream::Syslog, "192.0.2.16".into(), b"<14>x".to_vec()),
            ]
        );
        // A length past the end takes what is left; a lone selector is empty.
        assert_eq!(frames(&[0, 0xff, 0xff, 1, 2]).collect::<Vec<_>>(), [(0, &[1u8, 2][..])]);
        assert_eq!(frames(&[7]).collect::<Vec<_>>(), [(7, &[][..])]);
    }

    proptest! {
        /// Every stream's decoder, through the pipeline's entry point, on
        /// real payloads of every stream, mutated (a datagram sent to the
        /// wrong port is decoded as that port's stream).
        #[test]
        fn every_stream_decodes_mutated_real_payloads_without_panicking(
            m in mutation(), stream in 0usize..Stream::ALL.len(),
        ) {
            let decoder = Decoder::new(&DecodeConfig::default());
            let samples = shared();
            let sample = &samples[m.pick % samples.len()];
            let mut record = sample.record();
            record.payload = m.apply(&sample.payload).into();
            for as_stream in [sample.stream, Stream::ALL[stream]] {
                record.stream = as_stream;
                // The entry point catches a decoder's panic: look for it.
                let decoded = decoder.decode_batch(std::slice::from_ref(&record));
                prop_assert!(!decoded.iter().flatten().any(|d| d.panicked()), "{as_stream}");
            }
        }

        #[test]
        fn every_stream_decodes_arbitrary_bytes_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let decoder = Decoder::new(&DecodeConfig::default());
            for stream in Stream::ALL {
                let mut input = Vec::new();
                frame(&mut input, stream, 0, &bytes);
                let (selector, payload) = frames(&input).next().unwrap();
                let (decoded, _) = decoder.decode(&framed_record(selector, payload));
                prop_assert!(!decoded.is_some_and(|d| d.panicked()), "{stream}");
            }
        }

        #[test]
        fn windows_events_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600), m in mutation(),
        ) {
            let _ = crate::decode::windows_event(&bytes);
            let event = br#"{"EventID":4624,"Channel":"Security","Computer":"dc1.venue.example","TimeCreated":"2026-11-28T12:00:00Z","EventData":{"TargetUserName":"alice","IpAddress":"192.0.2.7","LogonType":3}}"#;
            let d = crate::decode::windows_event(event);
            prop_assert!(d.parse_error.is_none());
            let _ = crate::decode::windows_event(&m.apply(event));
        }
    }
}
