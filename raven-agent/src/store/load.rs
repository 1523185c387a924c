//! `raven-agent store load`: drives the store the way the running agent
//! does, for benchmarks and crash tests.
//!
//! Invariants:
//! - Every record goes through the real path: decoded by the real
//!   [`Decoder`](crate::decode::Decoder), appended per stream as one block
//!   per group commit, acknowledged only once durable. Nothing is faked
//!   but the capture itself.
//! - Unpaced, the acknowledged ranges printed (default output) are exactly
//!   what [`Store::append`] returned, in order, flushed line by line as
//!   each append returns: a crash test trusts every line it read. Paced
//!   (`--rate`), they are printed after the run.
//!
//! Sources: synthetic RFC 3164 lines (a counter being the only change), or
//! the UDP datagrams of capture files (`--captures`, streams by
//! destination port; `--source` keeps one sender's), cycled with fresh
//! capture times — or, with `--capture-times`, each stored with the time it
//! was captured (real gaps between records, for bytes-per-record runs).
//! Pacing: as fast as the store takes batches of `--batch` (decode, then
//! append, on one thread: the store's own rate), or `--rate` records per
//! second from a generator thread into the agent's own ingest stage
//! ([`crate::pipeline::ingest`]: group commit by `store.flush_interval_ms`,
//! decoding overlapped with storing), which is what the latency figures
//! mean: capture time to durable. `--readers N` adds threads reading the
//! stream meanwhile, as forwarders draining a backlog do; `--read-back`
//! reads everything back afterwards in a sink's default batches and
//! reports the rate.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use serde_json::json;

use super::{Store, segment::Codec};
use crate::{
    config::{DecodeConfig, StoreConfig},
    decode::Decoder,
    record::{Record, Stream, Via},
};

#[derive(Args)]
pub struct LoadArgs {
    #[arg(long, default_value_t = 10_000)]
    records: u64,
    /// Records per block when not paced by `--rate`.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value_t = 4096)]
    segment_max_bytes: u64,
    #[arg(long, default_value = "gzip")]
    codec: String,
    #[arg(long)]
    level: Option<u32>,
    /// Records per second, generated on another thread (latency mode).
    #[arg(long)]
    rate: Option<u64>,
    /// With `--rate`: this many threads read the stream meanwhile as a
    /// forwarder draining a backlog does (batches of 4096 from a cursor,
    /// from the start again once caught up), to measure what readers cost
    /// the capture→durable latency.
    #[arg(long, default_value_t = 0, requires = "rate")]
    readers: usize,
    /// Take the datagrams of these pcap/pcapng files instead of synthetic
    /// syslog lines.
    #[arg(long, num_args = 1..)]
    captures: Vec<PathBuf>,
    /// Only the datagrams these captures hold from this sender address.
    #[arg(long, requires = "captures")]
    source: Option<std::net::IpAddr>,
    /// Keep each datagram's own capture time instead of stamping it now
    /// (latencies then mean nothing).
    #[arg(long, requires = "captures")]
    capture_times: bool,
    /// After the load, read every stream back from the start as a
    /// forwarder draining a backlog does (the forward defaults'
    /// `batch_max_records` and `batch_max_bytes` per read) and report the
    /// rate (`read_back` in the summary).
    #[arg(long)]
    read_back: bool,
    /// Print the JSON summary (throughput, latency percentiles, failures)
    /// instead of the acknowledged ranges; without it, the summary is the
    /// last line on stderr.
    #[arg(long)]
    summary: bool,
}

fn synthetic(n: u64) -> Record {
    Record {
        captured_at: SystemTime::now(),
        stream: Stream::Syslog,
        src: "192.0.2.10:514".parse().expect("address"),
        dst_port: 514,
        ifindex: 0,
        wire_len: 64,
        truncated: false,
        via: Via::Socket,
        payload: Bytes::from(format!("<134>Nov 28 12:00:00 venue-sw1 load: record {n}")),
    }
}

fn capture_source(
    paths: &[PathBuf],
    source: Option<std::net::IpAddr>,
) -> anyhow::Result<Vec<Record>> {
    let ports = crate::decode::cli::port_map(&[]);
    let mut out = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        out.extend(
            crate::decode::cli::capture_records(&bytes, crate::decode::cli::by_port(&ports, None))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        );
    }
    out.retain(|r| source.is_none_or(|ip| r.src.ip() == ip));
    if out.is_empty() && !paths.is_empty() {
        bail!("the captures hold no datagram of a known stream (from that source)");
    }
    Ok(out)
}

/// A forwarder's read loop over the syslog stream until `done`: batches
/// of 4096 from a cursor, from the start again once caught up.
fn drain(store: &Store, done: &std::sync::atomic::AtomicBool, read: &std::sync::atomic::AtomicU64) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut cursor = 0;
    while !done.load(Relaxed) {
        match store.read(Stream::Syslog, cursor, 4096) {
            Ok(batch) if !batch.is_empty() => {
                cursor = batch.last().map_or(cursor, |r| r.seq + 1);
                read.fetch_add(batch.len() as u64, Relaxed);
            }
            _ => {
                cursor = 0;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// What reading every stream back in forwarder batches took.
#[derive(Default)]
struct ReadBack {
    records: u64,
    payload_bytes: u64,
    reads: u64,
    seconds: f64,
}

/// Reads every stream from sequence 0 to its end in batches of a sink's
/// defaults, moving the cursor past each batch as an acknowledged send
/// does.
fn read_back(store: &Store) -> anyhow::Result<ReadBack> {
    let sink = crate::config::SinkConfig::new(
        "read-back",
        crate::config::SinkProtocol::SyslogUdp,
        "192.0.2.1:514",
    );
    let limit =
        super::ReadLimit { records: sink.batch_max_records, payload_bytes: sink.batch_max_bytes };
    let mut back = ReadBack::default();
    let started = Instant::now();
    for stream in Stream::ALL {
        let mut cursor = 0;
        loop {
            let batch = store.read(stream, cursor, limit)?;
            back.reads += 1;
            let Some(last) = batch.last() else { break };
            cursor = last.seq + 1;
            back.records += batch.len() as u64;
            back.payload_bytes += batch.iter().map(|r| r.record.payload.len() as u64).sum::<u64>();
        }
    }
    back.seconds = started.elapsed().as_secs_f64();
    Ok(back)
}

/// The n-th record of the load, captured now.
struct Source {
    captures: Vec<Record>,
    capture_times: bool,
}

impl Source {
    fn record(&self, n: u64) -> Record {
        if self.captures.is_empty() {
            return synthetic(n);
        }
        let mut record = self.captures[(n % self.captures.len() as u64) as usize].clone();
        if !self.capture_times {
            record.captured_at = SystemTime::now();
        }
        record
    }
}

#[derive(Default)]
struct Failures {
    appends: u64,
    records: u64,
}

/// Wall time spent in each stage: the store's own rate (append, compress,
/// write, `fdatasync`, index) is records ÷ `append`.
#[derive(Default)]
struct StageTimes {
    decode: Duration,
    append: Duration,
}

/// Decodes and appends one group commit, per stream; returns the ranges.
fn commit(
    store: &Store,
    decoder: &Decoder,
    batch: Vec<Record>,
    latencies: &mut Vec<u32>,
    failures: &mut Failures,
    times: &mut StageTimes,
) -> anyhow::Result<Vec<(Stream, u64, u64)>> {
    let decoding = Instant::now();
    let by_stream = crate::pipeline::decode_for_store(decoder, batch).records;
    times.decode += decoding.elapsed();
    let mut ranges = Vec::new();
    for (stream, records) in by_stream {
        let captured: Vec<SystemTime> = records.iter().map(|r| r.record.captured_at).collect();
        // As the pipeline does: a batch the store refuses (after its own
        // retries) is counted and the load goes on.
        let appending = Instant::now();
        let appended = store.append(stream, records);
        times.append += appending.elapsed();
        let appended = match appended {
            Ok(appended) => appended,
            Err(e) => {
                eprintln!("append of {} {stream} records failed: {e}", captured.len());
                failures.appends += 1;
                failures.records += captured.len() as u64;
                continue;
            }
        };
        let durable = SystemTime::now();
        latencies.extend(captured.iter().map(|t| micros(durable, *t)));
        ranges.push((stream, appended.first_seq, appended.last_seq));
    }
    Ok(ranges)
}

/// Capture→durable in microseconds.
fn micros(durable: SystemTime, captured: SystemTime) -> u32 {
    durable.duration_since(captured).unwrap_or_default().as_micros().min(u32::MAX as u128) as u32
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[at]) / 1000.0
}

pub fn run(data_dir: &Path, args: LoadArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let codec: Codec = args.codec.parse().map_err(|e: String| anyhow::anyhow!("--codec: {e}"))?;
    let config = StoreConfig {
        data_dir: data_dir.to_string_lossy().into_owned(),
        segment_max_bytes: args.segment_max_bytes,
        codec,
        compression_level: args.level.unwrap_or(StoreConfig::default().compression_level),
        ..StoreConfig::default()
    };
    if !codec.levels().contains(&config.compression_level) {
        bail!(
            "--level {} is outside {:?} for {}",
            config.compression_level,
            codec.levels(),
            codec.name()
        );
    }
    let store = Store::open(&config)?;
    let decoder = Decoder::new(&DecodeConfig::default());
    let source = Source {
        captures: capture_source(&args.captures, args.source)?,
        capture_times: args.capture_times,
    };
    let mut out = io::stdout().lock();
    let mut latencies = Vec::with_capacity(args.records.min(10_000_000) as usize);
    let started = Instant::now();
    let mut blocks = 0u64;
    let mut failures = Failures::default();
    let mut times = StageTimes::default();
    let mut read_records = 0u64;
    let mut report = |ranges: Vec<(Stream, u64, u64)>, out: &mut io::StdoutLock| {
        blocks += ranges.len() as u64;
        if !args.summary {
            for (_, first, last) in ranges {
                writeln!(out, "{first} {last}")?;
            }
            out.flush()?;
        }
        anyhow::Ok(())
    };
    match args.rate {
        None => {
            let mut made = 0u64;
            while made < args.records {
                let n = args.batch.min((args.records - made) as usize);
                let batch: Vec<Record> =
                    (made..made + n as u64).map(|i| source.record(i)).collect();
                report(
                    commit(&store, &decoder, batch, &mut latencies, &mut failures, &mut times)?,
                    &mut out,
                )?;
                made += n as u64;
            }
        }
        Some(rate) => {
            // The agent's own ingest stage (decode overlapped with the
            // store, group commit), fed by a generator thread the way the
            // capture feeds it.
            let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Record>>(256);
            let (report_tx, report_rx) = std::sync::mpsc::channel();
            let total = args.records;
            let generator = std::thread::spawn(move || {
                // One small batch per millisecond tick, as the capture's
                // ring reader hands them on at this rate.
                let start = Instant::now();
                let mut made = 0u64;
                while made < total {
                    let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                    let n = due.min(total).saturating_sub(made);
                    if n == 0 {
                        std::thread::sleep(Duration::from_micros(500));
                        continue;
                    }
                    let batch = (made..made + n).map(|i| source.record(i)).collect();
                    if tx.blocking_send(batch).is_err() {
                        return;
                    }
                    made += n;
                }
            });
            // A runtime of its own, on a thread of its own: the CLI may
            // already run inside one.
            let ingest = crate::pipeline::ingest(
                rx,
                store.clone(),
                std::sync::Arc::new(decoder),
                Default::default(),
                Some(report_tx),
            );
            let done = std::sync::atomic::AtomicBool::new(false);
            let read = std::sync::atomic::AtomicU64::new(0);
            std::thread::scope(|scope| {
                for _ in 0..args.readers {
                    scope.spawn(|| drain(&store, &done, &read));
                }
                let ingested = scope
                    .spawn(|| {
                        tokio::runtime::Builder::new_multi_thread()
                            .enable_all()
                            .build()
                            .map(|runtime| runtime.block_on(ingest))
                    })
                    .join()
                    .map_err(|_| anyhow::anyhow!("the ingest thread panicked"));
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                ingested
            })??;
            read_records = read.into_inner();
            generator.join().map_err(|_| anyhow::anyhow!("the generator panicked"))?;
            let mut stored = 0u64;
            for block in report_rx.try_iter() {
                stored += block.captured.len() as u64;
                latencies.extend(block.captured.iter().map(|t| micros(block.at, *t)));
                report(vec![(block.stream, block.first_seq, block.last_seq)], &mut out)?;
            }
            failures.records = total - stored;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let back = if args.read_back { Some(read_back(&store)?) } else { None };
    let unpaced = args.rate.is_none();
    latencies.sort_unstable();
    let summary = json!({
        "records": latencies.len(),
        "blocks": blocks,
        "seconds": secs,
        "records_per_second": latencies.len() as f64 / secs,
        // Per stage only when unpaced (one thread, stage after stage);
        // paced, the ingest stage overlaps them.
        "decode_seconds": unpaced.then_some(times.decode.as_secs_f64()),
        "append_seconds": unpaced.then_some(times.append.as_secs_f64()),
        "append_records_per_second":
            unpaced.then(|| latencies.len() as f64 / times.append.as_secs_f64().max(1e-9)),
        "write_failures": crate::metrics::store_write_failures(),
        "evicted_records": crate::metrics::store_evicted_records(),
        // Paced, only the records that never became durable are known.
        "failed_appends": unpaced.then_some(failures.appends),
        "failed_records": failures.records,
        // Records the `--readers` read meanwhile.
        "read_records": read_records,
        "read_back": back.map(|b| json!({
            "records": b.records,
            "reads": b.reads,
            "seconds": b.seconds,
            "records_per_second": b.records as f64 / b.seconds.max(1e-9),
            "payload_mb_per_second": b.payload_bytes as f64 / 1e6 / b.seconds.max(1e-9),
        })),
        "codec": codec.name(),
        "level": config.compression_level,
        "latency_ms": {
            "p50": percentile(&latencies, 0.50),
            "p99": percentile(&latencies, 0.99),
            "max": percentile(&latencies, 1.0),
        },
    });
    // With the ranges on stdout, the summary goes to stderr.
    if args.summary {
        writeln!(out, "{summary}")?;
    } else {
        eprintln!("{summary}");
    }
    Ok(())
}
