//! The SQLite index beside the segment files.
//!
//! Invariants:
//! - The index is a summary of the files, never the other way round: one
//!   row per segment (and per exporter per segment), never one per record.
//!   Anything in it can be rebuilt from the files, except what only lives
//!   here (sink cursors, configuration history, persistent counters).
//! - A row only ever describes bytes already `fdatasync`ed into the file.
//! - Migrations are applied in order, each in a transaction, and recorded in
//!   `schema_version`; a database from a newer Raven is refused, not changed.
//!
//! WAL mode with `synchronous = NORMAL`: a power cut may lose the last
//! transactions of the index but never corrupts it. That is safe here
//! because the files are fsynced before the index is updated, and start-up
//! reconcile rescans the open segments and re-derives what a lost
//! transaction said. Cursors are the exception worth noting: losing the
//! last cursor update re-sends a few records (at-least-once), never skips.

use std::{net::IpAddr, path::Path};

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use crate::record::Stream;

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE segments (
        id INTEGER PRIMARY KEY,
        stream TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,        -- first_seq - 1 while empty
        first_ts INTEGER,                 -- ns since the epoch
        last_ts INTEGER,
        records INTEGER NOT NULL,
        raw_bytes INTEGER NOT NULL,
        stored_bytes INTEGER NOT NULL,    -- file length
        codec TEXT NOT NULL,
        state TEXT NOT NULL,              -- open | sealed
        created INTEGER NOT NULL
     );
     CREATE INDEX segments_by_stream ON segments (stream, first_seq);
     CREATE TABLE segment_exporters (
        segment_id INTEGER NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
        exporter TEXT NOT NULL,
        records INTEGER NOT NULL,
        first_ts INTEGER NOT NULL,
        last_ts INTEGER NOT NULL,
        PRIMARY KEY (segment_id, exporter)
     );
     CREATE TABLE cursors (
        sink TEXT NOT NULL,
        stream TEXT NOT NULL,
        seq INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        PRIMARY KEY (sink, stream)
     );
     CREATE TABLE config_history (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, json TEXT NOT NULL);
     CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    // 2: the NetFlow v9 / IPFIX template journal (decode::templates).
    "CREATE TABLE templates (
        scope TEXT NOT NULL,              -- netflow_parser's per-exporter scope
        kind TEXT NOT NULL,
        template_id INTEGER NOT NULL,
        value BLOB NOT NULL,              -- the parser's own encoding
        updated INTEGER NOT NULL,         -- unix seconds
        PRIMARY KEY (scope, kind, template_id)
     );",
    // 3: what a UDP relay sink remembers (forward::udp_relay::RelayState).
    "CREATE TABLE relay_state (
        sink TEXT PRIMARY KEY,
        state TEXT NOT NULL,              -- JSON
        updated INTEGER NOT NULL
     );",
];

/// What the store holds of one exporter (summed over its segments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredExporter {
    pub exporter: IpAddr,
    pub records: u64,
    pub first_ts: u64,
    pub last_ts: u64,
}

/// One segment's row.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SegmentRow {
    pub id: i64,
    #[schema(value_type = String)]
    pub stream: Stream,
    pub path: String,
    pub first_seq: u64,
    /// `first_seq - 1` while the segment is empty.
    pub last_seq: i64,
    pub first_ts: Option<u64>,
    pub last_ts: Option<u64>,
    pub records: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub codec: String,
    pub state: String,
}

pub struct Index {
    db: Connection,
}

fn db_error(e: rusqlite::Error) -> StoreError {
    // SQLite's "database or disk is full" is the store's disk-full case:
    // the caller evicts and retries, as for a segment write.
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return StoreError::Io(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            StoreError::IndexUnusable(e.to_string())
        }
        _ => StoreError::Index(e.to_string()),
    }
}

impl Index {
    /// Opens (or creates) the index and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Index, StoreError> {
        let db = Connection::open(path).map_err(db_error)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
             PRAGMA journal_size_limit = 4194304; PRAGMA wal_autocheckpoint = 256;",
        )
        .map_err(db_error)?;
        let check: String =
            db.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(db_error)?;
        if check != "ok" {
            return Err(StoreError::IndexUnusable(format!("integrity check: {check}")));
        }
        let mut index = Index { db };
        index.migrate()?;
        Ok(index)
    }

    /// Opens an existing index for reading only (inspection while an agent
    /// owns the store): no pragmas that write, no migrations.
    pub fn open_read_only(path: &Path) -> Result<Index, StoreError> {
        use rusqlite::OpenFlags;
        let db = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_error)?;
        Ok(Index { db })
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        self.db
            .execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", [])
            .map_err(db_error)?;
        let version: i64 = self
            .db
            .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| r.get(0))
            .map_err(db_error)?;
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::Index(format!(
                "index schema {version} is newer than this Raven ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.db.transaction().map_err(db_error)?;
            tx.execute_batch(sql).map_err(db_error)?;
            tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [i as i64 + 1])
                .map_err(db_error)?;
            tx.commit().map_err(db_error)?;
        }
        Ok(())
    }

    /// Moves the WAL into the database and truncates it: on a full disk
    /// the WAL is often what holds the space.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").map_err(db_error)
    }

    pub fn segments(&self, stream: Option<Stream>) -> Result<Vec<SegmentRow>, StoreError> {
        let mut stmt = self
            .db
            .prepare_cached(
                "SELECT id, stream, path, first_seq, last_seq, first_ts, last_ts, records,
                        raw_bytes, stored_bytes, codec, state
                 FROM segments WHERE (?1 IS NULL OR stream = ?1)
                 ORDER BY stream, first_seq",
            )
            .map_err(db_error)?;
        let rows = stmt
            .query_map([stream.map(|s| s.name())], |r| {
                let stream: String = r.get(1)?;
                Ok(SegmentRow {
                    id: r.get(0)?,
                    stream: stream.parse().unwrap_or(Stream::Syslog),
                    path: r.get(2)?,
                    first_seq: r.get::<_, i64>(3)? as u64,
                    last_seq: r.get(4)?,
                    first_ts: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                    last_ts: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                    records: r.get::<_, i64>(7)? as u64,
                    raw_bytes: r.get::<_, i64>(8)? as u64,
                    stored_bytes: r.get::<_, i64>(9)? as u64,
                    codec: r.get(10)?,
                    state: r.get(11)?,
                })
            })
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }

    /// Per exporter of `stream`, what the store holds now: records, first
    /// and last capture time (ns). One row per exporter per segment is
    /// summed, so this is cheap however many records there are.
    pub fn exporters(&self, stream: Stream) -> Result<Vec<StoredExporter>, StoreError> {
        let mut stmt = self
            .db
            .prepare_cached(
                "SELECT e.exporter, SUM(e.records), MIN(e.first_ts), MAX(e.last_ts)
                 FROM segment_exporters e JOIN segments s ON s.id = e.segment_id
                 WHERE s.stream = ?1 GROUP BY e.exporter",
            )
            .map_err(db_error)?;
        let rows = stmt
            .query_map([stream.name()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(db_error)?;
        let mut out = Vec::new();
        for row in rows {
            let (exporter, records, first, last) = row.map_err(db_error)?;
            // Rows are written from `IpAddr::to_string`; anything else is
            // not ours and is skipped rather than failing the whole answer.
            if let Ok(exporter) = exporter.parse() {
                out.push(StoredExporter {
                    exporter,
                    records: records as u64,
                    first_ts: first as u64,
                    last_ts: last as u64,
                });
            }
        }
        Ok(out)
    }

    /// Segments of `stream` that may hold records of `exporter` between the
    /// two times (ns), oldest first.
    pub fn segments_for_range(
        &self,
        stream: Option<Stream>,
        from: u64,
        to: u64,
        exporter: Option<IpAddr>,
    ) -> Result<Vec<SegmentRow>, StoreError> {
        let ids: Vec<i64> = match exporter {
            None => Vec::new(),
            Some(ip) => {
                let mut stmt = self
                    .db
                    .prepare_cached(
                        "SELECT segment_id FROM segment_exporters
                         WHERE exporter = ?1 AND last_ts >= ?2 AND first_ts <= ?3",
                    )
                    .map_err(db_error)?;
                let ids = stmt
                    .query_map(params![ip.to_string(), from as i64, to as i64], |r| r.get(0))
                    .map_err(db_error)?;
                ids.collect::<Result<_, _>>().map_err(db_error)?
            }
        };
        Ok(self
            .segments(stream)?
            .into_iter()
            .filter(|s| {
                s.records > 0
                    && s.last_ts.is_some_and(|t| t >= from)
                    && s.first_ts.is_some_and(|t| t <= to)
                    && (exporter.is_none() || ids.contains(&s.id))
            })
            .collect())
    }

    pub fn insert_segment(
        &self,
        stream: Stream,
        path: &str,
        first_seq: u64,
        created: u64,
        state: &str,
        codec: super::segment::Codec,
    ) -> Result<i64, StoreError> {
        self.db
            .execute(
                "INSERT INTO segments (stream, path, first_seq, last_seq, records, raw_bytes,
                     stored_bytes, codec, state, created)
                 VALUES (?1, ?2, ?3, ?4, 0, 0, ?5, ?8, ?6, ?7)",
                params![
                    stream.name(),
                    path,
                    first_seq as i64,
                    first_seq as i64 - 1,
                    super::segment::HEADER_LEN as i64,
                    state,
                    created as i64,
                    codec.name()
                ],
            )
            .map_err(db_error)?;
        Ok(self.db.last_insert_rowid())
    }

    /// Records one appended block: totals, times and per-exporter rows, in
    /// one transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn record_block(
        &mut self,
        segment: i64,
        last_seq: u64,
        records: u64,
        raw_bytes: u64,
        stored_bytes: u64,
        first_ts: u64,
        last_ts: u64,
        exporters: &[(IpAddr, u64, u64, u64)],
    ) -> Result<(), StoreError> {
        let tx = self.db.transaction().map_err(db_error)?;
        tx.execute(
            "UPDATE segments SET last_seq = ?2, records = records + ?3, raw_bytes = raw_bytes + ?4,
                 stored_bytes = ?5, first_ts = COALESCE(first_ts, ?6),
                 last_ts = MAX(COALESCE(last_ts, 0), ?7)
             WHERE id = ?1",
            params![
                segment,
                last_seq as i64,
                records as i64,
                raw_bytes as i64,
                stored_bytes as i64,
                first_ts as i64,
                last_ts as i64
            ],
        )
        .map_err(db_error)?;
        for (ip, count, first, last) in exporters {
            tx.execute(
                "INSERT INTO segment_exporters (segment_id, exporter, records, first_ts, last_ts)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (segment_id, exporter) DO UPDATE SET
                     records = records + excluded.records,
                     first_ts = MIN(first_ts, excluded.first_ts),
                     last_ts = MAX(last_ts, excluded.last_ts)",
                params![segment, ip.to_string(), *count as i64, *first as i64, *last as i64],
            )
            .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)
    }

    /// Rewrites a segment's totals after a rescan (reconcile).
    #[allow(clippy::too_many_arguments)]
    pub fn replace_totals(
        &mut self,
        segment: i64,
        last_seq: i64,
        records: u64,
        raw_bytes: u64,
        stored_bytes: u64,
        first_ts: Option<u64>,
        last_ts: Option<u64>,
        exporters: &[(IpAddr, u64, u64, u64)],
    ) -> Result<(), StoreError> {
        let tx = self.db.transaction().map_err(db_error)?;
        tx.execute(
            "UPDATE segments SET last_seq = ?2, records = ?3, raw_bytes = ?4, stored_bytes = ?5,
                 first_ts = ?6, last_ts = ?7 WHERE id = ?1",
            params![
                segment,
                last_seq,
                records as i64,
                raw_bytes as i64,
                stored_bytes as i64,
                first_ts.map(|v| v as i64),
                last_ts.map(|v| v as i64)
            ],
        )
        .map_err(db_error)?;
        tx.execute("DELETE FROM segment_exporters WHERE segment_id = ?1", [segment])
            .map_err(db_error)?;
        for (ip, count, first, last) in exporters {
            tx.execute(
                "INSERT INTO segment_exporters VALUES (?1, ?2, ?3, ?4, ?5)",
                params![segment, ip.to_string(), *count as i64, *first as i64, *last as i64],
            )
            .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)
    }

    /// Points a sealed segment's records at a re-packed file
    /// (`store::repack`), in one transaction: a new row with the old one's
    /// totals, times, codec, state and exporter rows but the new path and
    /// size, and the old row deleted. A new id, so that nothing keyed by
    /// the old id (a reader's cached block list of the old file) is ever
    /// taken for the new file. Returns the new id.
    pub fn replace_segment(
        &mut self,
        old: i64,
        path: &str,
        stored_bytes: u64,
    ) -> Result<i64, StoreError> {
        let tx = self.db.transaction().map_err(db_error)?;
        let copied = tx
            .execute(
                "INSERT INTO segments (stream, path, first_seq, last_seq, first_ts, last_ts,
                     records, raw_bytes, stored_bytes, codec, state, created)
                 SELECT stream, ?2, first_seq, last_seq, first_ts, last_ts, records, raw_bytes,
                     ?3, codec, state, created
                 FROM segments WHERE id = ?1",
                params![old, path, stored_bytes as i64],
            )
            .map_err(db_error)?;
        if copied != 1 {
            return Err(StoreError::Index(format!("segment {old} has no row to replace")));
        }
        let new = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO segment_exporters (segment_id, exporter, records, first_ts, last_ts)
             SELECT ?2, exporter, records, first_ts, last_ts
             FROM segment_exporters WHERE segment_id = ?1",
            params![old, new],
        )
        .map_err(db_error)?;
        tx.execute("DELETE FROM segments WHERE id = ?1", [old]).map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        Ok(new)
    }

    pub fn set_state(&self, segment: i64, state: &str) -> Result<(), StoreError> {
        self.db
            .execute("UPDATE segments SET state = ?2 WHERE id = ?1", params![segment, state])
            .map_err(db_error)?;
        Ok(())
    }

    pub fn delete_segment(&self, segment: i64) -> Result<(), StoreError> {
        self.db.execute("DELETE FROM segments WHERE id = ?1", [segment]).map_err(db_error)?;
        Ok(())
    }

    pub fn cursor(&self, sink: &str, stream: Stream) -> Result<Option<u64>, StoreError> {
        self.db
            .query_row(
                "SELECT seq FROM cursors WHERE sink = ?1 AND stream = ?2",
                params![sink, stream.name()],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.map(|v| v as u64))
            .map_err(db_error)
    }

    pub fn relay_state(&self, sink: &str) -> Result<Option<String>, StoreError> {
        self.db
            .query_row("SELECT state FROM relay_state WHERE sink = ?1", [sink], |r| r.get(0))
            .optional()
            .map_err(db_error)
    }

    /// Every relay sink's state: (sink, JSON).
    pub fn relay_states(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT sink, state FROM relay_state ORDER BY sink")
            .map_err(db_error)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }

    pub fn set_relay_state(&self, sink: &str, state: &str, now: u64) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO relay_state (sink, state, updated) VALUES (?1, ?2, ?3)
                 ON CONFLICT (sink) DO UPDATE SET state = excluded.state, updated = excluded.updated",
                params![sink, state, now as i64],
            )
            .map(drop)
            .map_err(db_error)
    }

    pub fn set_cursor(
        &self,
        sink: &str,
        stream: Stream,
        seq: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO cursors (sink, stream, seq, updated) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (sink, stream) DO UPDATE SET
                     seq = MAX(seq, excluded.seq), updated = excluded.updated",
                params![sink, stream.name(), seq as i64, now as i64],
            )
            .map_err(db_error)?;
        Ok(())
    }

    /// The lowest cursor of any sink on the stream (None: no sink has one).
    pub fn min_cursor(&self, stream: Stream) -> Result<Option<i64>, StoreError> {
        self.db
            .query_row("SELECT MIN(seq) FROM cursors WHERE stream = ?1", [stream.name()], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map_err(db_error)
    }

    pub fn record_config(&self, json: &str, now: u64) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO config_history (ts, json) VALUES (?1, ?2)",
                params![now as i64, json],
            )
            .map_err(db_error)?;
        Ok(())
    }

    pub fn add_counter(&self, name: &str, by: u64) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                params![name, by as i64],
            )
            .map_err(db_error)?;
        Ok(())
    }

    pub fn counter(&self, name: &str) -> Result<u64, StoreError> {
        self.db
            .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| r.get::<_, i64>(0))
            .optional()
            .map(|v| v.unwrap_or(0) as u64)
            .map_err(db_error)
    }
}
