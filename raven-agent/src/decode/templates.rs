//! The NetFlow v9 / IPFIX template journal: templates and options
//! templates survive a restart of Raven, so data that arrives right after
//! one decodes without waiting for the exporter's next announcement
//! (which can be many minutes away).
//!
//! Invariants:
//! - The journal is `netflow_parser`'s secondary template tier
//!   ([`TemplateStore`]): the parser writes every template it learns
//!   through to it, asks it on a cache miss, and removes withdrawn or
//!   evicted ones. Keys carry the parser's scope, which `AutoScopedParser`
//!   sets per exporter address, port and domain, so exporters never share
//!   a template.
//! - It lives in the store's index database (`raven.db`, table
//!   `templates`, created by the index migrations) on its own connection:
//!   one SQLite file holds all the state that must survive a restart.
//! - A journal failure never stops decoding: the parser counts it and
//!   keeps its in-memory templates; the log line says why.
//!
//! Format: the value is the parser's own versioned template encoding
//! (opaque here); an upgrade that changes it is handled by the parser
//! (codec errors are counted and the entry dropped until re-announced).

use std::{path::Path, sync::Mutex};

use netflow_parser::{TemplateKind, TemplateStore, TemplateStoreError, TemplateStoreKey};
use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug)]
pub struct TemplateJournal {
    db: Mutex<Connection>,
}

fn kind_name(kind: TemplateKind) -> &'static str {
    match kind {
        TemplateKind::V9Data => "v9",
        TemplateKind::V9Options => "v9_options",
        TemplateKind::IpfixData => "ipfix",
        TemplateKind::IpfixOptions => "ipfix_options",
        TemplateKind::IpfixV9Data => "ipfix_v9",
        TemplateKind::IpfixV9Options => "ipfix_v9_options",
        _ => "other",
    }
}

fn backend(e: rusqlite::Error) -> TemplateStoreError {
    tracing::warn!(error = %e, reason = "template_journal", "the template journal failed");
    TemplateStoreError::Backend(Box::new(e))
}

impl TemplateJournal {
    /// Opens the journal in the store's index database (which must exist:
    /// the store is opened first and runs the migrations).
    pub fn open(db_path: &Path) -> rusqlite::Result<TemplateJournal> {
        let db = Connection::open(db_path)?;
        // The store's own connection writes the same file: wait for it
        // rather than fail.
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch("PRAGMA synchronous = NORMAL;")?;
        Ok(TemplateJournal { db: Mutex::new(db) })
    }

    /// Templates journaled now (for the status and tests).
    pub fn len(&self) -> usize {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        db.query_row("SELECT COUNT(*) FROM templates", [], |r| r.get::<_, i64>(0))
            .map_or(0, |n| n as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TemplateStore for TemplateJournal {
    fn get(&self, key: &TemplateStoreKey) -> Result<Option<Vec<u8>>, TemplateStoreError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        db.query_row(
            "SELECT value FROM templates WHERE scope = ?1 AND kind = ?2 AND template_id = ?3",
            params![&*key.scope, kind_name(key.kind), key.template_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)
    }

    fn put(&self, key: &TemplateStoreKey, value: &[u8]) -> Result<(), TemplateStoreError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        // Exporters re-announce templates every few seconds to minutes:
        // only a changed template costs a write.
        db.execute(
            "INSERT INTO templates (scope, kind, template_id, value, updated)
             VALUES (?1, ?2, ?3, ?4, unixepoch())
             ON CONFLICT (scope, kind, template_id) DO UPDATE
             SET value = excluded.value, updated = excluded.updated
             WHERE value IS NOT excluded.value",
            params![&*key.scope, kind_name(key.kind), key.template_id, value],
        )
        .map(drop)
        .map_err(backend)
    }

    fn remove(&self, key: &TemplateStoreKey) -> Result<(), TemplateStoreError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        db.execute(
            "DELETE FROM templates WHERE scope = ?1 AND kind = ?2 AND template_id = ?3",
            params![&*key.scope, kind_name(key.kind), key.template_id],
        )
        .map(drop)
        .map_err(backend)
    }
}
