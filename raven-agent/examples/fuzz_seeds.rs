//! Seed corpora for the fuzz targets (`raven-agent/fuzz`), made from the
//! shared real captures; run by `cargo xtask fuzz`, never committed.
//!
//! Invariants: seeds are named by a hash of their bytes, so running this
//! again adds nothing twice and leaves what libFuzzer added alone; a missing
//! `../shared/data` is an error.
//!
//! Per target (`OUT/<target>/`):
//! - `syslog`, `snmp`: every payload of that stream (captures, raw payload
//!   files, rsyslog's test vectors).
//! - `flow`: per capture, its NetFlow/IPFIX datagrams in order, framed
//!   (`decode::samples`); per directory, all of its flow captures in one
//!   input, template captures first, so data meets its templates.
//! - `decoder`: per capture, every datagram with its stream, framed; each
//!   raw payload alone.
//! - `capture_file`: the capture files themselves.
//! - `windows`: a few Windows events as the HTTP endpoint receives them.
//!
//! Usage: `fuzz_seeds OUT_DIR [DATA_DIR]` (default data: `../shared/data`).

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use raven_agent::{
    decode::samples::{self, Sample},
    record::Stream,
};

struct Corpus {
    dir: PathBuf,
    written: usize,
}

impl Corpus {
    fn new(out: &Path, target: &str) -> anyhow::Result<Corpus> {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Corpus { dir, written: 0 })
    }

    fn add(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        let path = self.dir.join(format!("seed-{:016x}", hasher.finish()));
        if !path.exists() {
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        self.written += 1;
        Ok(())
    }
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
    for s in &all {
        match s.stream {
            Stream::Syslog => syslog.add(&s.payload)?,
            Stream::Snmp => snmp.add(&s.payload)?,
            _ => {}
        }
    }

    let mut flow = Corpus::new(&out, "flow")?;
    let mut by_dir: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (file, samples) in &by_file {
        if samples.iter().any(|s| is_flow(s)) {
            flow.add(&framed(samples.iter().copied().filter(|s| is_flow(s))))?;
            by_dir.entry(file.rsplit_once('/').map_or("", |(d, _)| d)).or_default().push(file);
        }
    }
    for files in by_dir.values_mut() {
        files.sort_by_key(|f| (!f.contains("template"), *f));
        let joined = files.iter().flat_map(|f| &by_file[f]).copied().filter(|s| is_flow(s));
        flow.add(&framed(joined))?;
    }

    let mut decoder = Corpus::new(&out, "decoder")?;
    for samples in by_file.values() {
        if samples.len() == 1 || samples[0].src.port() == 0 {
            for s in samples {
                decoder.add(&framed([*s]))?;
            }
        } else {
            decoder.add(&framed(samples.iter().copied()))?;
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

    for c in [&syslog, &snmp, &flow, &decoder, &captures, &windows] {
        println!("{} seeds in {}", c.written, c.dir.display());
    }
    Ok(())
}
