//! Re-packing: sealed segments of small blocks rewritten with large ones.
//!
//! Group commit makes a block of whatever arrived within
//! `store.flush_interval_ms`, so a stream of 100 records/s makes blocks of
//! about two records, and every block pays its header and starts its
//! compression afresh (about 225 bytes per syslog record instead of 50 or
//! less in full blocks). Durability and latency need those small blocks
//! when records arrive; once the segment is sealed nothing needs them, so
//! maintenance rewrites it.
//!
//! Invariants:
//! - The records do not change: a re-packed segment reads back the very
//!   [`StoredRecord`]s of the old one (sequence numbers, capture times,
//!   sources, flags, payloads, decoded fields, parse errors), which is
//!   checked block by block before the old file is given up. Same format
//!   version (2), same codec, the header's creation time kept; the index
//!   row keeps its totals, times and per-exporter rows, only path and size
//!   change.
//! - Only sealed version-2 segments are re-packed (version 1 stays as an
//!   older Raven wrote it), never the open one, never one whose durable
//!   blocks the index has not recorded yet, and only when re-packing makes
//!   fewer blocks (a re-packed segment is never chosen again).
//! - Order of operations, so that a crash between any two steps leaves
//!   the old or the new file referenced by the index and intact:
//!   1. write `<first_seq>.r<n>.seg.tmp` beside the old file (n: one more
//!      than the old file's), read every new block back and compare it,
//!      `fsync` the file and the directory;
//!   2. under the state lock: check the old row is still there (retention
//!      may have evicted it meanwhile), rename the file to
//!      `<first_seq>.r<n>.seg`, `fsync` the directory, and swap the index
//!      row in one transaction ([`Index::replace_segment`]);
//!   3. delete the old file and `fsync` the directory.
//!
//!   Start-up reconcile removes every `*.seg.tmp` (step 1 interrupted:
//!   nothing refers to it) and every segment file the index does not know
//!   whose records a sealed, indexed segment of the same stream holds
//!   (step 2 interrupted before the swap: the new file; step 3 interrupted:
//!   the old one). An index rebuilt from the files keeps the first of the
//!   two by name (`.r<n>` sorts before `.seg`).
//! - Readers never lose or repeat a record: in the agent they look up
//!   rows, block lists and open the files under the state lock (then read
//!   without it; an open file outlives its deletion), so they see the old
//!   row and file or the new ones. A range read ([`super::RangeReader`])
//!   takes the lock per segment, and a read-only process has none: either
//!   may look up the old row just before the swap and find its file
//!   deleted; [`Store::read`] then starts over from the index, which names
//!   the new file by then, and a range read looks the rest of its range up
//!   again and goes on after what it handed out. The new row has a new
//!   id, so no block list cached for the old file is used on the new one.
//! - The state lock is never held while a segment is read, compressed or
//!   synced: only for the checks, the rename, a directory sync and the
//!   index swap. A pass is bounded (`store.repack_max_segments_per_pass`,
//!   `store.repack_max_bytes_per_pass`) and only one runs at a time.
//!
//! Operations: [`Store::repack`] (one pass as configured; the agent runs it
//! after retention), [`Store::repack_pass`] (with explicit limits: `raven-agent
//! store repack`), [`Store::repack_segment`].

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{
    NewRecord, Store, StoreError, StoredRecord, index::SegmentRow, segment, segment::BlockMeta,
    sync_dir,
};
use crate::{config::StoreConfig, metrics, record::Stream};

/// A re-packed block also ends once its payloads and decoded fields reach
/// this many bytes (a few syslog messages of 64 KiB must not make a block
/// the reader needs long to decompress).
const MAX_BLOCK_INPUT: usize = 8 << 20;

/// The suffix of a re-pack's file until it is complete and synced.
const TEMPORARY: &str = ".seg.tmp";

/// What a pass may do.
#[derive(Clone, Copy, Debug)]
pub struct RepackLimits {
    /// Segments whose blocks hold fewer records than this on average.
    pub min_records_per_block: u64,
    /// Records per block written.
    pub block_records: usize,
    pub max_segments: usize,
    /// Bytes of segments (before) per pass; the first always goes.
    pub max_bytes: u64,
    /// Segments a pass scans (their block headers) to learn how many
    /// blocks they have. Each is looked at once per process, so a store of
    /// many segments already in large blocks costs a few passes a little
    /// I/O each, never one long pass (block lists that readers cached cost
    /// nothing).
    pub max_scans: usize,
    /// A segment is only re-packed while the disk keeps this much free
    /// besides room for a copy of it (`store.min_free_bytes`): re-packing
    /// must never make appends find the disk full and evict.
    pub min_free_bytes: u64,
}

impl RepackLimits {
    pub fn from_config(config: &StoreConfig) -> RepackLimits {
        RepackLimits {
            min_records_per_block: config.repack_min_records_per_block,
            block_records: config.repack_block_records.max(1),
            max_segments: config.repack_max_segments_per_pass,
            max_bytes: config.repack_max_bytes_per_pass,
            max_scans: 64,
            min_free_bytes: config.min_free_bytes,
        }
    }

    /// Whether a segment of `records` in `blocks` is worth re-packing:
    /// small blocks on average, and re-packing makes fewer of them.
    pub fn wants(&self, records: u64, blocks: u64) -> bool {
        blocks > 0
            && records < self.min_records_per_block.saturating_mul(blocks)
            && blocks > records.div_ceil(self.block_records as u64)
    }
}

/// What a pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Repacked {
    pub segments: u64,
    pub records: u64,
    pub blocks_before: u64,
    pub blocks_after: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// The longest a re-pack held the state lock (appends and readers
    /// wait for it): the swap, never the compression (microseconds).
    pub longest_lock_us: u64,
    /// Re-packs given up (counted by reason in the metrics).
    pub failed: u64,
}

/// One segment re-packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The segment's new row.
    pub id: i64,
    pub records: u64,
    pub blocks_before: u64,
    pub blocks_after: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// How long the swap held the state lock.
    pub lock_held: std::time::Duration,
}

/// Why a re-pack was given up; the segment stays as it was.
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct RepackFailure {
    /// The metric's label: `damaged`, `mismatch`, `disk_full`, `no_room`,
    /// `io`, `index`, `verify`, `segment_gone`.
    pub reason: &'static str,
    pub detail: String,
}

impl RepackFailure {
    fn new(reason: &'static str, detail: impl ToString) -> RepackFailure {
        RepackFailure { reason, detail: detail.to_string() }
    }

    fn io(e: io::Error) -> RepackFailure {
        let reason = if super::is_disk_full(&e) { "disk_full" } else { "io" };
        RepackFailure::new(reason, e)
    }

    /// Worth trying again on a later pass (a transient condition), or not
    /// (the segment itself is the problem: `segments verify` tells).
    fn transient(&self) -> bool {
        matches!(self.reason, "disk_full" | "no_room" | "io" | "index" | "segment_gone")
    }
}

/// Where to stop, to test what a crash at each step leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The new file is written and synced under its temporary name.
    Written,
    /// ... renamed into place; the index still names the old file.
    Renamed,
    /// ... the index names the new file; the old one is still there.
    Swapped,
}

/// What passes remember (one store's, in memory): sealed segments never
/// change, so each is looked at once.
#[derive(Default)]
pub(super) struct Memory {
    /// Blocks and format version of sealed segments looked at, by path
    /// (unique, and new for a re-packed file; a row id may be reused).
    looked: HashMap<String, (u64, u16)>,
    /// Segments whose re-pack failed for a reason of their own (damage):
    /// not tried again until a restart.
    refused: HashSet<String>,
}

/// `<first_seq>.r<n>.seg` of the file replacing `old` (`<first_seq>.seg` or
/// `<first_seq>.r<n-1>.seg`), and its temporary name.
fn new_names(old: &Path) -> Option<(PathBuf, PathBuf)> {
    let name = old.file_name()?.to_str()?;
    let stem = name.strip_suffix(".seg")?;
    let (first, generation) = match stem.split_once(".r") {
        Some((first, n)) => (first, n.parse::<u64>().ok()?),
        None => (stem, 0),
    };
    let dir = old.parent()?;
    let name = format!("{first}.r{}", generation + 1);
    Some((dir.join(format!("{name}.seg")), dir.join(format!("{name}{TEMPORARY}"))))
}

/// The record to write again. The store takes decoded fields as an
/// object, so the stored text is read back into one; the block written
/// from it is compared with the old records before it counts, so a text
/// that would not come back the same (none that Raven writes) fails the
/// re-pack of that segment (`verify`) rather than change a record.
fn to_new(stored: &StoredRecord) -> Result<NewRecord, RepackFailure> {
    let decoded = match &stored.decoded {
        Some(text) => {
            Some(crate::decode::Fields::Object(serde_json::from_slice(text).map_err(|e| {
                RepackFailure::new("verify", format!("record {}: decoded fields: {e}", stored.seq))
            })?))
        }
        None => None,
    };
    Ok(NewRecord {
        record: stored.record.clone(),
        decoded,
        parse_error: stored.parse_error.clone(),
    })
}

/// The level to use for `codec`: the configured one if it is the
/// configured codec, else that codec's usual level.
fn level_for(codec: segment::Codec, config: &StoreConfig) -> u32 {
    if codec == config.codec {
        config.compression_level
    } else {
        match codec {
            segment::Codec::Gzip => 6,
            segment::Codec::Zstd => 3,
        }
    }
}

/// The new file while it is written: blocks appended, each read back.
struct Writer {
    file: File,
    stream: Stream,
    codec: segment::Codec,
    level: u32,
    len: u64,
    blocks: Vec<BlockMeta>,
}

impl Writer {
    /// Encodes `batch` as one block, writes it and reads it back: the
    /// records must come back identical.
    fn put(&mut self, batch: &[StoredRecord]) -> Result<(), RepackFailure> {
        let Some(first) = batch.first() else { return Ok(()) };
        let new: Vec<NewRecord> = batch.iter().map(to_new).collect::<Result<_, _>>()?;
        let block = segment::compress_block(&new, self.codec, self.level)
            .map_err(RepackFailure::io)?
            .seal(first.seq);
        self.file.write_all_at(&block, self.len).map_err(RepackFailure::io)?;
        let meta = BlockMeta {
            offset: self.len,
            len: (block.len() as u64 - segment::BLOCK_HEADER_LEN) as u32,
            first_seq: first.seq,
            records: batch.len() as u32,
            version: segment::VERSION,
        };
        let back = segment::read_block(&mut self.file, &meta, self.stream, self.codec)
            .map_err(|e| RepackFailure::new("verify", e))?;
        if back != batch {
            let at = back.iter().zip(batch).position(|(a, b)| a != b).unwrap_or(0);
            return Err(RepackFailure::new(
                "verify",
                format!("record {} does not read back identical", first.seq + at as u64),
            ));
        }
        self.len += block.len() as u64;
        self.blocks.push(meta);
        Ok(())
    }
}

impl Store {
    /// One re-pack pass as configured (`store.repack_*`); nothing when
    /// disabled. Run after retention by the agent's maintenance.
    pub fn repack(&self) -> Result<Repacked, StoreError> {
        self.writable()?;
        let config = self.config();
        if !config.repack_enabled {
            return Ok(Repacked::default());
        }
        self.repack_pass(&RepackLimits::from_config(&config))
    }

    /// Re-packs the sealed segments `limits` wants, newest first (they stay
    /// longest), within its bounds. Failures are counted and logged, and
    /// the pass goes on; only an unreadable index fails it. A pass already
    /// running makes this one return at once, doing nothing.
    pub fn repack_pass(&self, limits: &RepackLimits) -> Result<Repacked, StoreError> {
        self.writable()?;
        let Ok(mut memory) = self.inner.repack.try_lock() else {
            return Ok(Repacked::default());
        };
        let mut rows: Vec<SegmentRow> = {
            let state = self.state();
            let open: HashSet<i64> = state.open.values().map(|o| o.id).collect();
            let rows = state.index.segments(None)?;
            rows.into_iter()
                .filter(|r| r.state == "sealed" && r.records > 0 && !open.contains(&r.id))
                .collect()
        };
        rows.sort_by_key(|r| std::cmp::Reverse((r.last_ts.unwrap_or(0), r.id)));
        let paths: HashSet<&str> = rows.iter().map(|r| r.path.as_str()).collect();
        memory.looked.retain(|path, _| paths.contains(path.as_str()));
        memory.refused.retain(|path| paths.contains(path.as_str()));
        drop(paths);
        let mut done = Repacked::default();
        let mut scans = 0;
        for row in rows {
            if done.segments as usize >= limits.max_segments {
                break;
            }
            if done.segments > 0 && done.bytes_before + row.stored_bytes > limits.max_bytes {
                continue; // a smaller one may still fit
            }
            if memory.refused.contains(&row.path) {
                continue;
            }
            let cached = || {
                let state = self.state();
                let blocks = state.blocks.get(&row.id)?;
                Some((blocks.len() as u64, blocks.first()?.version))
            };
            let (blocks, version) = match memory.looked.get(&row.path).copied().or_else(cached) {
                Some(seen) => seen,
                None if scans < limits.max_scans => {
                    scans += 1;
                    // Block headers only: the CRCs are checked when the
                    // blocks are read to be re-packed.
                    let Ok(scan) = segment::scan(&self.inner.dir.join(&row.path), false) else {
                        continue; // gone or unreadable: retention or verify deal with it
                    };
                    (scan.blocks.len() as u64, scan.version)
                }
                None => continue,
            };
            memory.looked.insert(row.path.clone(), (blocks, version));
            if version != segment::VERSION || !limits.wants(row.records, blocks) {
                continue;
            }
            match self.repack_segment(&row, limits) {
                Ok(Some(outcome)) => {
                    done.segments += 1;
                    done.records += outcome.records;
                    done.blocks_before += outcome.blocks_before;
                    done.blocks_after += outcome.blocks_after;
                    done.bytes_before += outcome.bytes_before;
                    done.bytes_after += outcome.bytes_after;
                    done.longest_lock_us =
                        done.longest_lock_us.max(outcome.lock_held.as_micros() as u64);
                }
                Ok(None) => {}
                Err(failure) => {
                    done.failed += 1;
                    if !failure.transient() {
                        memory.refused.insert(row.path.clone());
                    }
                }
            }
        }
        Ok(done)
    }

    /// Re-packs one sealed segment into blocks of `limits.block_records`
    /// (see the module doc for the order of operations). `Ok(None)`: not a
    /// segment this re-packs (not sealed, version 1). A failure is logged
    /// and counted here; the segment then stays as it was.
    pub fn repack_segment(
        &self,
        row: &SegmentRow,
        limits: &RepackLimits,
    ) -> Result<Option<Outcome>, RepackFailure> {
        self.repack_until(row, limits, None)
    }

    pub(crate) fn repack_until(
        &self,
        row: &SegmentRow,
        limits: &RepackLimits,
        stop: Option<Stop>,
    ) -> Result<Option<Outcome>, RepackFailure> {
        let result = self.try_repack(row, limits, stop);
        match &result {
            Ok(Some(outcome)) => {
                tracing::info!(segment = %row.path, stream = %row.stream,
                    records = outcome.records, blocks_before = outcome.blocks_before,
                    blocks_after = outcome.blocks_after, bytes_before = outcome.bytes_before,
                    bytes_after = outcome.bytes_after,
                    lock_held_us = outcome.lock_held.as_micros() as u64,
                    "re-packed a segment of small blocks");
                if stop.is_none() {
                    metrics::emit(metrics::StoreRepacked {
                        stream: row.stream,
                        bytes_before: outcome.bytes_before,
                        bytes_after: outcome.bytes_after,
                    });
                }
            }
            Ok(None) => {}
            Err(failure) => {
                tracing::warn!(segment = %row.path, stream = %row.stream,
                    reason = failure.reason, error = %failure.detail,
                    "re-pack given up; the segment stays as it was");
                metrics::emit(metrics::StoreRepackFailed {
                    stream: row.stream,
                    reason: failure.reason,
                });
            }
        }
        result
    }

    fn try_repack(
        &self,
        row: &SegmentRow,
        limits: &RepackLimits,
        stop: Option<Stop>,
    ) -> Result<Option<Outcome>, RepackFailure> {
        if row.state != "sealed" {
            return Ok(None);
        }
        let (_, free) = super::disk_space(&self.inner.dir);
        if free < limits.min_free_bytes.saturating_add(row.stored_bytes) {
            return Err(RepackFailure::new(
                "no_room",
                format!(
                    "{free} bytes free, store.min_free_bytes plus a copy of the segment needed"
                ),
            ));
        }
        let old_path = self.inner.dir.join(&row.path);
        let gone_or = |reason: &'static str, detail: String| {
            if old_path.exists() {
                RepackFailure::new(reason, detail)
            } else {
                RepackFailure::new("segment_gone", "the file was deleted (evicted?)")
            }
        };
        // An open descriptor keeps the old file readable even if retention
        // deletes it meanwhile (the swap then notices the row is gone).
        let mut old = File::open(&old_path).map_err(|e| gone_or("io", e.to_string()))?;
        let header = segment::read_header(&mut old).map_err(|e| gone_or("damaged", e))?;
        if header.version != segment::VERSION {
            return Ok(None);
        }
        if header.stream != row.stream {
            return Err(RepackFailure::new("mismatch", "the file holds another stream"));
        }
        let scan = segment::scan(&old_path, false).map_err(|e| gone_or("damaged", e))?;
        if scan.torn_tail || scan.corrupt.is_some() || scan.valid_len != scan.file_len {
            return Err(RepackFailure::new("damaged", "the file has bytes after its last block"));
        }
        let (new_path, temporary) = new_names(&old_path)
            .ok_or_else(|| RepackFailure::new("mismatch", "not a segment file name"))?;
        let dir = old_path.parent().expect("a segment has a directory").to_path_buf();
        let result = self.write_new(row, limits, &mut old, &header, &scan, &temporary);
        let writer = match result {
            Ok(writer) => writer,
            Err(failure) => {
                let _ = fs::remove_file(&temporary);
                return Err(failure);
            }
        };
        let blocks_before = scan.blocks.len() as u64;
        let outcome = |id, lock_held| Outcome {
            id,
            records: row.records,
            blocks_before,
            blocks_after: writer.blocks.len() as u64,
            bytes_before: scan.file_len,
            bytes_after: writer.len,
            lock_held,
        };
        if stop == Some(Stop::Written) {
            return Ok(Some(outcome(row.id, Default::default())));
        }
        // Step 2, under the state lock: nothing else moves the row meanwhile.
        let mut state = self.state();
        let locked = std::time::Instant::now();
        let current = match state.index.segments(Some(row.stream)) {
            Ok(rows) => rows.into_iter().find(|r| r.id == row.id),
            Err(e) => {
                drop(state);
                let _ = fs::remove_file(&temporary);
                return Err(RepackFailure::new("index", e));
            }
        };
        let unchanged = current
            .as_ref()
            .is_some_and(|c| c.path == row.path && c.state == "sealed" && c.records == row.records)
            && !state.open.values().any(|o| o.id == row.id);
        let behind = state.pending.iter().any(|p| p.segment == row.id);
        if !unchanged || behind {
            drop(state);
            let _ = fs::remove_file(&temporary);
            return Err(if behind {
                RepackFailure::new("index", "the index has not recorded all of its blocks yet")
            } else {
                RepackFailure::new("segment_gone", "the row changed or went (evicted?)")
            });
        }
        if let Err(e) = fs::rename(&temporary, &new_path).and_then(|()| sync_dir(&dir)) {
            drop(state);
            let _ = fs::remove_file(&temporary);
            let _ = fs::remove_file(&new_path);
            return Err(RepackFailure::io(e));
        }
        if stop == Some(Stop::Renamed) {
            return Ok(Some(outcome(row.id, locked.elapsed())));
        }
        let relative = self.relative(&new_path);
        let id = match state.index.replace_segment(row.id, &relative, writer.len) {
            Ok(id) => id,
            Err(e) => {
                // The index still names the old file: the new one goes
                // (start-up reconcile would remove it as a leftover too).
                drop(state);
                let _ = fs::remove_file(&new_path);
                let _ = sync_dir(&dir);
                return Err(RepackFailure::new("index", e));
            }
        };
        state.blocks.remove(&row.id);
        state.blocks.insert(id, writer.blocks.clone());
        drop(state);
        let lock_held = locked.elapsed();
        if stop == Some(Stop::Swapped) {
            return Ok(Some(outcome(id, lock_held)));
        }
        // Step 3: the old file. Should this fail, start-up removes it.
        drop(old);
        match fs::remove_file(&old_path).and_then(|()| sync_dir(&dir)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::error!(segment = %row.path, error = %e,
                    "cannot delete a re-packed segment's old file; start-up will");
            }
            _ => {}
        }
        Ok(Some(outcome(id, lock_held)))
    }

    /// Step 1: the new file under its temporary name, every block read
    /// back and compared, synced with its directory.
    fn write_new(
        &self,
        row: &SegmentRow,
        limits: &RepackLimits,
        old: &mut File,
        header: &segment::Header,
        scan: &segment::Scan,
        temporary: &Path,
    ) -> Result<Writer, RepackFailure> {
        let config = self.config();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(temporary)
            .map_err(RepackFailure::io)?;
        segment::write_header(
            &mut file,
            segment::VERSION,
            row.stream,
            header.codec,
            header.created,
        )
        .map_err(RepackFailure::io)?;
        let mut writer = Writer {
            file,
            stream: row.stream,
            codec: header.codec,
            level: level_for(header.codec, &config),
            len: segment::HEADER_LEN,
            blocks: Vec::new(),
        };
        let mut next = row.first_seq;
        let mut batch: Vec<StoredRecord> = Vec::with_capacity(limits.block_records.min(65_536));
        let mut batch_bytes = 0usize;
        for block in &scan.blocks {
            let records = segment::read_block(old, block, row.stream, header.codec)
                .map_err(|e| RepackFailure::new("damaged", e))?;
            if records.len() != block.records as usize {
                return Err(RepackFailure::new("damaged", "a block holds fewer records than said"));
            }
            for record in records {
                if record.seq != next {
                    return Err(RepackFailure::new(
                        "mismatch",
                        format!("record {} where {next} was due", record.seq),
                    ));
                }
                next += 1;
                batch_bytes +=
                    record.record.payload.len() + record.decoded.as_ref().map_or(0, |d| d.len());
                batch.push(record);
                if batch.len() >= limits.block_records || batch_bytes >= MAX_BLOCK_INPUT {
                    writer.put(&batch)?;
                    batch.clear();
                    batch_bytes = 0;
                }
            }
        }
        writer.put(&batch)?;
        let held = next - row.first_seq;
        if held != row.records || next as i64 - 1 != row.last_seq {
            return Err(RepackFailure::new(
                "mismatch",
                format!(
                    "the index says {} records up to {}, the file holds {held} up to {}",
                    row.records,
                    row.last_seq,
                    next as i64 - 1
                ),
            ));
        }
        writer.file.sync_all().map_err(RepackFailure::io)?;
        sync_dir(temporary.parent().expect("a directory")).map_err(RepackFailure::io)?;
        Ok(writer)
    }

    /// Start-up (under the state lock): removes what an interrupted
    /// re-pack left of its new file before the rename.
    pub(super) fn remove_repack_temporaries(&self) {
        for (_, path) in self.segment_dir_files() {
            if !path.to_str().is_some_and(|p| p.ends_with(TEMPORARY)) {
                continue;
            }
            tracing::warn!(file = %path.display(), reason = "repack_temporary",
                "removing the unfinished file of an interrupted re-pack");
            match fs::remove_file(&path) {
                Ok(()) => {
                    if let Some(day) = path.parent() {
                        let _ = sync_dir(day);
                    }
                    metrics::emit(metrics::StoreRepaired { what: "repack_temporary", count: 1 });
                }
                Err(e) => tracing::error!(file = %path.display(), error = %e,
                    "cannot remove an interrupted re-pack's file"),
            }
        }
    }

    /// Start-up: a segment file the index does not know whose records a
    /// sealed, indexed segment of the same stream (with its file there)
    /// already holds is what an interrupted re-pack left — its new file
    /// before the swap, or its old one after — and is removed, once the
    /// holder's every block passes its CRC (sealed segments are otherwise
    /// trusted at start-up). Should the holder not, the spare copy is moved
    /// to `quarantine/` instead: kept, not indexed twice. Returns whether
    /// the file went either way.
    pub(super) fn remove_if_repack_leftover(
        &self,
        state: &mut super::State,
        stream: Stream,
        path: &Path,
        scan: &segment::Scan,
    ) -> Result<bool, StoreError> {
        let index = &state.index;
        let (Some(first), Some(last)) = (scan.blocks.first(), scan.blocks.last()) else {
            return Ok(false);
        };
        let (first, last) = (first.first_seq, last.last_seq());
        let relative = self.relative(path);
        let holder = index.segments(Some(stream))?.into_iter().find(|r| {
            r.path != relative
                && r.state == "sealed"
                && r.records > 0
                && r.first_seq <= first
                && r.last_seq >= last as i64
                && self.inner.dir.join(&r.path).exists()
        });
        let Some(holder) = holder else { return Ok(false) };
        let sound = segment::scan(&self.inner.dir.join(&holder.path), true).is_ok_and(|h| {
            h.corrupt.is_none()
                && !h.torn_tail
                && h.blocks.first().is_some_and(|b| b.first_seq <= first)
                && h.blocks.last().is_some_and(|b| b.last_seq() >= last)
        });
        if !sound {
            let reason = format!("a spare copy of {}, which does not verify", holder.path);
            self.quarantine(state, path, None, &reason)?;
            return Ok(true);
        }
        tracing::warn!(segment = %relative, %stream, held_by = %holder.path,
            reason = "repack_leftover",
            "removing a segment file whose records an indexed segment holds (an interrupted re-pack)");
        fs::remove_file(path).map_err(StoreError::Io)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir).map_err(StoreError::Io)?;
        }
        metrics::emit(metrics::StoreRepaired { what: "repack_leftover", count: 1 });
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_names_count_generations() {
        let (new, tmp) =
            new_names(Path::new("/d/segments/syslog/20261129/00000000000000000100.seg")).unwrap();
        assert_eq!(new, Path::new("/d/segments/syslog/20261129/00000000000000000100.r1.seg"));
        assert_eq!(tmp, Path::new("/d/segments/syslog/20261129/00000000000000000100.r1.seg.tmp"));
        let (again, _) = new_names(&new).unwrap();
        assert_eq!(again, Path::new("/d/segments/syslog/20261129/00000000000000000100.r2.seg"));
        assert!(new_names(Path::new("/d/x.txt")).is_none());
    }

    #[test]
    fn only_segments_of_small_blocks_that_would_shrink_are_wanted() {
        let limits = RepackLimits {
            min_records_per_block: 100,
            block_records: 1000,
            max_segments: 1,
            max_bytes: 1,
            max_scans: 1,
            min_free_bytes: 0,
        };
        assert!(limits.wants(2000, 1000), "2 records per block");
        assert!(!limits.wants(200_000, 1000), "200 per block");
        assert!(!limits.wants(3, 1), "one block cannot get fewer");
        assert!(!limits.wants(1000, 1), "already re-packed");
        assert!(limits.wants(150, 3));
        let limits = RepackLimits { block_records: 60, ..limits };
        assert!(limits.wants(120, 3));
        assert!(!limits.wants(120, 2), "two blocks is what re-packing makes");
        assert!(!limits.wants(0, 0));
    }
}
