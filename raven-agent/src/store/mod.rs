//! Store: the appliance's two-week ring buffer on local disk.
//!
//! Invariants:
//! - The segment files are the truth; the SQLite index summarises them.
//! - Order of operations, always: (1) write a block and `fdatasync` the
//!   file, (2) update the index, (3) tell readers and waiting senders. A
//!   new segment's file and directory are fsynced before its row exists.
//!   Eviction deletes the row first and the file after. So the index never
//!   references data that is not durable, and a crash between two steps
//!   leaves at worst a file without a row (indexed again at start-up) or a
//!   row whose totals lag its file (recomputed at start-up).
//! - Re-packing a sealed segment ([`repack`]) writes its records anew under
//!   a temporary name, syncs it, renames it into place, swaps the index row
//!   in one transaction, and only then deletes the old file; start-up
//!   removes what an interrupted one left (a temporary, or whichever of the
//!   two files the index does not name).
//! - Appends hold the state lock only to number, write, sync and index a
//!   block (framing and compression happen before it); [`Store::read`]
//!   (the forwarders' read) only to look up rows and block lists and open
//!   files (decompression happens after it), so a forwarder draining a
//!   backlog does not hold up capture; range reads ([`RangeReader`]:
//!   replays, `segments cat`) likewise, one segment at a time.
//! - Records of a stream get dense, monotonic sequence numbers; an
//!   acknowledged append is never lost except by retention (counted).
//! - Damage never stops the store: a torn tail is truncated, a damaged
//!   segment is moved to `quarantine/`, a missing or corrupt index is
//!   rebuilt from the files; each is counted.
//! - A full disk evicts the oldest sealed segments and retries; if nothing
//!   can go, the append fails with [`StoreError::DiskFull`] (the caller
//!   counts the records) and the store reports itself degraded.
//!
//! Layout: `<data_dir>/raven.db` (+ `-wal`, `-shm`), segments in
//! `<data_dir>/segments/<stream>/<YYYYMMDD>/<first_seq:020>.seg`,
//! `<data_dir>/quarantine/`. The file format is in [`segment`] and
//! `docs/segment-format.md`.
//!
//! Operations: [`Store::append`] (durable when it returns), [`Store::read`]
//! (from a sequence number), [`Store::range`] (by time and exporter, a
//! segment at a time),
//! cursors, [`Store::cleanup`] (retention), [`Store::repack`] (small blocks
//! of sealed segments rewritten as large ones: [`repack`]),
//! [`Store::status`].

pub mod cli;
pub mod fields;
pub mod index;
pub mod load;
pub mod repack;
pub mod segment;

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use std::os::unix::fs::FileExt;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;

use self::{
    index::{Index, SegmentRow},
    segment::{BlockMeta, nanos},
};
use crate::{
    config::StoreConfig,
    metrics,
    record::{Record, Stream, rfc3339},
};

/// Attempts after the first when a write, sync or index update fails
/// (other than a full disk, which evicts instead); 40, 160, 640 ms apart.
const APPEND_RETRIES: u32 = 3;

/// Group commit settings.
#[derive(Clone, Copy, Debug)]
pub struct FlushPolicy {
    pub interval: Duration,
    pub max_records: usize,
}

/// A record handed to the store.
#[derive(Clone, Debug)]
pub struct NewRecord {
    pub record: Record,
    /// Decoded fields: the decoder's object, stored compact and read back
    /// as the JSON text `serde_json` writes for it ([`fields`]).
    pub decoded: Option<crate::decode::Fields>,
    pub parse_error: Option<String>,
}

/// A record read back, with its sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    pub record: Record,
    pub decoded: Option<Bytes>,
    pub parse_error: Option<String>,
}

/// How much one [`Store::read`] returns: at most `records` records and at
/// most `payload_bytes` of payload — but always the first record, so a
/// record larger than the byte limit still goes (alone) and never blocks
/// its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimit {
    pub records: usize,
    pub payload_bytes: u64,
}

impl From<usize> for ReadLimit {
    /// A limit on the count alone.
    fn from(records: usize) -> Self {
        ReadLimit { records, payload_bytes: u64::MAX }
    }
}

impl ReadLimit {
    /// How many of records of these payload lengths, in order, the limit
    /// takes.
    pub fn fitting(&self, payload_lens: impl IntoIterator<Item = usize>) -> usize {
        let mut bytes = 0u64;
        let mut taken = 0;
        for len in payload_lens.into_iter().take(self.records) {
            bytes = bytes.saturating_add(len as u64);
            if taken > 0 && bytes > self.payload_bytes {
                break;
            }
            taken += 1;
        }
        taken
    }

    /// A test of whether records read so far (only ever appended to) fill
    /// the limit, counting each record's payload once.
    fn filling(self) -> impl FnMut(&[StoredRecord]) -> bool {
        let (mut counted, mut bytes) = (0, 0u64);
        move |read: &[StoredRecord]| {
            for r in &read[counted..] {
                bytes = bytes.saturating_add(r.record.payload.len() as u64);
            }
            counted = read.len();
            read.len() >= self.records || bytes >= self.payload_bytes
        }
    }
}

/// Sequence numbers given to an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub first_seq: u64,
    pub last_seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O: {0}")]
    Io(io::Error),
    #[error("index: {0}")]
    Index(String),
    /// The index file is damaged or from a newer Raven: set aside and
    /// rebuilt from the segment files at start-up.
    #[error("index unusable: {0}")]
    IndexUnusable(String),
    #[error("damaged block at byte {offset}: {reason}")]
    Damaged { offset: u64, reason: String },
    #[error("disk full and nothing left to evict")]
    DiskFull,
    #[error("another process owns the store in {0} (a running raven-agent?)")]
    Busy(String),
    #[error("the store is open read-only")]
    ReadOnly,
}

/// What a cleanup removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Evicted {
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    /// Records no sink had acknowledged yet.
    pub unforwarded_records: u64,
}

/// One stream's share of the store.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StreamStatus {
    pub stream: String,
    pub records: u64,
    pub bytes: u64,
    pub segments: u64,
    /// RFC 3339, null when empty.
    pub oldest: Option<String>,
    pub newest: Option<String>,
    /// Bytes against the stream's quota (or the total quota, or the disk).
    pub fill_ratio: f64,
    /// What capture hands on now (last minute); filled in by the running
    /// agent's API, zero where the store is read offline.
    pub rate: crate::metrics::Rate,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StoreStatus {
    pub streams: Vec<StreamStatus>,
    pub disk_total_bytes: u64,
    pub disk_free_bytes: u64,
    /// `ok` or `degraded`.
    pub state: String,
    pub reasons: Vec<String>,
}

struct OpenSegment {
    id: i64,
    codec: segment::Codec,
    file: File,
    len: u64,
    created: SystemTime,
}

struct State {
    index: Index,
    open: BTreeMap<Stream, OpenSegment>,
    next_seq: BTreeMap<Stream, u64>,
    /// Block lists of segments read so far (sealed ones never change).
    blocks: HashMap<i64, Vec<BlockMeta>>,
    /// Why the store is degraded right now (disk full, write errors).
    degraded: BTreeMap<&'static str, String>,
    /// Durable blocks the index has not recorded yet (oldest first).
    pending: Vec<PendingBlock>,
}

impl State {
    fn new(index: Index) -> State {
        State {
            index,
            open: BTreeMap::new(),
            next_seq: BTreeMap::new(),
            blocks: HashMap::new(),
            degraded: BTreeMap::new(),
            pending: Vec::new(),
        }
    }
}

struct PendingBlock {
    segment: i64,
    last_seq: u64,
    records: u64,
    raw_bytes: u64,
    stored_bytes: u64,
    first_ts: u64,
    last_ts: u64,
    exporters: Vec<(IpAddr, u64, u64, u64)>,
}

/// How long [`Store::open`] waits for another holder of the writer lock.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// A file of [`RESERVE_BYTES`] given back when the disk is full.
const RESERVE: &str = "reserve";
const RESERVE_BYTES: u64 = 256 << 10;

struct Inner {
    dir: PathBuf,
    /// The writer's exclusive `flock` on `raven.lock` (None: read-only).
    _lock: Option<File>,
    config: Mutex<StoreConfig>,
    state: Mutex<State>,
    durable: watch::Sender<u64>,
    /// Re-pack passes: one at a time, and what they have looked at.
    repack: Mutex<repack::Memory>,
}

/// A handle on the store; clones share it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn io_error(e: io::Error) -> StoreError {
    StoreError::Io(e)
}

fn is_disk_full(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `statvfs` of the data directory: (total, free for unprivileged use).
pub fn disk_space(dir: &Path) -> (u64, u64) {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return (0, 0);
    };
    // SAFETY: statvfs writes into the zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return (0, 0);
    }
    let frsize = st.f_frsize as u64;
    (st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize)
}

/// Opens the index; a damaged one is set aside (never deleted: evidence)
/// and rebuilt from the files. Any other failure (an I/O error) is retried
/// and then reported: the index holds the sinks' cursors, so a transient
/// error must not make Raven throw it away.
fn open_index(dir: &Path, db_path: &Path) -> Result<Index, StoreError> {
    let mut attempt = 0;
    loop {
        match Index::open(db_path) {
            Ok(index) => return Ok(index),
            Err(StoreError::IndexUnusable(e)) => {
                let aside = dir.join(format!("raven.db.corrupt-{}", nanos(SystemTime::now())));
                tracing::error!(error = %e, aside = %aside.display(),
                    "the store index is unusable; rebuilding it from the segment files");
                for suffix in ["", "-wal", "-shm"] {
                    let from = PathBuf::from(format!("{}{suffix}", db_path.display()));
                    let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                    if from.exists() {
                        fs::rename(from, to).map_err(io_error)?;
                    }
                }
                metrics::emit(metrics::StoreRepaired { what: "index_rebuilt", count: 1 });
                return Index::open(db_path);
            }
            Err(e) if attempt < APPEND_RETRIES => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, reason = "index_open_retry",
                    "the store index cannot be opened; retrying");
                std::thread::sleep(Duration::from_millis(10 << (2 * attempt)));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Store {
    /// Opens the store in `config.data_dir`: creates what is missing,
    /// applies index migrations, and reconciles the index with the files.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let dir = PathBuf::from(&config.data_dir);
        fs::create_dir_all(dir.join("segments")).map_err(io_error)?;
        // One writer per store: reconcile truncates and moves files, which
        // must never happen under a running agent.
        let lock = File::create(dir.join("raven.lock")).map_err(io_error)?;
        // A lock can outlive its holder briefly: a process that forked
        // between our open and its exec holds a copy of the descriptor
        // until the exec closes it (O_CLOEXEC), and an agent restarted by
        // its supervisor may start while the old one is still exiting. So
        // wait a little before calling the store busy.
        let mut waited = Duration::ZERO;
        // SAFETY: flock on a descriptor we own.
        while unsafe {
            libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB)
        } != 0
        {
            if waited >= LOCK_WAIT {
                return Err(StoreError::Busy(dir.display().to_string()));
            }
            std::thread::sleep(Duration::from_millis(20));
            waited += Duration::from_millis(20);
        }
        let db_path = dir.join("raven.db");
        let index = open_index(&dir, &db_path)?;
        let (durable, _) = watch::channel(0);
        let store = Store {
            inner: Arc::new(Inner {
                dir,
                _lock: Some(lock),
                config: Mutex::new(config.clone()),
                state: Mutex::new(State::new(index)),
                durable,
                repack: Mutex::default(),
            }),
        };
        store.reconcile()?;
        store.ensure_reserve();
        Ok(store)
    }

    /// Opens a store for reading only: no reconcile, no lock, nothing
    /// written. Safe while an agent runs on it (readers see what the index
    /// says is durable).
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        let index = Index::open_read_only(&dir.join("raven.db"))?;
        let (durable, _) = watch::channel(0);
        let store = Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                _lock: None,
                config: Mutex::new(StoreConfig {
                    data_dir: dir.to_string_lossy().into_owned(),
                    ..StoreConfig::default()
                }),
                state: Mutex::new(State::new(index)),
                durable,
                repack: Mutex::default(),
            }),
        };
        Ok(store)
    }

    fn writable(&self) -> Result<(), StoreError> {
        if self.inner._lock.is_some() { Ok(()) } else { Err(StoreError::ReadOnly) }
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Takes a new retention/segment configuration (the data directory
    /// itself needs a restart).
    pub fn reconfigure(&self, config: &StoreConfig) {
        *self.inner.config.lock().expect("store config lock") = config.clone();
    }

    /// How long and how much the ingest stage gathers into one block
    /// (`store.flush_interval_ms`, `store.flush_max_records`; live).
    pub fn flush_policy(&self) -> FlushPolicy {
        let config = self.config();
        FlushPolicy {
            interval: Duration::from_millis(config.flush_interval_ms),
            max_records: config.flush_max_records,
        }
    }

    fn config(&self) -> StoreConfig {
        self.inner.config.lock().expect("store config lock").clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes on every durable append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.durable.subscribe()
    }

    /// The highest durable sequence number of the stream.
    pub fn durable_seq(&self, stream: Stream) -> Option<u64> {
        self.state().next_seq.get(&stream).and_then(|n| n.checked_sub(1))
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.inner.dir).unwrap_or(path).to_string_lossy().into_owned()
    }

    /// Brings the index in line with the files (see the module invariants).
    fn reconcile(&self) -> Result<(), StoreError> {
        let mut state = self.state();
        self.remove_repack_temporaries();
        let rows = state.index.segments(None)?;
        let mut known: HashMap<String, SegmentRow> =
            rows.into_iter().map(|r| (r.path.clone(), r)).collect();
        let mut on_disk: Vec<(Stream, PathBuf)> = self
            .segment_dir_files()
            .into_iter()
            .filter(|(_, path)| path.extension().is_some_and(|e| e == "seg"))
            .collect();
        on_disk.sort();
        for (stream, path) in on_disk {
            let relative = self.relative(&path);
            let row = known.remove(&relative);
            if let Some(row) = &row
                && row.state == "sealed"
            {
                continue; // sealed segments are trusted; `segments verify` checks them
            }
            let scan = match segment::scan(&path, true) {
                Ok(scan) => scan,
                Err(reason) => {
                    self.quarantine(&mut state, &path, row.as_ref(), &reason)?;
                    continue;
                }
            };
            if let Some(reason) = &scan.corrupt {
                self.quarantine(&mut state, &path, row.as_ref(), reason)?;
                continue;
            }
            if row.is_none() && self.remove_if_repack_leftover(&mut state, stream, &path, &scan)? {
                continue;
            }
            if scan.torn_tail || scan.valid_len < scan.file_len {
                tracing::warn!(segment = %relative, stream = %stream,
                    valid = scan.valid_len, length = scan.file_len,
                    reason = "torn_tail", "truncating an interrupted write");
                let file = OpenOptions::new().write(true).open(&path).map_err(io_error)?;
                file.set_len(scan.valid_len).map_err(io_error)?;
                file.sync_all().map_err(io_error)?;
                metrics::emit(metrics::StoreRepaired { what: "torn_tail", count: 1 });
            }
            let id = match &row {
                Some(row) => row.id,
                None => {
                    let first_seq = scan.blocks.first().map_or_else(
                        || {
                            path.file_stem()
                                .and_then(|s| s.to_str())
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0)
                        },
                        |b| b.first_seq,
                    );
                    tracing::warn!(segment = %relative, stream = %stream,
                        reason = "unindexed", "indexing a segment file the index did not know");
                    state
                        .index
                        .insert_segment(stream, &relative, first_seq, 0, "open", scan.codec)?
                }
            };
            let summary = self.summarise(&path, &scan, stream)?;
            let last_seq = scan.blocks.last().map_or_else(
                || row.as_ref().map_or(-1, |r| r.first_seq as i64 - 1),
                |b| b.last_seq() as i64,
            );
            state.index.replace_totals(
                id,
                last_seq,
                summary.records,
                summary.raw_bytes,
                scan.valid_len,
                summary.first_ts,
                summary.last_ts,
                &summary.exporters,
            )?;
            if scan.blocks.is_empty() {
                // Nothing durable in it (a crash right after creating it, or
                // a torn first block): its name would collide with the next
                // segment's. Row first, then the file.
                state.index.delete_segment(id)?;
                fs::remove_file(&path).map_err(io_error)?;
                continue;
            }
            // Appends always start a new segment after a restart, so every
            // segment found here is sealed now.
            state.index.set_state(id, "sealed")?;
        }
        for (path, row) in known {
            tracing::warn!(segment = %path, stream = %row.stream, reason = "file_missing",
                "dropping the index row of a segment file that is gone");
            state.index.delete_segment(row.id)?;
            metrics::emit(metrics::StoreRepaired { what: "row_without_file", count: 1 });
        }
        for row in state.index.segments(None)? {
            let next = (row.last_seq + 1).max(0) as u64;
            let entry = state.next_seq.entry(row.stream).or_insert(0);
            *entry = (*entry).max(next);
        }
        Ok(())
    }

    /// Every file in the segment directories
    /// (`segments/<stream>/<YYYYMMDD>/`), with its stream.
    fn segment_dir_files(&self) -> Vec<(Stream, PathBuf)> {
        let mut found = Vec::new();
        for stream in Stream::ALL {
            let root = self.inner.dir.join("segments").join(stream.name());
            let Ok(days) = fs::read_dir(&root) else { continue };
            for day in days.flatten() {
                let Ok(files) = fs::read_dir(day.path()) else { continue };
                found.extend(files.flatten().map(|file| (stream, file.path())));
            }
        }
        found
    }

    fn quarantine(
        &self,
        state: &mut State,
        path: &Path,
        row: Option<&SegmentRow>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let dir = self.inner.dir.join("quarantine");
        fs::create_dir_all(&dir).map_err(io_error)?;
        let name = self.relative(path).replace('/', "_");
        let target = dir.join(name);
        tracing::error!(segment = %path.display(), reason, quarantined = %target.display(),
            "damaged segment moved to quarantine; the rest of the store is served");
        if let Some(row) = row {
            state.index.delete_segment(row.id)?;
        }
        fs::rename(path, &target).map_err(io_error)?;
        metrics::emit(metrics::StoreRepaired { what: "quarantined", count: 1 });
        Ok(())
    }

    fn summarise(
        &self,
        path: &Path,
        scan: &segment::Scan,
        stream: Stream,
    ) -> Result<Summary, StoreError> {
        let mut summary = Summary::default();
        let mut file = File::open(path).map_err(io_error)?;
        for block in &scan.blocks {
            let records = segment::read_block(&mut file, block, stream, scan.codec)?;
            summary.add(records.iter().map(|r| &r.record));
        }
        Ok(summary)
    }

    /// Appends records of one stream as one block. Returns when they are
    /// durable (written, fdatasynced, indexed).
    pub fn append(&self, stream: Stream, records: Vec<NewRecord>) -> Result<Appended, StoreError> {
        self.writable()?;
        if records.is_empty() {
            let next = self.state().next_seq.get(&stream).copied().unwrap_or(0);
            return Ok(Appended { first_seq: next, last_seq: next.wrapping_sub(1) });
        }
        let config = self.config();
        // Framing and compression need no sequence numbers, so they happen
        // here, once, outside the state lock: appends of other streams and
        // readers are not held up by them, and a retry does not redo them.
        let block = segment::compress_block(&records, config.codec, config.compression_level)
            .map_err(io_error)?;
        let mut io_retries = 0;
        // A full disk: give back the reserve (so the index can record the
        // evictions), evict the oldest sealed segment, try again.
        for _ in 0..16 {
            match self.try_append(stream, &records, &block, &config) {
                // Any other write or sync failure (EIO, a short write): the
                // file was cut back to the block's offset, so a retry writes
                // the whole block again and syncs it — never just re-syncs,
                // since after a failed fsync the kernel may have dropped the
                // dirty pages and a second fsync can report success falsely
                // (the PostgreSQL "fsyncgate" lesson,
                // https://wiki.postgresql.org/wiki/Fsync_Errors).
                Err(e @ (StoreError::Io(_) | StoreError::Index(_)))
                    if io_retries < APPEND_RETRIES
                        && !matches!(&e, StoreError::Io(io) if is_disk_full(io)) =>
                {
                    io_retries += 1;
                    tracing::warn!(%stream, records = records.len(), error = %e,
                        attempt = io_retries, reason = "write_retry", "append failed; retrying");
                    std::thread::sleep(Duration::from_millis(10 << (2 * io_retries)));
                }
                Err(StoreError::Io(e)) if is_disk_full(&e) => {
                    tracing::warn!(%stream, records = records.len(), reason = "disk_full",
                        "disk full: evicting the oldest segment and retrying");
                    let _ = fs::remove_file(self.inner.dir.join(RESERVE));
                    if let Err(e) = self.state().index.checkpoint() {
                        tracing::warn!(error = %e, "index checkpoint failed");
                    }
                    let evicted = self.evict_oldest_for_space()?;
                    if evicted.segments == 0 {
                        self.state()
                            .degraded
                            .insert("disk_full", "disk full and nothing left to evict".into());
                        return Err(StoreError::DiskFull);
                    }
                }
                Ok(appended) => {
                    self.ensure_reserve();
                    return Ok(appended);
                }
                other => return other,
            }
        }
        self.state().degraded.insert("disk_full", "disk full after evicting".into());
        Err(StoreError::DiskFull)
    }

    /// Keeps [`RESERVE_BYTES`] set aside so that, on a full disk, the index
    /// still has room to record evictions.
    fn ensure_reserve(&self) {
        let path = self.inner.dir.join(RESERVE);
        if path.exists() {
            return;
        }
        let made = File::create(&path).and_then(|f| {
            f.set_len(0)?;
            let zeros = vec![0u8; RESERVE_BYTES as usize];
            (&f).write_all(&zeros)?;
            f.sync_all()
        });
        if made.is_err() {
            let _ = fs::remove_file(&path);
        }
    }

    /// Index updates that failed after their block was durable, retried in
    /// order before anything else touches the index.
    fn catch_up_index(state: &mut State) -> Result<(), StoreError> {
        while let Some(pending) = state.pending.first() {
            state.index.record_block(
                pending.segment,
                pending.last_seq,
                pending.records,
                pending.raw_bytes,
                pending.stored_bytes,
                pending.first_ts,
                pending.last_ts,
                &pending.exporters,
            )?;
            state.pending.remove(0);
        }
        state.degraded.remove("index_behind");
        Ok(())
    }

    fn try_append(
        &self,
        stream: Stream,
        records: &[NewRecord],
        compressed: &segment::CompressedBlock,
        config: &StoreConfig,
    ) -> Result<Appended, StoreError> {
        let mut state = self.state();
        if !state.pending.is_empty() {
            Self::catch_up_index(&mut state)?;
        }
        let now = SystemTime::now();
        let first_seq = state.next_seq.get(&stream).copied().unwrap_or(0);
        let block = compressed.seal(first_seq);
        let needs_new = match state.open.get(&stream) {
            None => true,
            Some(open) => {
                // A segment has one codec: a changed `store.codec` starts a new one.
                open.codec != config.codec
                    || open.len + block.len() as u64 > config.segment_max_bytes
                        && open.len > segment::HEADER_LEN
                    || now.duration_since(open.created).unwrap_or_default()
                        >= Duration::from_secs(config.segment_max_age_s)
            }
        };
        if needs_new {
            // Sealed in the index before it is let go: if recording that
            // fails, the append fails with the segment still open and the
            // retry seals it again. (Let go first, a failed update left the
            // segment "open" in the index for good, so retention skipped it
            // and evicted younger segments first.)
            if let Some(old) = state.open.get(&stream) {
                state.index.set_state(old.id, "sealed")?;
                state.open.remove(&stream);
            }
            let open = self.create_segment(&mut state, stream, first_seq, config.codec, now)?;
            state.open.insert(stream, open);
        }
        let open = state.open.get_mut(&stream).expect("an open segment");
        let offset = open.len;
        // Positional write: after a failed (short) write the file is cut
        // back to `offset`, and the retry must land there, not at wherever
        // a cursor was left.
        let written = open.file.write_all_at(&block, offset).and_then(|()| open.file.sync_data());
        if let Err(e) = written {
            // Leave the file as it was: a partial block must not precede the
            // retry's block.
            let _ = open.file.set_len(offset);
            let failure = if is_disk_full(&e) { "disk_full" } else { "write" };
            metrics::emit(metrics::StoreWriteFailed { stream, reason: failure });
            state.degraded.insert("write_failed", format!("{stream}: {e}"));
            return Err(StoreError::Io(e));
        }
        open.len += block.len() as u64;
        let (id, len) = (open.id, open.len);
        let last_seq = first_seq + records.len() as u64 - 1;
        let mut summary = Summary::default();
        summary.add(records.iter().map(|r| &r.record));
        // The block is durable: the append stands even if the index cannot
        // record it now (a full disk); the update waits in `pending`, is
        // retried first thing on the next write, and start-up reconcile
        // rescans the segment anyway.
        state.pending.push(PendingBlock {
            segment: id,
            last_seq,
            records: records.len() as u64,
            raw_bytes: summary.raw_bytes,
            stored_bytes: len,
            first_ts: summary.first_ts.unwrap_or(0),
            last_ts: summary.last_ts.unwrap_or(0),
            exporters: summary.exporters,
        });
        if let Err(e) = Self::catch_up_index(&mut state) {
            tracing::warn!(%stream, error = %e, reason = "index_behind",
                "the index could not record a durable block yet; will retry");
            state.degraded.insert("index_behind", e.to_string());
        }
        state.blocks.entry(id).or_default().push(BlockMeta {
            offset,
            len: (block.len() as u64 - segment::BLOCK_HEADER_LEN) as u32,
            first_seq,
            records: records.len() as u32,
            version: segment::VERSION,
        });
        state.next_seq.insert(stream, last_seq + 1);
        state.degraded.remove("write_failed");
        state.degraded.remove("disk_full");
        drop(state);
        self.inner.durable.send_modify(|n| *n = n.wrapping_add(1));
        let durable_at = SystemTime::now();
        metrics::emit(metrics::StoreAppended {
            stream,
            records: records.len() as u64,
            raw_bytes: compressed.frame_len as u64,
            stored_bytes: block.len() as u64,
            latencies: records
                .iter()
                .map(|r| durable_at.duration_since(r.record.captured_at).unwrap_or_default()),
        });
        Ok(Appended { first_seq, last_seq })
    }

    fn create_segment(
        &self,
        state: &mut State,
        stream: Stream,
        first_seq: u64,
        codec: segment::Codec,
        now: SystemTime,
    ) -> Result<OpenSegment, StoreError> {
        let day = time::OffsetDateTime::from(now);
        let dir = self.inner.dir.join("segments").join(stream.name()).join(format!(
            "{:04}{:02}{:02}",
            day.year(),
            day.month() as u8,
            day.day()
        ));
        fs::create_dir_all(&dir).map_err(io_error)?;
        let path = dir.join(format!("{first_seq:020}.seg"));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&path)
            .map_err(io_error)?;
        segment::write_header(&mut file, segment::VERSION, stream, codec, now).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        sync_dir(&dir).map_err(io_error)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent).map_err(io_error)?;
        }
        let relative = self.relative(&path);
        let id =
            state.index.insert_segment(stream, &relative, first_seq, nanos(now), "open", codec)?;
        Ok(OpenSegment { id, codec, file, len: segment::HEADER_LEN, created: now })
    }

    fn blocks_of(&self, state: &mut State, row: &SegmentRow) -> Result<Vec<BlockMeta>, StoreError> {
        if let Some(blocks) = state.blocks.get(&row.id) {
            return Ok(blocks.clone());
        }
        let path = self.inner.dir.join(&row.path);
        let scan = segment::scan(&path, false).map_err(|reason| {
            if path.exists() {
                StoreError::Damaged { offset: 0, reason }
            } else {
                StoreError::Io(io::Error::new(io::ErrorKind::NotFound, reason))
            }
        })?;
        state.blocks.insert(row.id, scan.blocks.clone());
        Ok(scan.blocks)
    }

    /// Records of `stream` with `seq >= from_seq`, in order, within
    /// `limit`. Blocks are decompressed only until the limit is reached:
    /// a byte-limited read of large records (a forwarder's batch of flow
    /// datagrams) does not decompress the records it will not return.
    pub fn read(
        &self,
        stream: Stream,
        from_seq: u64,
        limit: impl Into<ReadLimit>,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let limit = limit.into();
        retry_vanished(|| self.read_once(stream, from_seq, limit))
    }

    fn read_once(
        &self,
        stream: Stream,
        from_seq: u64,
        limit: ReadLimit,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let mut out = Vec::new();
        let mut from = from_seq;
        let mut filled = limit.filling();
        // Rounds only repeat when damaged blocks were skipped and the
        // records planned did not fill the limit.
        while !filled(&out) {
            let plan = self.plan_read(stream, from, limit.records - out.len())?;
            let Some(last) = plan.iter().rev().find_map(|p| p.blocks.last()).map(|b| b.last_seq())
            else {
                break;
            };
            for planned in plan {
                planned.read(stream, |r| r.seq >= from, &mut out, &mut filled);
            }
            from = last + 1;
        }
        out.truncate(limit.fitting(out.iter().map(|r| r.record.payload.len())));
        Ok(out)
    }

    /// Under the state lock, only briefly: the blocks that hold about
    /// `max` records from `from_seq` on, with their files opened. Reading
    /// and decompressing them happens after the lock is released, so
    /// appends are not held up by readers (a forwarder draining a backlog).
    /// An open file stays readable if retention or a re-pack deletes it
    /// meanwhile, and blocks are durable before they are listed, so what
    /// was planned is what is read.
    fn plan_read(
        &self,
        stream: Stream,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<PlannedFile>, StoreError> {
        let mut state = self.state();
        let rows: Vec<SegmentRow> = state
            .index
            .segments(Some(stream))?
            .into_iter()
            .filter(|r| r.records > 0 && r.last_seq >= from_seq as i64)
            .collect();
        let mut plan = Vec::new();
        let mut planned = 0u64;
        for row in rows {
            let file = File::open(self.inner.dir.join(&row.path)).map_err(io_error)?;
            let mut blocks = Vec::new();
            for block in self.blocks_of(&mut state, &row)? {
                if block.last_seq() < from_seq {
                    continue;
                }
                planned += block.last_seq() + 1 - block.first_seq.max(from_seq);
                blocks.push(block);
                if planned >= max as u64 {
                    break;
                }
            }
            plan.push(PlannedFile { path: row.path.clone(), file, codec: codec_of(&row)?, blocks });
            if planned >= max as u64 {
                break;
            }
        }
        Ok(plan)
    }

    /// [`Store::range`]'s records all at once (tests).
    #[cfg(test)]
    pub fn read_range(
        &self,
        stream: Option<Stream>,
        from: SystemTime,
        to: SystemTime,
        exporter: Option<IpAddr>,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let mut reader = self.range(stream, from, to, exporter)?;
        let mut out = Vec::new();
        while let Some(batch) = reader.next_segment()? {
            out.extend(batch);
        }
        Ok(out)
    }

    /// Records captured between `from` and `to` (inclusive), optionally of
    /// one stream and one exporter, by stream in sequence order, read one
    /// segment at a time ([`RangeReader`]).
    pub fn range(
        &self,
        stream: Option<Stream>,
        from: SystemTime,
        to: SystemTime,
        exporter: Option<IpAddr>,
    ) -> Result<RangeReader<'_>, StoreError> {
        let mut reader = RangeReader {
            store: self,
            stream,
            from_ns: nanos(from),
            to_ns: nanos(to),
            exporter,
            rows: Default::default(),
            next_seq: HashMap::new(),
            relisted: 0,
        };
        reader.list()?;
        Ok(reader)
    }

    /// One segment's records in `[from_ns, to_ns]` (of `exporter`): under
    /// the lock only to open the file and take its block list, decompressed
    /// after it.
    fn read_segment_range(
        &self,
        row: &SegmentRow,
        (from_ns, to_ns): (u64, u64),
        exporter: Option<IpAddr>,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let planned = {
            let mut state = self.state();
            let file = File::open(self.inner.dir.join(&row.path)).map_err(io_error)?;
            let blocks = self.blocks_of(&mut state, row)?;
            PlannedFile { path: row.path.clone(), file, codec: codec_of(row)?, blocks }
        };
        let mut out = Vec::new();
        planned.read(
            row.stream,
            |r| {
                let t = nanos(r.record.captured_at);
                t >= from_ns && t <= to_ns && exporter.is_none_or(|ip| r.record.src.ip() == ip)
            },
            &mut out,
            &mut |_| false,
        );
        Ok(out)
    }

    pub fn cursor(&self, sink: &str, stream: Stream) -> Result<Option<u64>, StoreError> {
        self.state().index.cursor(sink, stream)
    }

    /// Moves a sink's cursor forward (never back).
    pub fn set_cursor(&self, sink: &str, stream: Stream, seq: u64) -> Result<(), StoreError> {
        self.state().index.set_cursor(sink, stream, seq, nanos(SystemTime::now()))
    }

    /// A UDP relay sink's persisted state (JSON), if any.
    pub fn relay_state(&self, sink: &str) -> Result<Option<String>, StoreError> {
        self.state().index.relay_state(sink)
    }

    /// Every relay sink's persisted state: (sink, JSON).
    pub fn relay_states(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.state().index.relay_states()
    }

    pub fn set_relay_state(&self, sink: &str, json: &str) -> Result<(), StoreError> {
        self.state().index.set_relay_state(sink, json, nanos(SystemTime::now()))
    }

    pub fn record_config(&self, json: &str) -> Result<(), StoreError> {
        self.state().index.record_config(json, nanos(SystemTime::now()))
    }

    pub fn segments(&self, stream: Option<Stream>) -> Result<Vec<SegmentRow>, StoreError> {
        self.state().index.segments(stream)
    }

    /// Per exporter of `stream`: the records the store holds.
    pub fn exporters(&self, stream: Stream) -> Result<Vec<index::StoredExporter>, StoreError> {
        self.state().index.exporters(stream)
    }

    /// Retention: age, per-stream quota, total quota, free-disk watermark.
    pub fn cleanup(&self, now: SystemTime) -> Result<Evicted, StoreError> {
        self.writable()?;
        let config = self.config();
        let mut total = Evicted::default();
        let max_age = Duration::from_secs(config.max_age_days * 86_400);
        let cutoff = nanos(now.checked_sub(max_age).unwrap_or(SystemTime::UNIX_EPOCH));
        // Age first: everything entirely older than the cutoff.
        for row in self.evictable()? {
            if row.last_ts.is_some_and(|t| t < cutoff) {
                self.evict(&row, "max_age", &mut total)?;
            }
        }
        // Per-stream quota.
        if config.stream_quota_bytes > 0 {
            for stream in Stream::ALL {
                let mut rows = self.evictable()?;
                rows.retain(|r| r.stream == stream);
                let mut used: u64 =
                    self.segments(Some(stream))?.iter().map(|r| r.stored_bytes).sum();
                for row in rows {
                    if used <= config.stream_quota_bytes {
                        break;
                    }
                    used = used.saturating_sub(row.stored_bytes);
                    self.evict(&row, "stream_quota", &mut total)?;
                }
            }
        }
        if config.total_quota_bytes > 0 {
            let mut used: u64 = self.segments(None)?.iter().map(|r| r.stored_bytes).sum();
            for row in self.evictable()? {
                if used <= config.total_quota_bytes {
                    break;
                }
                used = used.saturating_sub(row.stored_bytes);
                self.evict(&row, "total_quota", &mut total)?;
            }
        }
        for row in self.evictable()? {
            let (_, free) = disk_space(&self.inner.dir);
            if free >= config.min_free_bytes {
                break;
            }
            self.evict(&row, "min_free", &mut total)?;
        }
        self.sample_metrics();
        Ok(total)
    }

    /// Publishes sizes per stream, fill ratios and the disk's free space.
    pub fn sample_metrics(&self) {
        let (disk_total, disk_free) = disk_space(&self.inner.dir);
        let config = self.config();
        match (self.segments(None), self.status()) {
            (Ok(segments), Ok(status)) => {
                let fill: Vec<(Stream, f64)> = status
                    .streams
                    .iter()
                    .filter_map(|s| Some((s.stream.parse().ok()?, s.fill_ratio)))
                    .collect();
                metrics::emit(metrics::StoreSampled {
                    disk_total,
                    disk_free,
                    segments: &segments,
                    fill: &fill,
                    retention_seconds: config.max_age_days * 86_400,
                })
            }
            (Err(e), _) | (_, Err(e)) => tracing::error!(error = %e, "cannot read the store index"),
        }
    }

    /// Sealed segments, oldest (by last record) first.
    fn evictable(&self) -> Result<Vec<SegmentRow>, StoreError> {
        let mut rows: Vec<SegmentRow> =
            self.segments(None)?.into_iter().filter(|r| r.state == "sealed").collect();
        rows.sort_by_key(|r| (r.last_ts.unwrap_or(0), r.id));
        Ok(rows)
    }

    fn evict_oldest_for_space(&self) -> Result<Evicted, StoreError> {
        let mut total = Evicted::default();
        if let Some(row) = self.evictable()?.into_iter().next() {
            self.evict(&row, "disk_full", &mut total)?;
        }
        Ok(total)
    }

    fn evict(
        &self,
        row: &SegmentRow,
        reason: &'static str,
        total: &mut Evicted,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        let acknowledged = state.index.min_cursor(row.stream)?.unwrap_or(-1);
        let unforwarded = if row.last_seq > acknowledged {
            (row.last_seq - acknowledged.max(row.first_seq as i64 - 1)) as u64
        } else {
            0
        };
        // Row first, file second: the index never points at a missing file.
        let path = self.inner.dir.join(&row.path);
        let remove_file = || match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::error!(segment = %row.path, error = %e,
                    "cannot delete an evicted segment");
            }
            _ => {}
        };
        match state.index.delete_segment(row.id) {
            Ok(()) => remove_file(),
            Err(StoreError::Io(e)) if is_disk_full(&e) => {
                // The index has no room to record the eviction: free the
                // file's space first. Readers cannot see the gap (they take
                // the same lock); a crash here leaves a row without a file,
                // which start-up reconcile drops.
                remove_file();
                state.index.delete_segment(row.id)?;
            }
            Err(e) => return Err(e),
        }
        state.blocks.remove(&row.id);
        drop(state);
        total.segments += 1;
        total.records += row.records;
        total.bytes += row.stored_bytes;
        total.unforwarded_records += unforwarded;
        metrics::emit(metrics::StoreEvicted {
            stream: row.stream,
            reason,
            records: row.records,
            unforwarded,
        });
        Ok(())
    }

    pub fn status(&self) -> Result<StoreStatus, StoreError> {
        let config = self.config();
        let rows = self.segments(None)?;
        let (disk_total, disk_free) = disk_space(&self.inner.dir);
        let streams = Stream::ALL
            .iter()
            .map(|&stream| {
                let mine: Vec<&SegmentRow> = rows.iter().filter(|r| r.stream == stream).collect();
                let bytes: u64 = mine.iter().map(|r| r.stored_bytes).sum();
                let quota = if config.stream_quota_bytes > 0 {
                    config.stream_quota_bytes
                } else if config.total_quota_bytes > 0 {
                    config.total_quota_bytes
                } else {
                    disk_total.saturating_sub(config.min_free_bytes).max(1)
                };
                StreamStatus {
                    stream: stream.name().to_string(),
                    records: mine.iter().map(|r| r.records).sum(),
                    bytes,
                    segments: mine.len() as u64,
                    oldest: mine
                        .iter()
                        .filter_map(|r| r.first_ts)
                        .min()
                        .map(|ns| rfc3339(segment::from_nanos(ns))),
                    newest: mine
                        .iter()
                        .filter_map(|r| r.last_ts)
                        .max()
                        .map(|ns| rfc3339(segment::from_nanos(ns))),
                    fill_ratio: bytes as f64 / quota as f64,
                    rate: Default::default(),
                }
            })
            .collect();
        let mut reasons: Vec<String> = self.state().degraded.values().cloned().collect();
        if disk_free < config.min_free_bytes {
            reasons.push(format!("disk free {disk_free} bytes is below store.min_free_bytes"));
        }
        Ok(StoreStatus {
            streams,
            disk_total_bytes: disk_total,
            disk_free_bytes: disk_free,
            state: if reasons.is_empty() { "ok" } else { "degraded" }.to_string(),
            reasons,
        })
    }
}

/// A segment file a read will take blocks from (see [`Store::plan_read`]).
struct PlannedFile {
    path: String,
    file: File,
    codec: segment::Codec,
    blocks: Vec<BlockMeta>,
}

impl PlannedFile {
    /// Decompresses the blocks (no lock held) and appends the records
    /// `keep` wants, until `filled` says `out` has enough. One bad block
    /// must not stall a reader: it is skipped, loudly and counted;
    /// `segments verify` finds it too.
    fn read(
        mut self,
        stream: Stream,
        keep: impl Fn(&StoredRecord) -> bool,
        out: &mut Vec<StoredRecord>,
        filled: &mut impl FnMut(&[StoredRecord]) -> bool,
    ) {
        for block in &self.blocks {
            if filled(out) {
                return;
            }
            match segment::read_block(&mut self.file, block, stream, self.codec) {
                Ok(records) => out.extend(records.into_iter().filter(|r| keep(r))),
                Err(e) => {
                    tracing::error!(segment = %self.path, %stream, error = %e,
                        reason = "damaged_block", "skipping a damaged block");
                    metrics::emit(metrics::StoreRepaired {
                        what: "damaged_block_skipped",
                        count: 1,
                    });
                }
            }
        }
    }
}

/// A time range of stored records read one segment at a time: each
/// [`RangeReader::next_segment`] is one segment's records in the range, so
/// a replay holds a segment's worth, not the range's, and takes the state
/// lock per segment, only to open it (appends go on meanwhile).
///
/// Segments come by stream, oldest first, and are read whole, so the
/// sequence number after the last segment read, per stream, marks where
/// the range resumes: a segment re-packed or evicted between the look-up
/// and its open (its file gone) makes the reader look the rest of the
/// range up again and go on from that mark — nothing handed out twice,
/// nothing still stored skipped. It gives up after [`MAX_RELISTS`]
/// look-ups.
pub struct RangeReader<'a> {
    store: &'a Store,
    stream: Option<Stream>,
    from_ns: u64,
    to_ns: u64,
    exporter: Option<IpAddr>,
    rows: std::collections::VecDeque<SegmentRow>,
    /// Per stream, the sequence number after the last segment read.
    next_seq: HashMap<Stream, u64>,
    relisted: u32,
}

/// Look-ups of a range's rest after a segment vanished under the reader.
const MAX_RELISTS: u32 = 8;

impl RangeReader<'_> {
    /// The range's segments not yet read.
    fn list(&mut self) -> Result<(), StoreError> {
        let rows = self.store.state().index.segments_for_range(
            self.stream,
            self.from_ns,
            self.to_ns,
            self.exporter,
        )?;
        let next_seq = &self.next_seq;
        self.rows = rows
            .into_iter()
            .filter(|r| next_seq.get(&r.stream).is_none_or(|&next| r.last_seq as u64 >= next))
            .collect();
        Ok(())
    }

    /// The next segment's records in the range (segments with none are
    /// passed over); `None` once the range is read.
    pub fn next_segment(&mut self) -> Result<Option<Vec<StoredRecord>>, StoreError> {
        while let Some(row) = self.rows.pop_front() {
            let range = (self.from_ns, self.to_ns);
            let mut records = match self.store.read_segment_range(&row, range, self.exporter) {
                Ok(records) => records,
                Err(StoreError::Io(e))
                    if e.kind() == io::ErrorKind::NotFound && self.relisted < MAX_RELISTS =>
                {
                    self.relisted += 1;
                    self.list()?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let next = self.next_seq.entry(row.stream).or_default();
            // A segment read before comes again after a look-up if records
            // were appended to it since (the open one): not what it gave.
            records.retain(|r| r.seq >= *next);
            // The segment is read: nothing of it is needed again, matched
            // or not (records appended to it since the look-up included).
            let read_to = records.last().map_or(row.last_seq as u64, |r| r.seq);
            *next = (*next).max(read_to + 1);
            if records.is_empty() {
                continue;
            }
            return Ok(Some(records));
        }
        Ok(None)
    }
}

/// A read that found a segment file gone — a re-pack replaced it (see
/// [`repack`]) between the reader's look at the index and its open, which
/// only a read-only process can see — starts over: the index names the new
/// file by then. Each attempt reads afresh, so nothing is repeated.
fn retry_vanished<T>(mut read: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let mut attempt = 0;
    loop {
        match read() {
            Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::NotFound && attempt < 3 => {
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn codec_of(row: &SegmentRow) -> Result<segment::Codec, StoreError> {
    row.codec.parse().map_err(|reason| StoreError::Damaged { offset: 0, reason })
}

/// Totals of a set of records, for the index.
#[derive(Default)]
struct Summary {
    records: u64,
    raw_bytes: u64,
    first_ts: Option<u64>,
    last_ts: Option<u64>,
    /// (exporter, records, first ts, last ts)
    exporters: Vec<(IpAddr, u64, u64, u64)>,
}

impl Summary {
    fn add<'a>(&mut self, records: impl Iterator<Item = &'a Record>) {
        let mut exporters: BTreeMap<IpAddr, (u64, u64, u64)> =
            self.exporters.drain(..).map(|(ip, n, f, l)| (ip, (n, f, l))).collect();
        for r in records {
            let t = nanos(r.captured_at);
            self.records += 1;
            self.raw_bytes += r.payload.len() as u64;
            self.first_ts = Some(self.first_ts.map_or(t, |f| f.min(t)));
            self.last_ts = Some(self.last_ts.map_or(t, |l| l.max(t)));
            let e = exporters.entry(r.src.ip()).or_insert((0, t, t));
            e.0 += 1;
            e.1 = e.1.min(t);
            e.2 = e.2.max(t);
        }
        self.exporters = exporters.into_iter().map(|(ip, (n, f, l))| (ip, n, f, l)).collect();
    }
}

#[cfg(test)]
mod tests;
