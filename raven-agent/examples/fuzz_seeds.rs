//! Seed corpora for the fuzz targets (`raven-agent/fuzz`), made from the
//! shared real captures; run by `cargo xtask fuzz`, never committed.
//!
//! Invariants: seeds are named `seed-<hash of their bytes>`, so a second run
//! writes nothing twice; seeds a run no longer makes are removed, and what
//! libFuzzer added (named by SHA-1) is left alone. A missing
//! `../shared/data` is an error.
//!
//! Seeds stay small (a few datagrams each) so a target runs thousands of
//! inputs a second rather than re-reading a whole capture per input.
//! Per target (`OUT/<target>/`):
//! - `syslog`, `snmp`, `sflow`: every payload of that stream (captures, raw
//!   payload files, rsyslog's test vectors).
//! - `flow`: for each NetFlow/IPFIX data datagram (at most
//!   `PER_CAPTURE` per capture), the datagrams carrying templates for it —
//!   from its own capture and from the matching `…template(s)…` capture of
//!   the same directory — then the datagram itself, framed
//!   (`decode::samples`), so data meets its templates.
//! - `decoder`: the `flow` seeds, and every other datagram alone, framed
//!   with its stream.
//! - `capture_file`: the capture files themselves.
//! - `windows`: a few Windows events as the HTTP endpoint receives them.
//!
//! Usage: `fuzz_seeds OUT_DIR [DATA_DIR]` (default data: `../shared/data`).

use std::{
    collections::{BTreeMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use raven_agent::{
    decode::samples::{self, Sample},
    record::Stream,
};

/// Data datagrams of one capture made into seeds (spread over the file).
const PER_CAPTURE: usize = 40;

struct Corpus {
    dir: PathBuf,
    written: usize,
    made: HashSet<PathBuf>,
}

impl Corpus {
    fn new(out: &Path, target: &str) -> anyhow::Result<Corpus> {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Corpus { dir, written: 0, made: HashSet::new() })
    }

    fn add(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        let path = self.dir.join(format!("seed-{:016x}", hasher.finish()));
        if !path.exists() {
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        if self.made.insert(path) {
            self.written += 1;
        }
        Ok(())
    }

    /// Removes the seeds of earlier runs that this run did not make.
    fn prune(&self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let ours = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-"));
            if ours && !self.made.contains(&path) {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

/// A NetFlow v9 / IPFIX datagram with a template or options-template set
/// (v9 flowset id 0 or 1, IPFIX set id 2 or 3: every id below 256).
fn carries_templates(payload: &[u8]) -> bool {
    let u16_at = |at: usize| payload.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut at = match u16_at(0) {
        Some(9) => 20,
        Some(10) => 16,
        _ => return false,
    };
    while let (Some(id), Some(len)) = (u16_at(at), u16_at(at + 2)) {
        if id < 256 {
            return true;
        }
        if len < 4 {
            break;
        }
        at += usize::from(len);
    }
    false
}

/// The capture in the same directory that holds `file`'s templates:
/// `x-data.pcap` → `x-template.pcap` or `x-templates.pcap`.
fn template_captures(file: &str) -> [String; 2] {
    let (dir, name) = file.rsplit_once('/').unwrap_or(("", file));
    let swap = |with: &str| match name.rfind("data") {
        Some(i) => format!("{dir}/{}{with}{}", &name[..i], &name[i + 4..]),
        None => String::new(),
    };
    [swap("template"), swap("templates")]
}

/// Up to `n` items spread evenly over `items`.
fn spread<T: Copy>(items: &[T], n: usize) -> Vec<T> {
    let step = items.len().div_ceil(n).max(1);
    items.iter().copied().step_by(step).collect()
}

/// The samples framed in order, each exporter address its own nibble.
fn framed<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Vec<u8> {
    let mut exporters: Vec<SocketAddr> = Vec::new();
    let mut out = Vec::new();
    for s in samples {
        let n = exporters.iter().position(|e| *e == s.src).unwrap_or_else(|| {
            exporters.push(s.src);
            exporters.len() - 1
        });
        samples::frame(&mut out, s.stream, (n % 16) as u8, &s.payload);
    }
    out
}

fn is_flow(s: &Sample) -> bool {
    matches!(s.stream, Stream::Netflow | Stream::Ipfix)
}

const WINDOWS_EVENTS: [&str; 3] = [
    r#"{"EventID":4624,"Channel":"Security","Computer":"dc1.venue.example","TimeCreated":"2026-11-28T12:00:00.123Z","EventData":{"TargetUserName":"alice","IpAddress":"192.0.2.7","LogonType":3}}"#,
    r#"{"EventID":7036,"Channel":"System","Level":4,"Message":"The Print Spooler service entered the stopped state.","Keywords":["Classic"],"RecordNumber":184467}"#,
    r#"{"event":{"code":"4625"},"winlog":{"channel":"Security","event_data":{"Status":"0xc000006d","SubStatus":null}},"message":"An account failed to log on.\r\n\tdetail: \u00e9"}"#,
];

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let out = PathBuf::from(args.next().context("usage: fuzz_seeds OUT_DIR [DATA_DIR]")?);
    let root = args.next().map_or_else(samples::default_root, PathBuf::from);
    let all = samples::load(&root)?;
    let mut by_file: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in &all {
        by_file.entry(&s.file).or_default().push(s);
    }

    let mut syslog = Corpus::new(&out, "syslog")?;
    let mut snmp = Corpus::new(&out, "snmp")?;
    let mut sflow = Corpus::new(&out, "sflow")?;
    for s in &all {
        match s.stream {
            Stream::Syslog => syslog.add(&s.payload)?,
            Stream::Snmp => snmp.add(&s.payload)?,
            Stream::Sflow => sflow.add(&s.payload)?,
            _ => {}
        }
    }

    // Flow seeds: a data datagram after the datagrams with its templates.
    let mut flow_seeds = Vec::new();
    for (file, samples) in &by_file {
        let flows: Vec<&Sample> = samples.iter().copied().filter(|s| is_flow(s)).collect();
        let mut templates: Vec<&Sample> = template_captures(file)
            .iter()
            .filter_map(|f| by_file.get(f.as_str()))
            .flatten()
            .copied()
            .filter(|s| is_flow(s) && carries_templates(&s.payload))
            .collect();
        templates.extend(flows.iter().copied().filter(|s| carries_templates(&s.payload)));
        templates.truncate(8);
        let data: Vec<&Sample> =
            flows.iter().copied().filter(|s| !carries_templates(&s.payload)).collect();
        if data.is_empty() && !templates.is_empty() {
            flow_seeds.push(framed(templates.iter().copied()));
        }
        for d in spread(&data, PER_CAPTURE) {
            flow_seeds.push(framed(templates.iter().copied().chain([d])));
        }
    }
    let mut flow = Corpus::new(&out, "flow")?;
    let mut decoder = Corpus::new(&out, "decoder")?;
    for seed in &flow_seeds {
        flow.add(seed)?;
        decoder.add(seed)?;
    }
    for samples in by_file.values() {
        let others: Vec<&Sample> = samples.iter().copied().filter(|s| !is_flow(s)).collect();
        for s in spread(&others, PER_CAPTURE) {
            decoder.add(&framed([s]))?;
        }
    }

    let mut captures = Corpus::new(&out, "capture_file")?;
    for (_, bytes) in samples::captures(&root)? {
        captures.add(&bytes)?;
    }

    let mut windows = Corpus::new(&out, "windows")?;
    for event in WINDOWS_EVENTS {
        windows.add(event.as_bytes())?;
    }
    windows.add(format!("[{}]", WINDOWS_EVENTS.join(",")).as_bytes())?;

    for c in [&syslog, &snmp, &sflow, &flow, &decoder, &captures, &windows] {
        c.prune()?;
        println!("{} seeds in {}", c.written, c.dir.display());
    }
    Ok(())
}
