//! The forwarder: one task per sink moving records from the store to the
//! sink, live and replayed alike.
//!
//! Invariants:
//! - A sink's cursor for a stream is the sequence number of the last record
//!   it acknowledged; it only moves forward, and only over an acknowledged
//!   prefix ([`Delivered::acknowledged`](super::Delivered)). A crash at any
//!   point re-sends at most what was sent after the cursor (at least once).
//! - Per stream, records go out in sequence order: the backlog after an
//!   outage drains oldest first, and a live record is never sent ahead of
//!   an older unsent one.
//! - Capture and storage never wait for a sink: the forwarder only reads.
//!   While a sink is down (or needs the VPN and the VPN is down) its backlog
//!   grows and is measured (`raven_forward_backlog_records`,
//!   `raven_forward_lag_seconds`).
//!
//! Operation: read up to `batch_max_records` records and
//! `batch_max_bytes` of payload (at least one record) after the cursor of
//! each of the sink's streams in turn; send (the managed sink waits out backoff, paces,
//! and records health); move the cursor. When every stream is caught up,
//! wait for the store's next durable append, a flush request, or the probe
//! interval (idle sinks are probed so a dead link shows before traffic
//! needs it).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{ManagedSink, Outgoing, udp_relay::RelayState};
use crate::{metrics, record::Stream, store::ReadLimit};

/// What the forwarder needs from the store.
pub trait Backlog: Send + Sync + 'static {
    /// Records of `stream` with `seq >= from_seq`, in order, within
    /// `limit` (always at least one if there is one).
    fn read(
        &self,
        stream: Stream,
        from_seq: u64,
        limit: ReadLimit,
    ) -> Result<Vec<Outgoing>, String>;
    /// The last sequence number the sink acknowledged for the stream.
    fn cursor(&self, sink: &str, stream: Stream) -> Result<Option<u64>, String>;
    fn set_cursor(&self, sink: &str, stream: Stream, seq: u64) -> Result<(), String>;
    /// The highest durable sequence number of the stream.
    fn durable_seq(&self, stream: Stream) -> Option<u64>;
    /// Changes whenever records become durable.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// A UDP relay sink's persisted state.
    fn relay_state(&self, _sink: &str) -> Result<Option<RelayState>, String> {
        Ok(None)
    }
    fn set_relay_state(&self, _sink: &str, _state: &RelayState) -> Result<(), String> {
        Ok(())
    }
}

/// The store as the forwarder sees it: records become [`Outgoing`] with
/// their stable ids.
pub struct StoreBacklog {
    pub store: crate::store::Store,
    pub appliance: String,
}

impl Backlog for StoreBacklog {
    fn read(
        &self,
        stream: Stream,
        from_seq: u64,
        limit: ReadLimit,
    ) -> Result<Vec<Outgoing>, String> {
        let records = self.store.read(stream, from_seq, limit).map_err(|e| e.to_string())?;
        Ok(records
            .into_iter()
            .map(|stored| super::replay::outgoing(&self.appliance, stored))
            .collect())
    }

    fn cursor(&self, sink: &str, stream: Stream) -> Result<Option<u64>, String> {
        self.store.cursor(sink, stream).map_err(|e| e.to_string())
    }

    fn set_cursor(&self, sink: &str, stream: Stream, seq: u64) -> Result<(), String> {
        self.store.set_cursor(sink, stream, seq).map_err(|e| e.to_string())
    }

    fn durable_seq(&self, stream: Stream) -> Option<u64> {
        self.store.durable_seq(stream)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.store.subscribe()
    }

    fn relay_state(&self, sink: &str) -> Result<Option<RelayState>, String> {
        let Some(json) = self.store.relay_state(sink).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        serde_json::from_str(&json).map(Some).map_err(|e| format!("relay state of {sink}: {e}"))
    }

    fn set_relay_state(&self, sink: &str, state: &RelayState) -> Result<(), String> {
        let json = serde_json::to_string(state).map_err(|e| e.to_string())?;
        self.store.set_relay_state(sink, &json).map_err(|e| e.to_string())
    }
}

/// Persists a relay's changed state before the batch that changed it goes
/// out, so relayed domain ids and templates survive a restart. A failure
/// is logged and the batch still goes: forwarding must not stall on it.
fn persist_relay_state(sink: &mut ManagedSink, backlog: &dyn Backlog, batch: &[Outgoing]) {
    let name = sink.name().to_string();
    let Some(relay) = sink.relay_mut() else { return };
    relay.prepare(batch);
    if let Some(state) = relay.take_state()
        && let Err(e) = tokio::task::block_in_place(|| backlog.set_relay_state(&name, &state))
    {
        tracing::error!(sink = %name, error = %e, reason = "relay_state",
            "cannot persist the relay's domain ids and templates; they may change after a restart");
    }
}

/// Handles to a running sink task.
#[derive(Clone)]
pub struct SinkControl {
    pub name: String,
    /// Wakes the task and lets the next attempt skip the backoff wait once.
    pub flush: Arc<Notify>,
}

/// Whether sinks that need the VPN may send now.
pub type VpnGate = watch::Receiver<bool>;

/// Runs one sink until `cancel` fires.
pub async fn run(
    mut sink: ManagedSink,
    probe_interval: Duration,
    backlog: Arc<dyn Backlog>,
    mut vpn: VpnGate,
    flush: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut durable = backlog.subscribe();
    let name = sink.name().to_string();
    let streams: Vec<Stream> = sink.streams().to_vec();
    if let Some(relay) = sink.relay_mut() {
        match backlog.relay_state(&name) {
            Ok(Some(state)) => {
                tracing::info!(sink = %name, exporters = state.domains.len(),
                    "restored the relay's domain ids and templates");
                relay.restore(state);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(sink = %name, error = %e, reason = "relay_state",
                "cannot read the relay's persisted state; domain ids start afresh"),
        }
    }
    loop {
        if cancel.is_cancelled() {
            return;
        }
        if sink.requires_vpn() && !*vpn.borrow() {
            // Paused: nothing is sent, but the backlog it builds up is
            // still measured as records become durable.
            for &stream in &streams {
                let from = backlog.cursor(&name, stream).ok().flatten().map_or(0, |c| c + 1);
                let oldest = tokio::task::block_in_place(|| backlog.read(stream, from, 1.into()))
                    .unwrap_or_default();
                publish_backlog(&name, stream, &*backlog, from, oldest.first());
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = vpn.changed() => {}
                _ = durable.changed() => {}
                _ = tokio::time::sleep(probe_interval) => {}
            }
            continue;
        }
        let mut progressed = false;
        let mut failed = false;
        for &stream in &streams {
            let from = match backlog.cursor(&name, stream) {
                Ok(cursor) => cursor.map_or(0, |c| c + 1),
                Err(e) => {
                    tracing::error!(sink = %name, %stream, error = %e, "cannot read the cursor");
                    failed = true;
                    continue;
                }
            };
            // Reading decompresses blocks from disk: keep it off the
            // runtime's other tasks.
            let limit = sink.batch_limit();
            let batch = match tokio::task::block_in_place(|| backlog.read(stream, from, limit)) {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(sink = %name, %stream, from, error = %e,
                        "cannot read the backlog");
                    failed = true;
                    continue;
                }
            };
            publish_backlog(&name, stream, &*backlog, from, batch.first());
            if batch.is_empty() {
                continue;
            }
            persist_relay_state(&mut sink, &*backlog, &batch);
            let acknowledged = tokio::select! {
                _ = cancel.cancelled() => return,
                result = sink.send(&batch) => match result {
                    Ok(delivered) => delivered.acknowledged,
                    Err(failure) => {
                        tracing::warn!(sink = %name, %stream, error = %failure.error,
                            acknowledged = failure.acknowledged, "send failed; will retry");
                        failed = true;
                        failure.acknowledged
                    }
                },
            };
            if acknowledged > 0 {
                let last = batch[acknowledged - 1].id.seq;
                if let Err(e) = backlog.set_cursor(&name, stream, last) {
                    tracing::error!(sink = %name, %stream, seq = last, error = %e,
                        "cannot store the cursor; records after it will be sent again");
                    failed = true;
                } else {
                    progressed = true;
                }
                let next = batch.get(acknowledged);
                publish_backlog(&name, stream, &*backlog, last + 1, next);
            }
        }
        if progressed && !failed {
            continue;
        }
        if failed {
            // The managed sink's backoff paces the retry; a flush skips it.
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = sink.wait_ready() => break,
                    _ = flush.notified() => {
                        sink.skip_backoff();
                        break;
                    }
                    // The tunnel just came (back) up: the NOC is likely
                    // reachable again, so try now rather than after a
                    // backoff that grew through the outage.
                    Ok(()) = vpn.changed() => {
                        if *vpn.borrow_and_update() {
                            sink.skip_backoff();
                            break;
                        }
                    }
                }
            }
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = durable.changed() => {}
            _ = flush.notified() => sink.skip_backoff(),
            _ = vpn.changed() => {}
            _ = tokio::time::sleep(probe_interval) => {
                if sink.probe_due()
                    && let Err(e) = sink.probe().await
                {
                    tracing::warn!(sink = %name, error = %e, "probe failed");
                }
                sink.publish_state();
            }
        }
    }
}

/// Backlog of one sink and stream: records after the cursor and the age of
/// the oldest of them.
fn publish_backlog(
    sink: &str,
    stream: Stream,
    backlog: &dyn Backlog,
    next_seq: u64,
    oldest: Option<&Outgoing>,
) {
    let records = backlog.durable_seq(stream).map_or(0, |d| (d + 1).saturating_sub(next_seq));
    let lag = match (records, oldest) {
        (0, _) | (_, None) => 0.0,
        (_, Some(r)) => {
            SystemTime::now().duration_since(r.captured_at).map_or(0.0, |d| d.as_secs_f64())
        }
    };
    metrics::emit(metrics::ForwardBacklogSampled { sink, stream, records, lag_seconds: lag });
}

#[cfg(test)]
mod tests {
    //! The forwarder loop against an in-memory backlog and a real UDP
    //! sink: cursor movement, order, and draining after the sink returns.

    use std::{
        collections::BTreeMap,
        net::{SocketAddr, UdpSocket},
        sync::Mutex,
    };

    use bytes::Bytes;

    use super::*;
    use crate::{
        config::{ForwardConfig, SinkConfig, SinkProtocol},
        forward::RecordId,
    };

    #[derive(Default)]
    struct Memory {
        records: Mutex<Vec<Outgoing>>,
        cursors: Mutex<BTreeMap<(String, Stream), u64>>,
        durable: Mutex<Option<watch::Sender<u64>>>,
    }

    impl Memory {
        fn push(&self, text: &str) {
            let mut records = self.records.lock().unwrap();
            let seq = records.len() as u64;
            records.push(Outgoing {
                id: RecordId { appliance: "t".into(), stream: Stream::Syslog, seq },
                captured_at: SystemTime::now(),
                src: "192.0.2.7:514".parse().unwrap(),
                dst_port: 514,
                payload: Bytes::from(text.to_string()),
                decoded: None,
            });
            if let Some(tx) = &*self.durable.lock().unwrap() {
                tx.send_replace(seq);
            }
        }
    }

    impl Backlog for Memory {
        fn read(&self, _: Stream, from: u64, limit: ReadLimit) -> Result<Vec<Outgoing>, String> {
            let records = self.records.lock().unwrap();
            let rest = &records[(from as usize).min(records.len())..];
            Ok(rest[..limit.fitting(rest.iter().map(|r| r.payload.len()))].to_vec())
        }
        fn cursor(&self, sink: &str, stream: Stream) -> Result<Option<u64>, String> {
            Ok(self.cursors.lock().unwrap().get(&(sink.to_string(), stream)).copied())
        }
        fn set_cursor(&self, sink: &str, stream: Stream, seq: u64) -> Result<(), String> {
            self.cursors.lock().unwrap().insert((sink.to_string(), stream), seq);
            Ok(())
        }
        fn durable_seq(&self, _: Stream) -> Option<u64> {
            (self.records.lock().unwrap().len() as u64).checked_sub(1)
        }
        fn subscribe(&self) -> watch::Receiver<u64> {
            let (tx, rx) = watch::channel(0);
            *self.durable.lock().unwrap() = Some(tx);
            rx
        }
    }

    fn udp_sink(target: SocketAddr) -> ManagedSink {
        let config = SinkConfig::new("noc", SinkProtocol::SyslogUdp, &target.to_string());
        ManagedSink::new(&config, &ForwardConfig::default()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_vpn_coming_up_ends_a_long_backoff() {
        use std::io::Read;
        // A port with nothing listening: the first connect is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let memory = Arc::new(Memory::default());
        memory.push("<14>held through the outage");
        let config = SinkConfig::new("noc", SinkProtocol::SyslogTcp, &format!("127.0.0.1:{port}"));
        // Full jitter in [0, 600 s]: without the wake the retry would
        // almost surely come long after the test's 5 s.
        let forward = ForwardConfig {
            backoff_min_ms: 600_000,
            backoff_max_ms: 600_000,
            ..Default::default()
        };
        let (vpn_tx, vpn) = watch::channel(true);
        let cancel = CancellationToken::new();
        let backlog: Arc<dyn Backlog> = memory.clone();
        let task = tokio::spawn(run(
            ManagedSink::new(&config, &forward).unwrap(),
            Duration::from_secs(10),
            backlog,
            vpn,
            Arc::new(Notify::new()),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(memory.cursor("noc", Stream::Syslog).unwrap(), None, "sent with no receiver");
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let receiver = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = vec![0u8; 256];
            let n = conn.read(&mut got).unwrap();
            got.truncate(n);
            // Kept open: a batch counts only if the connection outlives
            // the confirm delay.
            (conn, got)
        });
        // The tunnel bounces: down, then up.
        vpn_tx.send_replace(false);
        tokio::time::sleep(Duration::from_millis(50)).await;
        vpn_tx.send_replace(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while memory.cursor("noc", Stream::Syslog).unwrap() != Some(0) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still backing off after the VPN came up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (_conn, got) = tokio::task::block_in_place(|| receiver.join().unwrap());
        assert_eq!(got, b"27 <14>held through the outage");
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sends_in_order_moves_the_cursor_and_tails_new_records() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let memory = Arc::new(Memory::default());
        for i in 0..3 {
            memory.push(&format!("<14>backlog {i}"));
        }
        let (_vpn_tx, vpn) = watch::channel(true);
        let cancel = CancellationToken::new();
        let backlog: Arc<dyn Backlog> = memory.clone();
        let task = tokio::spawn(run(
            udp_sink(receiver.local_addr().unwrap()),
            Duration::from_secs(10),
            backlog,
            vpn,
            Arc::new(Notify::new()),
            cancel.clone(),
        ));
        let receive = |n: usize| {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            for _ in 0..n {
                let len = receiver.recv(&mut buf).expect("datagram");
                got.push(String::from_utf8_lossy(&buf[..len]).to_string());
            }
            got
        };
        let first = tokio::task::block_in_place(|| receive(3));
        assert_eq!(first, ["<14>backlog 0", "<14>backlog 1", "<14>backlog 2"]);
        memory.push("<14>live 3");
        let live = tokio::task::block_in_place(|| receive(1));
        assert_eq!(live, ["<14>live 3"]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while memory.cursor("noc", Stream::Syslog).unwrap() != Some(3) {
            assert!(tokio::time::Instant::now() < deadline, "cursor never reached 3");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
        task.await.unwrap();
    }
}
