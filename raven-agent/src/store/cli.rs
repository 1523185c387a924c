//! `raven-agent segments …` and `raven-agent store …`: how a NOC engineer
//! looks into a box's store, like `nfdump` for flows.
//!
//! Invariants: `ls`, `cat` and `stats` only read; `verify` reads every
//! block and exits non-zero on any damage; `rebuild-index` sets the old
//! index aside and rebuilds it from the files; `load` appends synthetic
//! records and prints each acknowledged range (load and crash testing);
//! `repack` rewrites sealed segments of small blocks (`store::repack`).

use std::{
    io::{self, BufWriter, Write},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::{Store, StoredRecord, segment};
use crate::{
    config::StoreConfig,
    record::{Stream, rfc3339},
};

#[derive(Args)]
pub struct SegmentsArgs {
    /// The store's data directory (store.data_dir).
    #[arg(long, default_value = "/var/lib/raven")]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: SegmentsCommand,
}

#[derive(Subcommand)]
pub enum SegmentsCommand {
    /// One line per segment.
    Ls {
        #[arg(long)]
        stream: Option<Stream>,
    },
    /// Records as JSON lines (the `raven-agent decode` schema plus seq and ts).
    Cat {
        #[arg(long)]
        stream: Option<Stream>,
        /// RFC 3339 (default: the beginning).
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339 (default: now).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        exporter: Option<IpAddr>,
    },
    /// Check every block's CRC and the index against the files.
    Verify,
    /// Records, bytes and compression ratio per stream.
    Stats,
    /// The domain ids each UDP relay sink gives its exporters at the
    /// collector: sink, exporter, original and relayed source id /
    /// observation domain (NetFlow v5: engine type and id as one number).
    Relays,
}

#[derive(Args)]
pub struct StoreArgs {
    #[arg(long, default_value = "/var/lib/raven")]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Set the index aside and rebuild it from the segment files.
    RebuildIndex,
    /// Append records (synthetic syslog lines or the datagrams of capture
    /// files) through the decoders, and print every acknowledged range as
    /// `first last` or a JSON summary (benchmarks and crash testing).
    Load(super::load::LoadArgs),
    /// Re-pack sealed segments of small blocks into large blocks (what the
    /// agent's maintenance does a few segments at a time), until none is
    /// left; prints what it did as JSON. Refused while an agent runs.
    Repack(RepackArgs),
}

#[derive(Args)]
pub struct RepackArgs {
    /// Segments whose blocks hold fewer records than this on average
    /// (default: store.repack_min_records_per_block's default).
    #[arg(long)]
    min_records_per_block: Option<u64>,
    /// Records per block written (default: store.repack_block_records').
    #[arg(long)]
    block_records: Option<usize>,
    /// Stop after this many segments (default: all that qualify).
    #[arg(long)]
    max_segments: Option<usize>,
}

/// Inspection never writes: read-only, so it is safe beside a running
/// agent (and never "repairs" a block the agent is still writing).
fn open(data_dir: &std::path::Path) -> anyhow::Result<Store> {
    if !data_dir.join("raven.db").exists() {
        bail!(
            "{} holds no Raven store index (to rebuild one from segment files: \
             raven-agent store --data-dir {} rebuild-index)",
            data_dir.display(),
            data_dir.display()
        );
    }
    Store::open_read_only(data_dir)
        .with_context(|| format!("opening the store in {}", data_dir.display()))
}

/// Maintenance opens the store as its one writer (refused while an agent runs).
fn open_writer(data_dir: &std::path::Path) -> anyhow::Result<Store> {
    let config =
        StoreConfig { data_dir: data_dir.to_string_lossy().into_owned(), ..StoreConfig::default() };
    Store::open(&config).with_context(|| format!("opening the store in {}", data_dir.display()))
}

fn parse_time(text: &str) -> anyhow::Result<SystemTime> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{text:?} is not an RFC 3339 time"))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_nanos(t.unix_timestamp_nanos().max(0) as u64))
}

/// One stored record as a JSON object: the common fields, the payload,
/// and the decoded fields merged in.
pub fn to_json(stored: &StoredRecord) -> Value {
    let r = &stored.record;
    let mut object = Map::new();
    object.insert("seq".into(), json!(stored.seq));
    object.insert("ts".into(), json!(rfc3339(r.captured_at)));
    object.insert("stream".into(), json!(r.stream.name()));
    object.insert("src".into(), json!(r.src.to_string()));
    object.insert("dst_port".into(), json!(r.dst_port));
    object.insert("len".into(), json!(r.wire_len));
    object.insert("truncated".into(), json!(r.truncated));
    object.insert("via".into(), json!(r.via.name()));
    object.insert("parse_error".into(), json!(stored.parse_error));
    match (r.stream, std::str::from_utf8(&r.payload)) {
        (Stream::Syslog, Ok(text)) => object.insert("payload".into(), json!(text)),
        _ => object.insert(
            "payload_b64".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(&r.payload)),
        ),
    };
    if let Some(decoded) = &stored.decoded
        && let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(decoded)
    {
        for (k, v) in fields {
            object.entry(k).or_insert(v);
        }
    }
    Value::Object(object)
}

pub fn segments(args: SegmentsArgs) -> anyhow::Result<()> {
    let mut out = BufWriter::new(io::stdout().lock());
    match args.command {
        SegmentsCommand::Ls { stream } => {
            let store = open(&args.data_dir)?;
            writeln!(
                out,
                "{:<8} {:>12} {:>12} {:>9} {:>12} {:>7}  {:<25} path",
                "stream", "first_seq", "last_seq", "records", "bytes", "state", "last"
            )?;
            for s in store.segments(stream)? {
                let last = s.last_ts.map(|ns| rfc3339(segment::from_nanos(ns))).unwrap_or_default();
                writeln!(
                    out,
                    "{:<8} {:>12} {:>12} {:>9} {:>12} {:>7}  {:<25} {}",
                    s.stream,
                    s.first_seq,
                    s.last_seq,
                    s.records,
                    s.stored_bytes,
                    s.state,
                    last,
                    s.path
                )?;
            }
        }
        SegmentsCommand::Cat { stream, from, to, exporter } => {
            let store = open(&args.data_dir)?;
            let from =
                from.as_deref().map(parse_time).transpose()?.unwrap_or(SystemTime::UNIX_EPOCH);
            let to = to.as_deref().map(parse_time).transpose()?.unwrap_or_else(SystemTime::now);
            // A segment at a time: two weeks print in a segment's memory.
            let mut range = store.range(stream, from, to, exporter)?;
            while let Some(segment) = range.next_segment()? {
                for stored in segment {
                    serde_json::to_writer(&mut out, &to_json(&stored))?;
                    out.write_all(b"\n")?;
                }
            }
        }
        SegmentsCommand::Relays => {
            let store = open(&args.data_dir)?;
            writeln!(
                out,
                "{:<16} {:<40} {:>12} {:>12}",
                "sink", "exporter", "original", "relayed"
            )?;
            for (sink, json) in store.relay_states()? {
                let state: crate::forward::udp_relay::RelayState = serde_json::from_str(&json)
                    .with_context(|| format!("the relay state of sink {sink}"))?;
                for (exporter, original, relayed) in state.domains {
                    writeln!(out, "{sink:<16} {exporter:<40} {original:>12} {relayed:>12}")?;
                }
            }
        }
        SegmentsCommand::Verify => {
            let store = open(&args.data_dir)?;
            let mut damaged = 0;
            for s in store.segments(None)? {
                let path = args.data_dir.join(&s.path);
                match segment::scan(&path, true) {
                    Ok(scan) if scan.corrupt.is_none() && !scan.torn_tail => {
                        let records: u64 = scan.blocks.iter().map(|b| u64::from(b.records)).sum();
                        if s.state == "open" && records > s.records {
                            // Written and synced, not indexed yet: the
                            // writer's next start (or its next append) indexes it.
                            writeln!(
                                out,
                                "note {}: {} records not indexed yet",
                                s.path,
                                records - s.records
                            )?;
                        } else if records != s.records {
                            damaged += 1;
                            writeln!(
                                out,
                                "MISMATCH {}: index says {} records, file holds {records}",
                                s.path, s.records
                            )?;
                        }
                    }
                    Ok(scan) => {
                        damaged += 1;
                        let why = scan.corrupt.unwrap_or_else(|| "torn tail".into());
                        writeln!(out, "DAMAGED {}: {why}", s.path)?;
                    }
                    Err(e) => {
                        damaged += 1;
                        writeln!(out, "UNREADABLE {}: {e}", s.path)?;
                    }
                }
            }
            out.flush()?;
            if damaged > 0 {
                bail!("{damaged} damaged segment(s)");
            }
            writeln!(out, "ok")?;
        }
        SegmentsCommand::Stats => {
            let store = open(&args.data_dir)?;
            writeln!(
                out,
                "{:<8} {:>10} {:>12} {:>14} {:>12} {:>8}",
                "stream", "segments", "records", "raw_bytes", "stored", "ratio"
            )?;
            for stream in Stream::ALL {
                let rows = store.segments(Some(stream))?;
                let records: u64 = rows.iter().map(|r| r.records).sum();
                let raw: u64 = rows.iter().map(|r| r.raw_bytes).sum();
                let stored: u64 = rows.iter().map(|r| r.stored_bytes).sum();
                let ratio = if stored > 0 { raw as f64 / stored as f64 } else { 0.0 };
                writeln!(
                    out,
                    "{:<8} {:>10} {:>12} {:>14} {:>12} {:>8.2}",
                    stream,
                    rows.len(),
                    records,
                    raw,
                    stored,
                    ratio
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

pub fn store(args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::RebuildIndex => {
            // Refuse before touching anything while an agent owns the store.
            drop(open_writer(&args.data_dir)?);
            let db = args.data_dir.join("raven.db");
            let aside = args
                .data_dir
                .join(format!("raven.db.replaced-{}", segment::nanos(SystemTime::now())));
            for suffix in ["", "-wal", "-shm"] {
                let from = PathBuf::from(format!("{}{suffix}", db.display()));
                if from.exists() {
                    std::fs::rename(&from, format!("{}{suffix}", aside.display()))?;
                }
            }
            let store = open_writer(&args.data_dir)?;
            let rows = store.segments(None)?;
            let records: u64 = rows.iter().map(|r| r.records).sum();
            println!(
                "rebuilt the index from {} segment(s), {records} record(s); the old one is {}",
                rows.len(),
                aside.display()
            );
        }
        StoreCommand::Load(load) => super::load::run(&args.data_dir, load)?,
        StoreCommand::Repack(repack) => {
            let store = open_writer(&args.data_dir)?;
            let defaults = super::repack::RepackLimits::from_config(&StoreConfig::default());
            let limits = super::repack::RepackLimits {
                min_records_per_block: repack
                    .min_records_per_block
                    .unwrap_or(defaults.min_records_per_block),
                block_records: repack.block_records.unwrap_or(defaults.block_records).max(1),
                max_segments: repack.max_segments.unwrap_or(usize::MAX),
                max_bytes: u64::MAX,
                max_scans: usize::MAX,
                ..defaults
            };
            // One pass does every segment that qualifies within the limits;
            // the totals are what it did.
            let done = store.repack_pass(&limits)?;
            println!("{}", serde_json::to_string(&done)?);
            if done.failed > 0 {
                bail!("{} segment(s) could not be re-packed (see the log)", done.failed);
            }
        }
    }
    Ok(())
}
