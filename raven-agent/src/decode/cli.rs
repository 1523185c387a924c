//! `raven-agent decode`: the offline decoder. Reads pcap/pcapng captures
//! (every UDP datagram; the stream chosen by destination port) or raw
//! payload files (with `--stream`), and prints one JSON object per
//! datagram in the schema of `docs/records.md` (`seq` is the datagram's
//! position in the input). One decoder serves the whole run, so templates
//! learned early apply to later datagrams, as at a collector. With
//! `--config`, SNMPv3 messages of the configured USM users are
//! authenticated and decrypted as in the appliance (replies are made but
//! never sent).

use std::{collections::BTreeMap, io::Write, net::SocketAddr, path::PathBuf, time::SystemTime};

use anyhow::bail;
use bytes::Bytes;
use clap::Args;

use super::{Decoder, capture_file};
use crate::{
    config::DecodeConfig,
    record::{Record, Stream, Via},
    store::StoredRecord,
};

#[derive(Args)]
pub struct DecodeArgs {
    /// Treat every input as this stream (required for raw payload files).
    #[arg(long)]
    pub stream: Option<Stream>,
    /// Map a destination port to a stream, e.g. `--port netflow=9995`
    /// (repeatable; defaults 514, 2055, 4739, 6343, 162).
    #[arg(long = "port", value_parser = parse_port)]
    pub ports: Vec<(Stream, u16)>,
    /// Zone of zoneless syslog timestamps (as decode.syslog_timezone;
    /// default UTC, or the configuration's).
    #[arg(long)]
    pub syslog_timezone: Option<String>,
    /// Take `[decode]` from this Raven configuration: SNMPv3 USM users
    /// (their messages authenticated and decrypted), the engine ID, the
    /// syslog zone.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

fn parse_port(text: &str) -> Result<(Stream, u16), String> {
    let (stream, port) = text.split_once('=').ok_or("expected STREAM=PORT")?;
    Ok((stream.parse().map_err(|e| format!("{e}"))?, port.parse().map_err(|e| format!("{e}"))?))
}

/// The stream of each destination port: the defaults, then `overrides`.
pub fn port_map(overrides: &[(Stream, u16)]) -> BTreeMap<u16, Stream> {
    let mut ports: BTreeMap<u16, Stream> =
        Stream::WIRE.iter().map(|&s| (s.default_port(), s)).collect();
    for &(stream, port) in overrides {
        ports.insert(port, stream);
    }
    ports
}

/// Every UDP datagram of a pcap/pcapng file whose stream `stream_of`
/// knows, as captured records.
pub fn capture_records(
    bytes: &[u8],
    stream_of: impl Fn(&capture_file::Datagram) -> Option<Stream>,
) -> Result<Vec<Record>, capture_file::NotACapture> {
    Ok(capture_file::read(bytes)?
        .datagrams
        .into_iter()
        .filter_map(|d| {
            let stream = stream_of(&d)?;
            Some(Record {
                captured_at: d.captured_at,
                stream,
                src: d.src,
                dst_port: d.dst.port(),
                ifindex: 0,
                wire_len: d.payload.len() as u32,
                truncated: false,
                via: Via::File,
                payload: d.payload,
            })
        })
        .collect())
}

/// The stream of a datagram: `forced`, or by destination port.
pub fn by_port(
    ports: &BTreeMap<u16, Stream>,
    forced: Option<Stream>,
) -> impl Fn(&capture_file::Datagram) -> Option<Stream> + '_ {
    move |d| forced.or_else(|| ports.get(&d.dst.port()).copied())
}

pub fn run(args: DecodeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => crate::config::Config::load(path)?.decode,
        None => DecodeConfig::default(),
    };
    if let Some(zone) = &args.syslog_timezone {
        if super::syslog::parse_offset(zone).is_none() {
            bail!("--syslog-timezone {zone:?}: expected UTC or an offset like +01:00");
        }
        config.syslog_timezone = zone.clone();
    }
    let decoder = Decoder::new(&config);
    let ports = port_map(&args.ports);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut seq = 0u64;
    // A file that cannot be read is reported and passed over: the others
    // are still decoded, and the exit status says something was not.
    let mut unread = Vec::new();
    for path in &args.files {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("raven-agent decode: {}: {e}", path.display());
                unread.push(path.display().to_string());
                continue;
            }
        };
        let records: Vec<Record> = match capture_records(&bytes, by_port(&ports, args.stream)) {
            Ok(records) => records,
            Err(not_capture) => {
                let Some(stream) = args.stream else {
                    eprintln!(
                        "raven-agent decode: {}: {not_capture}; for a raw payload file give --stream",
                        path.display()
                    );
                    unread.push(path.display().to_string());
                    continue;
                };
                vec![Record {
                    captured_at: SystemTime::now(),
                    stream,
                    src: SocketAddr::from(([0, 0, 0, 0], 0)),
                    dst_port: stream.default_port(),
                    ifindex: 0,
                    wire_len: bytes.len() as u32,
                    truncated: false,
                    via: Via::File,
                    payload: Bytes::from(bytes),
                }]
            }
        };
        for (record, decoded) in records.iter().zip(decoder.decode_batch(&records)) {
            let (fields, parse_error) = super::stored_form(decoded.as_ref());
            let stored = StoredRecord { seq, record: record.clone(), decoded: fields, parse_error };
            serde_json::to_writer(&mut out, &crate::store::cli::to_json(&stored))?;
            out.write_all(b"\n")?;
            seq += 1;
        }
    }
    out.flush()?;
    if !unread.is_empty() {
        bail!("{} of {} files not decoded: {}", unread.len(), args.files.len(), unread.join(", "));
    }
    Ok(())
}
