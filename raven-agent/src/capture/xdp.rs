//! The XDP program as the agent sees it: load, attach, and its maps.
//!
//! Invariants:
//! - The embedded object is the one built from this tree (`build.rs`), so
//!   the `raven-common` layouts on both sides are the same.
//! - Attachments are bpf_links (kernel ≥ 5.9, commit aa8d3a716b59 "bpf,
//!   xdp: Add bpf_link-based XDP attachment API"): the kernel detaches the
//!   program when the last fd closes, so a SIGKILLed agent leaves nothing
//!   behind and the next start attaches without manual cleanup. Where the
//!   kernel falls back to a netlink attachment, attaching again replaces it.
//! - `PORTS` always equals the configured port table after [`XdpProgram::set_ports`]
//!   returns Ok; entries are changed in place, so a port that stays
//!   configured is never missed during an update.
//!
//! Maps: `PORTS` (port → stream, action), `SETTINGS` (snap length, wakeup
//! batching), `COUNTERS` (per-CPU outcome counters), `EXPORTERS` (per-CPU
//! LRU of per-source counters), `EVENTS` (the ring buffer).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use raven_common::{ExporterKey, ExporterStats, PortRule, counter, setting};

use super::CaptureError;
use crate::{
    config::{PortAction, PortConfig, XdpAttachMode},
    record::Stream,
};

/// The XDP object built from `raven-ebpf` by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("RAVEN_EBPF_OBJECT"));

const PROGRAM_NAME: &str = "raven";

/// Cumulative kernel counters, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub frames_seen: u64,
    pub non_ip: u64,
    pub non_udp: u64,
    pub malformed: u64,
    pub unmatched: u64,
    pub fragment_passed: u64,
    pub ring_full_passed: u64,
    pub truncated: u64,
    /// Copied into the ring, per stream.
    pub matched: BTreeMap<Stream, u64>,
}

impl KernelCounters {
    /// The reasons a frame was passed to the kernel uncopied, with counts.
    pub fn passed(&self) -> [(&'static str, u64); 6] {
        [
            ("non_ip", self.non_ip),
            ("non_udp", self.non_udp),
            ("malformed", self.malformed),
            ("unmatched", self.unmatched),
            ("fragment", self.fragment_passed),
            ("ring_full", self.ring_full_passed),
        ]
    }

    pub fn matched_total(&self) -> u64 {
        self.matched.values().sum()
    }
}

/// One exporter's kernel counters, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExporterRow {
    pub exporter: IpAddr,
    pub stream: Stream,
    pub packets: u64,
    pub bytes: u64,
    pub ring_full: u64,
    /// CLOCK_BOOTTIME nanoseconds of the last datagram.
    #[serde(skip)]
    pub last_seen_boot_ns: u64,
}

pub struct XdpProgram {
    ebpf: Ebpf,
    ports: HashMap<MapData, u16, PortRule>,
    settings: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
    exporters: PerCpuHashMap<MapData, ExporterKey, ExporterStats>,
    links: Vec<(String, XdpLinkId)>,
}

fn map_error(what: &'static str) -> impl FnOnce(aya::maps::MapError) -> CaptureError {
    move |source| CaptureError::Map { what, source }
}

impl XdpProgram {
    /// Loads (verifies) the program with a ring of `ring_bytes`; returns it
    /// with the ring's consumer side.
    pub fn load(ring_bytes: u32) -> Result<(XdpProgram, RingBuf<MapData>), CaptureError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| CaptureError::Load(e.to_string()))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| CaptureError::Load("program `raven` missing from object".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| CaptureError::Load(e.to_string()))?;
        program.load().map_err(|e| CaptureError::Load(verifier_message(&e)))?;

        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or_else(|| CaptureError::Load(format!("map {name} missing")))
        };
        let ring = RingBuf::try_from(take("EVENTS")?).map_err(map_error("EVENTS"))?;
        let ports = HashMap::try_from(take("PORTS")?).map_err(map_error("PORTS"))?;
        let settings = Array::try_from(take("SETTINGS")?).map_err(map_error("SETTINGS"))?;
        let counters = PerCpuArray::try_from(take("COUNTERS")?).map_err(map_error("COUNTERS"))?;
        let exporters =
            PerCpuHashMap::try_from(take("EXPORTERS")?).map_err(map_error("EXPORTERS"))?;
        Ok((XdpProgram { ebpf, ports, settings, counters, exporters, links: Vec::new() }, ring))
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM_NAME)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("checked at load")
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("checked at load")
    }

    /// Attaches to `interface`; returns the mode that took ("driver" or "skb").
    pub fn attach(
        &mut self,
        interface: &str,
        mode: XdpAttachMode,
    ) -> Result<&'static str, CaptureError> {
        let attempts: &[(XdpMode, &'static str)] = match mode {
            XdpAttachMode::Driver => &[(XdpMode::Driver, "driver")],
            XdpAttachMode::Skb => &[(XdpMode::Skb, "skb")],
            XdpAttachMode::Auto => &[(XdpMode::Driver, "driver"), (XdpMode::Skb, "skb")],
        };
        let mut last_error = String::new();
        for &(xdp_mode, name) in attempts {
            match self.program_mut().attach(interface, xdp_mode) {
                Ok(link) => {
                    self.links.push((interface.to_string(), link));
                    return Ok(name);
                }
                Err(e) => {
                    last_error = error_chain(&e);
                    if attempts.len() > 1 {
                        tracing::info!(interface, mode = name, error = %last_error,
                            "XDP attach mode not available, trying the next");
                    }
                }
            }
        }
        Err(CaptureError::Attach { interface: interface.to_string(), reason: last_error })
    }

    /// Detaches from every interface (also happens on drop).
    pub fn detach_all(&mut self) {
        for (interface, link) in std::mem::take(&mut self.links) {
            if let Err(e) = self.program_mut().detach(link) {
                tracing::warn!(interface, error = %e, "XDP detach failed");
            }
        }
    }

    pub fn attached_interfaces(&self) -> impl Iterator<Item = &str> {
        self.links.iter().map(|(name, _)| name.as_str())
    }

    /// Makes `PORTS` equal to `ports`.
    pub fn set_ports(&mut self, ports: &[PortConfig]) -> Result<(), CaptureError> {
        let wanted: BTreeMap<u16, PortRule> = ports
            .iter()
            .map(|p| {
                let action = match p.action {
                    PortAction::Steal => raven_common::action::STEAL,
                    PortAction::Tee => raven_common::action::TEE,
                };
                (p.port, PortRule { stream: p.stream.id(), action, _pad: [0; 2] })
            })
            .collect();
        for (&port, rule) in &wanted {
            self.ports.insert(port, rule, 0).map_err(map_error("PORTS"))?;
        }
        let stale: Vec<u16> =
            self.ports.keys().filter_map(Result::ok).filter(|p| !wanted.contains_key(p)).collect();
        for port in stale {
            self.ports.remove(&port).map_err(map_error("PORTS"))?;
        }
        Ok(())
    }

    pub fn set_snap_length(&mut self, snap_length: u32) -> Result<(), CaptureError> {
        self.settings.set(setting::SNAP_LEN, snap_length, 0).map_err(map_error("SETTINGS"))
    }

    pub fn set_wakeup_every(&mut self, records: u32) -> Result<(), CaptureError> {
        self.settings.set(setting::WAKEUP_EVERY, records, 0).map_err(map_error("SETTINGS"))
    }

    pub fn counters(&self) -> Result<KernelCounters, CaptureError> {
        let read = |index: u32| -> Result<u64, CaptureError> {
            Ok(self.counters.get(&index, 0).map_err(map_error("COUNTERS"))?.iter().sum())
        };
        let mut matched = BTreeMap::new();
        for stream in Stream::WIRE {
            matched.insert(stream, read(counter::MATCHED_BASE + u32::from(stream.id()))?);
        }
        Ok(KernelCounters {
            frames_seen: read(counter::FRAMES_SEEN)?,
            non_ip: read(counter::NON_IP)?,
            non_udp: read(counter::NON_UDP)?,
            malformed: read(counter::MALFORMED)?,
            unmatched: read(counter::UNMATCHED)?,
            fragment_passed: read(counter::FRAGMENT_PASSED)?,
            ring_full_passed: read(counter::RING_FULL_PASSED)?,
            truncated: read(counter::TRUNCATED)?,
            matched,
        })
    }

    pub fn exporters(&self) -> Vec<ExporterRow> {
        let mut rows = Vec::new();
        for entry in self.exporters.iter() {
            // An entry evicted between listing and lookup is simply skipped.
            let Ok((key, per_cpu)) = entry else { continue };
            let Some(stream) = Stream::from_id(key.stream) else {
                continue;
            };
            let exporter = if key.is_ipv6 == 1 {
                IpAddr::V6(Ipv6Addr::from(key.addr))
            } else {
                IpAddr::V4(Ipv4Addr::new(key.addr[0], key.addr[1], key.addr[2], key.addr[3]))
            };
            let mut row = ExporterRow {
                exporter,
                stream,
                packets: 0,
                bytes: 0,
                ring_full: 0,
                last_seen_boot_ns: 0,
            };
            for cpu in per_cpu.iter() {
                row.packets += cpu.packets;
                row.bytes += cpu.bytes;
                row.ring_full += cpu.ring_full;
                row.last_seen_boot_ns = row.last_seen_boot_ns.max(cpu.last_seen_boot_ns);
            }
            rows.push(row);
        }
        rows.sort_by_key(|row| (row.exporter, row.stream));
        rows
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The verifier's log is the only useful part of a load failure.
fn verifier_message(error: &aya::programs::ProgramError) -> String {
    match error {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            format!("{io_error}\n{verifier_log}")
        }
        other => error_chain(other),
    }
}

/// Attaches the object's `raven_drop` program (every frame dropped) to
/// `interface` until the returned guard drops: the benchmark's ceiling.
pub fn attach_drop(interface: &str) -> Result<(aya::Ebpf, XdpLinkId), CaptureError> {
    let mut ebpf =
        aya::EbpfLoader::new().load(EBPF_OBJECT).map_err(|e| CaptureError::Load(e.to_string()))?;
    let program: &mut Xdp = ebpf
        .program_mut("raven_drop")
        .ok_or_else(|| CaptureError::Load("no raven_drop program in the object".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| CaptureError::Load(e.to_string()))?;
    program.load().map_err(|e| CaptureError::Load(e.to_string()))?;
    let link = program
        .attach(interface, XdpMode::Driver)
        .or_else(|_| program.attach(interface, XdpMode::Skb))
        .map_err(|e| CaptureError::Load(e.to_string()))?;
    Ok((ebpf, link))
}
