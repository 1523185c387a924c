//! On-demand replay: re-send a range of stored records to a sink without
//! touching its cursor (the NOC asked for "exporter X from 14:00 to 14:40"
//! again).
//!
//! Invariants: the sink's live cursor and its forwarder are untouched (the
//! replay uses its own connection); records go out in capture order per
//! stream; every batch is sent until acknowledged or the sink's breaker
//! gives up, and the outcome is logged and counted.

use std::time::SystemTime;

use super::{ManagedSink, Outgoing, RecordId};
use crate::{metrics, store::StoredRecord};

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ReplayOutcome {
    pub records: u64,
    pub acknowledged: u64,
}

pub fn outgoing(appliance: &str, stored: StoredRecord) -> Outgoing {
    Outgoing {
        id: RecordId {
            appliance: appliance.to_string(),
            stream: stored.record.stream,
            seq: stored.seq,
        },
        captured_at: stored.record.captured_at,
        src: stored.record.src,
        dst_port: stored.record.dst_port,
        payload: stored.record.payload,
        decoded: stored.decoded,
    }
}

/// Sends the batches `records` brings (in order: a range read a segment at
/// a time) through `sink`, retrying a batch from its first unacknowledged
/// record until the sink's link health gives up (`attempts` failed sends
/// in a row). `scheduled` is what the range held when the replay was
/// asked for: what is not acknowledged of it is counted as such.
pub async fn run(
    mut sink: ManagedSink,
    mut records: tokio::sync::mpsc::Receiver<Vec<Outgoing>>,
    scheduled: u64,
    attempts: u32,
) -> ReplayOutcome {
    let started = SystemTime::now();
    let mut outcome = ReplayOutcome { records: scheduled, acknowledged: 0 };
    let mut failures = 0;
    'batches: while let Some(batch) = records.recv().await {
        let mut rest = &batch[..];
        while !rest.is_empty() {
            if failures >= attempts {
                break 'batches;
            }
            let chunk = &rest[..rest.len().min(512)];
            let acknowledged = match sink.send(chunk).await {
                Ok(d) => {
                    failures = 0;
                    d.acknowledged
                }
                Err(f) => {
                    failures += 1;
                    tracing::warn!(sink = %sink.name(), error = %f.error, "replay send failed");
                    f.acknowledged
                }
            };
            outcome.acknowledged += acknowledged as u64;
            rest = &rest[acknowledged..];
        }
    }
    tracing::info!(sink = %sink.name(), records = outcome.records,
        acknowledged = outcome.acknowledged,
        seconds = started.elapsed().unwrap_or_default().as_secs_f64(), "replay finished");
    metrics::emit(metrics::ReplayFinished {
        sink: sink.name(),
        records: outcome.records,
        acknowledged: outcome.acknowledged,
        shortfall: if failures >= attempts { "sink_gave_up" } else { "not_read" },
    });
    outcome
}
