//! Store tests on real files: round trips, sealing, readers, cursors,
//! retention, start-up repair, and a model-based property test with
//! crashes.

use std::{
    fs::OpenOptions,
    io::{Seek, SeekFrom, Write},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_string_lossy().into_owned(),
        segment_max_bytes: 2048,
        min_free_bytes: 0,
        ..StoreConfig::default()
    }
}

fn record(text: &str, src: &str, at: SystemTime) -> NewRecord {
    NewRecord {
        record: Record {
            captured_at: at,
            stream: Stream::Syslog,
            src: src.parse().unwrap(),
            dst_port: 514,
            ifindex: 3,
            wire_len: text.len() as u32,
            truncated: false,
            via: crate::record::Via::Xdp,
            payload: Bytes::from(text.to_string()),
        },
        decoded: Some(serde_json::Map::from_iter([("message".into(), text.into())]).into()),
        parse_error: None,
    }
}

fn batch(from: usize, n: usize) -> Vec<NewRecord> {
    (from..from + n)
        .map(|i| {
            record(
                &format!("<14>line {i} {}", "x".repeat(i % 50)),
                "192.0.2.1:5000",
                SystemTime::now(),
            )
        })
        .collect()
}

fn texts(records: &[StoredRecord]) -> Vec<String> {
    records.iter().map(|r| String::from_utf8_lossy(&r.record.payload).into_owned()).collect()
}

#[test]
fn appends_read_back_in_order_across_sealed_segments_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // Small enough that these 20 blocks (about 150 bytes each) fill several.
    let store =
        Store::open(&StoreConfig { segment_max_bytes: 1024, ..config(dir.path()) }).unwrap();
    let mut expected = Vec::new();
    for b in 0..20 {
        let records = batch(b * 10, 10);
        expected.extend(
            records.iter().map(|r| String::from_utf8_lossy(&r.record.payload).into_owned()),
        );
        let appended = store.append(Stream::Syslog, records).unwrap();
        assert_eq!((appended.first_seq, appended.last_seq), (b as u64 * 10, b as u64 * 10 + 9));
    }
    assert!(store.segments(Some(Stream::Syslog)).unwrap().len() > 3, "small segments seal");
    let all = store.read(Stream::Syslog, 0, 1000).unwrap();
    assert_eq!(texts(&all), expected);
    assert!(all.iter().enumerate().all(|(i, r)| r.seq == i as u64));
    assert_eq!(
        all[5].decoded.as_deref(),
        Some(format!("{{\"message\":{:?}}}", expected[5]).as_bytes())
    );
    assert_eq!(all[5].record.ifindex, 3);
    let middle = store.read(Stream::Syslog, 57, 10).unwrap();
    assert_eq!(middle.first().unwrap().seq, 57);
    assert_eq!(middle.len(), 10);
    drop(store);

    let store = Store::open(&config(dir.path())).unwrap();
    assert_eq!(store.durable_seq(Stream::Syslog), Some(199));
    let next = store.append(Stream::Syslog, batch(200, 1)).unwrap();
    assert_eq!(next.first_seq, 200, "sequence numbers continue after a restart");
    assert_eq!(store.read(Stream::Syslog, 0, 1000).unwrap().len(), 201);
    assert!(store.read(Stream::Netflow, 0, 10).unwrap().is_empty());
}

#[test]
fn a_read_stops_at_its_byte_limit_but_never_returns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    // 20-byte payloads, 10 blocks of 10.
    for b in 0..10 {
        let records = (b * 10..b * 10 + 10)
            .map(|i| {
                record(&format!("<14>line {i:03} padding"), "192.0.2.1:5000", SystemTime::now())
            })
            .collect();
        store.append(Stream::Syslog, records).unwrap();
    }
    let read = |from, records, payload_bytes| {
        let got = store.read(Stream::Syslog, from, ReadLimit { records, payload_bytes }).unwrap();
        assert!(got.iter().all(|r| r.record.payload.len() == 20));
        got.iter().map(|r| r.seq).collect::<Vec<_>>()
    };
    assert_eq!(read(0, 1000, 250), (0..12).collect::<Vec<_>>(), "12 × 20 ≤ 250 < 13 × 20");
    assert_eq!(read(0, 1000, 240), (0..12).collect::<Vec<_>>(), "exactly full");
    assert_eq!(read(37, 1000, 100), (37..42).collect::<Vec<_>>(), "from inside a block");
    assert_eq!(read(37, 3, 1000), vec![37, 38, 39], "the record count binds first");
    assert_eq!(read(95, 1000, 1), vec![95], "an oversize record comes alone");
    assert_eq!(read(95, 1000, u64::MAX), (95..100).collect::<Vec<_>>());
    assert!(read(100, 1000, 1).is_empty(), "nothing after the last");
}

#[test]
fn time_and_exporter_ranges_use_the_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for i in 0..30u64 {
        let src = if i % 3 == 0 { "192.0.2.7:514" } else { "198.18.0.9:514" };
        let at = base + Duration::from_secs(i * 60);
        store.append(Stream::Syslog, vec![record(&format!("<14>m{i}"), src, at)]).unwrap();
    }
    let got = store
        .read_range(
            Some(Stream::Syslog),
            base + Duration::from_secs(10 * 60),
            base + Duration::from_secs(20 * 60),
            Some("192.0.2.7".parse().unwrap()),
        )
        .unwrap();
    assert_eq!(texts(&got), ["<14>m12", "<14>m15", "<14>m18"]);
}

#[test]
fn cursors_move_forward_only_and_retention_counts_unforwarded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    let old = SystemTime::now() - Duration::from_secs(20 * 86_400);
    for i in 0..40 {
        store
            .append(
                Stream::Syslog,
                vec![record(&format!("<14>old {i} {}", "y".repeat(200)), "192.0.2.1:1", old)],
            )
            .unwrap();
    }
    store.append(Stream::Syslog, batch(0, 5)).unwrap();
    store.set_cursor("noc", Stream::Syslog, 9).unwrap();
    store.set_cursor("noc", Stream::Syslog, 3).unwrap();
    assert_eq!(store.cursor("noc", Stream::Syslog).unwrap(), Some(9), "never moves back");
    let evicted = store.cleanup(SystemTime::now()).unwrap();
    assert!(evicted.segments > 0 && evicted.records > 0, "{evicted:?}");
    assert_eq!(evicted.unforwarded_records, evicted.records - 10, "seq 0..=9 were forwarded");
    // Eviction is per segment: only a segment holding fresh records keeps
    // old ones.
    let cutoff = segment::nanos(SystemTime::now() - Duration::from_secs(14 * 86_400));
    for s in store.segments(Some(Stream::Syslog)).unwrap() {
        assert!(s.last_ts.unwrap() > cutoff, "{s:?} should have been evicted");
    }
    let left = store.read(Stream::Syslog, 0, 1000).unwrap();
    assert!(left.iter().any(|r| r.seq == 44), "the newest stay");
    assert_eq!(left.len() as u64 + evicted.records, 45);
}

#[test]
fn quotas_evict_the_oldest_sealed_segments_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.stream_quota_bytes = 6000;
    let store = Store::open(&c).unwrap();
    for b in 0..30 {
        store.append(Stream::Syslog, batch(b * 10, 10)).unwrap();
    }
    let evicted = store.cleanup(SystemTime::now()).unwrap();
    assert!(evicted.segments > 0);
    let used: u64 =
        store.segments(Some(Stream::Syslog)).unwrap().iter().map(|s| s.stored_bytes).sum();
    assert!(used <= 6000, "{used}");
    let left = store.read(Stream::Syslog, 0, 1000).unwrap();
    assert_eq!(left.last().unwrap().seq, 299, "the newest records stay");
    assert!(left.windows(2).all(|w| w[1].seq == w[0].seq + 1), "what stays is contiguous");
}

fn open_segment_path(store: &Store) -> PathBuf {
    let row = store.segments(Some(Stream::Syslog)).unwrap().into_iter().last().unwrap();
    store.data_dir().join(row.path)
}

#[test]
fn a_torn_tail_is_truncated_and_the_rest_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    store.append(Stream::Syslog, batch(0, 3)).unwrap();
    store.append(Stream::Syslog, batch(3, 3)).unwrap();
    let path = open_segment_path(&store);
    drop(store);
    // An interrupted write: half a block at the end.
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&[0x40, 0, 0, 0, 1, 2, 3, 4, 5]).unwrap();
    drop(file);
    let store = Store::open(&config(dir.path())).unwrap();
    assert_eq!(store.read(Stream::Syslog, 0, 100).unwrap().len(), 6);
    assert_eq!(store.append(Stream::Syslog, batch(6, 1)).unwrap().first_seq, 6);
    assert_eq!(store.read(Stream::Syslog, 0, 100).unwrap().len(), 7);
}

#[test]
fn a_block_damaged_while_running_is_skipped_and_the_read_still_fills_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut big = config(dir.path());
    big.segment_max_bytes = 1 << 20;
    let store = Store::open(&big).unwrap();
    for b in 0..5 {
        store.append(Stream::Syslog, batch(b * 10, 10)).unwrap();
    }
    // Damage the second block of the running store's open segment.
    let row = store.segments(Some(Stream::Syslog)).unwrap().pop().unwrap();
    let path = dir.path().join(&row.path);
    let blocks = segment::scan(&path, false).unwrap().blocks;
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(blocks[1].offset + segment::BLOCK_HEADER_LEN + 2)).unwrap();
    file.write_all(b"\xff\xff\xff").unwrap();
    drop(file);
    // Records 10..20 are skipped (counted); the read goes on past them
    // until it has what was asked for.
    let got: Vec<u64> = store.read(Stream::Syslog, 0, 25).unwrap().iter().map(|r| r.seq).collect();
    let want: Vec<u64> = (0..10).chain(20..35).collect();
    assert_eq!(got, want);
    let got: Vec<u64> = store.read(Stream::Syslog, 5, 100).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(got, (5..10).chain(20..50).collect::<Vec<_>>());
    // A replay's range read skips it the same way.
    let far = SystemTime::now() + Duration::from_secs(3600);
    let got = store.read_range(None, SystemTime::UNIX_EPOCH, far, None).unwrap();
    let got: Vec<u64> = got.iter().map(|r| r.seq).collect();
    assert_eq!(got, (0..10).chain(20..50).collect::<Vec<_>>());
}

#[test]
fn a_flipped_byte_quarantines_that_segment_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    for b in 0..20 {
        store.append(Stream::Syslog, batch(b * 10, 10)).unwrap();
    }
    let rows = store.segments(Some(Stream::Syslog)).unwrap();
    let open = rows.last().unwrap().clone();
    drop(store);
    // Damage the open segment's first block (more blocks follow it).
    let path = dir.path().join(&open.path);
    let mut file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(segment::HEADER_LEN + 30)).unwrap();
    file.write_all(b"\xff\xff").unwrap();
    drop(file);
    let store = Store::open(&config(dir.path())).unwrap();
    let left = store.read(Stream::Syslog, 0, 1000).unwrap();
    assert!(left.len() < 200 && left.len() >= 150, "{}", left.len());
    assert!(left.iter().all(|r| (r.seq as i64) < open.first_seq as i64), "only that segment went");
    assert!(std::fs::read_dir(dir.path().join("quarantine")).unwrap().count() == 1);
    // Writing goes on after the damage.
    let next = store.append(Stream::Syslog, batch(0, 1)).unwrap();
    assert_eq!(next.first_seq, open.first_seq, "sequence resumes after the last good record");
}

#[test]
fn a_deleted_or_corrupt_index_is_rebuilt_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    for b in 0..10 {
        store.append(Stream::Syslog, batch(b * 10, 10)).unwrap();
    }
    store.set_cursor("noc", Stream::Syslog, 5).unwrap();
    drop(store);
    for name in ["raven.db-wal", "raven.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(name));
    }
    let store = Store::open(&config(dir.path())).unwrap();
    assert_eq!(store.read(Stream::Syslog, 0, 1000).unwrap().len(), 100, "without -wal");
    drop(store);
    std::fs::write(dir.path().join("raven.db"), b"this is not a database").unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    assert_eq!(store.read(Stream::Syslog, 0, 1000).unwrap().len(), 100, "rebuilt");
    assert_eq!(store.durable_seq(Stream::Syslog), Some(99));
    drop(store);
    std::fs::remove_file(dir.path().join("raven.db")).unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    assert_eq!(store.read(Stream::Syslog, 0, 1000).unwrap().len(), 100, "deleted");
}

#[derive(Clone, Debug)]
enum Op {
    Append(usize),
    /// Drop the store as a crash would (nothing is buffered above the
    /// kernel), optionally cutting the open segment at a byte.
    Crash(Option<u16>),
    Evict,
    Read(u16),
    /// A re-pack pass (the records must not change).
    Repack,
    /// A re-pack of the newest sealed segment interrupted at a step, then
    /// a crash and a reopen.
    RepackCrash(u8),
}

/// Re-packs whatever the property test's small segments hold.
const TEST_REPACK: repack::RepackLimits = repack::RepackLimits {
    min_records_per_block: 1000,
    block_records: 64,
    max_segments: 2,
    max_bytes: u64::MAX,
    max_scans: usize::MAX,
    min_free_bytes: 0,
};

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..30).prop_map(Op::Append),
        1 => proptest::option::of(any::<u16>()).prop_map(Op::Crash),
        1 => Just(Op::Evict),
        2 => any::<u16>().prop_map(Op::Read),
        1 => Just(Op::Repack),
        1 => (0u8..3).prop_map(Op::RepackCrash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Against a model: every acknowledged record is readable, in order,
    /// exactly once, unless retention evicted it (then everything older
    /// went too) or a cut at a random byte tore an unacknowledged tail —
    /// which a cut after the last fsync cannot do, so cuts only remove
    /// whole trailing blocks we then forget in the model.
    #[test]
    fn acknowledged_records_survive_crashes_and_reopen(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.total_quota_bytes = 8000;
        let mut store = Store::open(&c).unwrap();
        let mut model: Vec<(u64, String)> = Vec::new();
        let mut next = 0usize;
        // A crash can only tear the segment being written: the open one,
        // which exists once something was appended since the last open.
        let mut writing = false;
        for op in ops {
            match op {
                Op::Append(n) => {
                    let records = batch(next, n);
                    let texts: Vec<String> = records.iter().map(|r| String::from_utf8_lossy(&r.record.payload).into_owned()).collect();
                    let appended = store.append(Stream::Syslog, records).unwrap();
                    for (i, t) in texts.into_iter().enumerate() {
                        model.push((appended.first_seq + i as u64, t));
                    }
                    next += n;
                    writing = true;
                }
                Op::Crash(cut) => {
                    let path = store
                        .segments(Some(Stream::Syslog))
                        .unwrap()
                        .last()
                        .filter(|_| writing)
                        .map(|r| dir.path().join(&r.path));
                    drop(store);
                    writing = false;
                    if let (Some(cut), Some(path)) = (cut, path) {
                        let len = std::fs::metadata(&path).unwrap().len();
                        let at = segment::HEADER_LEN + u64::from(cut) % (len - segment::HEADER_LEN + 1);
                        OpenOptions::new().write(true).open(&path).unwrap().set_len(at).unwrap();
                        // A cut loses the blocks it reaches into: the model
                        // forgets them (this simulates losing acknowledged
                        // data on purpose, to test that what remains is a
                        // clean prefix and numbering continues).
                        store = Store::open(&c).unwrap();
                        let durable = store.durable_seq(Stream::Syslog);
                        model.retain(|(seq, _)| durable.is_some_and(|d| *seq <= d));
                    } else {
                        store = Store::open(&c).unwrap();
                    }
                }
                Op::Evict => {
                    store.cleanup(SystemTime::now()).unwrap();
                }
                Op::Repack => {
                    let done = store.repack_pass(&TEST_REPACK).unwrap();
                    prop_assert_eq!(done.failed, 0);
                    prop_assert!(done.blocks_after <= done.blocks_before);
                    assert_one_file_per_segment(dir.path(), &store);
                }
                Op::RepackCrash(step) => {
                    let sealed = store
                        .segments(Some(Stream::Syslog))
                        .unwrap()
                        .into_iter()
                        .rfind(|r| r.state == "sealed" && r.records > 0);
                    if let Some(row) = sealed {
                        let stop = [repack::Stop::Written, repack::Stop::Renamed, repack::Stop::Swapped][usize::from(step)];
                        prop_assert!(store.repack_until(&row, &TEST_REPACK, Some(stop)).unwrap().is_some());
                        drop(store);
                        writing = false;
                        store = Store::open(&c).unwrap();
                        assert_one_file_per_segment(dir.path(), &store);
                    }
                }
                Op::Read(from) => {
                    let from = u64::from(from) % (next as u64 + 1);
                    let got = store.read(Stream::Syslog, from, usize::MAX).unwrap();
                    let oldest = got.first().map(|r| r.seq);
                    let want: Vec<&(u64, String)> = model.iter().filter(|(s, _)| *s >= from && oldest.is_some_and(|o| *s >= o)).collect();
                    prop_assert_eq!(got.len(), want.len());
                    for (g, (seq, text)) in got.iter().zip(want) {
                        prop_assert_eq!(g.seq, *seq);
                        prop_assert_eq!(String::from_utf8_lossy(&g.record.payload), text.as_str());
                    }
                    // Eviction only ever removes a prefix.
                    if let Some(o) = oldest {
                        prop_assert!(model.iter().any(|(s, _)| *s == o));
                        prop_assert!(got.windows(2).all(|w| w[1].seq == w[0].seq + 1));
                    }
                }
            }
        }
        let all = store.read(Stream::Syslog, 0, usize::MAX).unwrap();
        let tail: Vec<u64> = model.iter().map(|(s, _)| *s).filter(|s| all.first().is_some_and(|f| *s >= f.seq)).collect();
        prop_assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), tail);
    }
}

#[test]
fn one_writer_at_a_time_and_readers_never_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    store.append(Stream::Syslog, batch(0, 5)).unwrap();
    assert!(matches!(Store::open(&config(dir.path())), Err(StoreError::Busy(_))));
    // A torn-looking tail under a live writer is not "repaired" by a reader.
    let path = open_segment_path(&store);
    let before = std::fs::metadata(&path).unwrap().len();
    let reader = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.read(Stream::Syslog, 0, 100).unwrap().len(), 5);
    assert!(matches!(reader.append(Stream::Syslog, batch(5, 1)), Err(StoreError::ReadOnly)));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), before);
    drop(store);
    assert!(Store::open(&config(dir.path())).is_ok(), "the lock goes with the writer");
}

#[test]
fn a_codec_change_starts_a_new_segment_and_every_codec_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.segment_max_bytes = 1 << 20;
    let store = Store::open(&config).unwrap();
    store.append(Stream::Syslog, batch(0, 10)).unwrap();
    config.codec = segment::Codec::Zstd;
    config.compression_level = 19;
    store.reconfigure(&config);
    store.append(Stream::Syslog, batch(10, 10)).unwrap();
    store.append(Stream::Syslog, batch(20, 10)).unwrap();
    let codecs: Vec<String> =
        store.segments(Some(Stream::Syslog)).unwrap().into_iter().map(|r| r.codec).collect();
    assert_eq!(codecs, ["gzip", "zstd"], "one codec per segment");
    drop(store);
    // After a restart the open zstd segment is rescanned from its header.
    let store = Store::open(&config).unwrap();
    let all = store.read(Stream::Syslog, 0, 100).unwrap();
    assert_eq!(texts(&all), texts_of(&[batch(0, 10), batch(10, 10), batch(20, 10)].concat()));
}

fn texts_of(records: &[NewRecord]) -> Vec<String> {
    records.iter().map(|r| String::from_utf8_lossy(&r.record.payload).into_owned()).collect()
}

/// A child forked by another thread holds a copy of the lock's descriptor
/// until its exec: reopening right after a drop must wait that out, not
/// report the store busy (this made the model test above flaky whenever a
/// test in the same process spawned a program).
#[test]
fn reopening_while_another_thread_forks_is_not_busy() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let forker = std::thread::spawn({
        let stop = stop.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::process::Command::new("true").status();
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let failures: Vec<String> = (0..300)
        .filter_map(|_| {
            let reopened = Store::open(&c).and_then(|store| {
                drop(store);
                Store::open(&c)
            });
            reopened.err().map(|e| e.to_string())
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    forker.join().unwrap();
    assert!(failures.is_empty(), "{} reopenings failed: {:?}", failures.len(), failures.first());
}

/// Every shared payload of `stream` as the pipeline hands it to the store:
/// decoded by the real decoder, in capture order, with the metadata
/// varied the way capture varies it.
fn shared_records(stream: Stream) -> Vec<NewRecord> {
    let decoder = crate::decode::Decoder::new(&crate::config::DecodeConfig::default());
    crate::decode::samples::testing::of(stream)
        .into_iter()
        .enumerate()
        .map(|(i, sample)| {
            let mut record = sample.record();
            record.ifindex = (i % 3) as u32;
            record.truncated = i % 7 == 0;
            record.wire_len += (i % 5) as u32;
            record.via = [crate::record::Via::Xdp, crate::record::Via::Socket][i % 2];
            let decoded = decoder.decode(&record).0;
            let parse_error =
                decoded.as_ref().and_then(|d| d.parse_error.as_ref()).map(|e| e.stored_form());
            NewRecord { record, decoded: decoded.map(|d| d.fields), parse_error }
        })
        .collect()
}

/// Writes `blocks` into a version-1 segment file with the old writer, where
/// an older Raven would have left it.
fn write_v1_segment(
    dir: &Path,
    stream: Stream,
    first_seq: u64,
    blocks: &[&[NewRecord]],
) -> PathBuf {
    let day = dir.join("segments").join(stream.name()).join("20261128");
    std::fs::create_dir_all(&day).unwrap();
    let path = day.join(format!("{first_seq:020}.seg"));
    let mut file = File::create(&path).unwrap();
    segment::write_header(&mut file, 1, stream, segment::Codec::Gzip, SystemTime::now()).unwrap();
    let mut seq = first_seq;
    for records in blocks {
        let block = segment::encode_block_v1(seq, records, segment::Codec::Gzip, 6).unwrap();
        file.write_all(&block).unwrap();
        seq += records.len() as u64;
    }
    path
}

fn cat(records: &[StoredRecord]) -> Vec<String> {
    records.iter().map(|r| cli::to_json(r).to_string()).collect()
}

#[test]
fn version_1_segments_of_an_older_raven_read_back_like_version_2() {
    for stream in Stream::ALL.into_iter().filter(|s| *s != Stream::Windows) {
        let records = shared_records(stream);
        // Written by this Raven (version 2), several blocks.
        let new = tempfile::tempdir().unwrap();
        let mut big = config(new.path());
        big.segment_max_bytes = 1 << 20;
        let store = Store::open(&big).unwrap();
        for chunk in records.chunks(17) {
            store.append(stream, chunk.to_vec()).unwrap();
        }
        let v2 = store.read(stream, 0, usize::MAX).unwrap();
        drop(store);
        // What went in comes out, field for field.
        assert_eq!(v2.len(), records.len());
        for (i, (got, put)) in v2.iter().zip(&records).enumerate() {
            assert_eq!(got.seq, i as u64);
            assert_eq!(got.record, put.record, "{stream} record {i}");
            let json = put.decoded.as_ref().map(|d| Bytes::from(serde_json::to_vec(d).unwrap()));
            assert_eq!(got.decoded, json, "{stream} record {i}");
            assert_eq!(got.parse_error, put.parse_error, "{stream} record {i}");
        }
        // The same records in a version-1 segment from the old writer: found
        // at start-up (a file the index does not know), indexed, read.
        let old = tempfile::tempdir().unwrap();
        let chunks: Vec<&[NewRecord]> = records.chunks(17).collect();
        write_v1_segment(old.path(), stream, 0, &chunks);
        let store = Store::open(&config(old.path())).unwrap();
        let v1 = store.read(stream, 0, usize::MAX).unwrap();
        assert_eq!(v1, v2, "{stream}: version 1 and 2 hold the same records");
        assert_eq!(cat(&v1), cat(&v2), "{stream}: `segments cat` prints the same");
        let rows = store.segments(Some(stream)).unwrap();
        assert_eq!(rows.iter().map(|r| r.records).sum::<u64>(), records.len() as u64);
        // Time ranges and exporters come from the summaries of either version.
        let first = &records[records.len() / 2].record;
        let range = store
            .read_range(Some(stream), first.captured_at, first.captured_at, Some(first.src.ip()))
            .unwrap();
        assert!(range.iter().any(|r| r.record == *first));
        // Appending after the upgrade goes to a new, version-2 segment.
        store.append(stream, records[..3].to_vec()).unwrap();
        let rows = store.segments(Some(stream)).unwrap();
        assert_eq!(rows.len(), 2);
        let mut file = File::open(old.path().join(&rows[1].path)).unwrap();
        assert_eq!(segment::read_header(&mut file).unwrap().version, segment::VERSION);
        let all = store.read(stream, 0, usize::MAX).unwrap();
        assert_eq!(all.len(), records.len() + 3);
        assert_eq!(all[records.len()].record, records[0].record);
    }
}

#[test]
fn damage_in_version_1_segments_is_repaired_as_before() {
    let records = shared_records(Stream::Syslog);
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<&[NewRecord]> = records.chunks(10).collect();
    let path = write_v1_segment(dir.path(), Stream::Syslog, 0, &chunks);
    let scan = segment::scan(&path, true).unwrap();
    assert_eq!((scan.version, scan.blocks.len(), scan.torn_tail), (1, chunks.len(), false));
    // A torn tail: the last block's write did not finish.
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 5).unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    let kept = store.read(Stream::Syslog, 0, usize::MAX).unwrap();
    let expected = records.len() - chunks.last().unwrap().len();
    assert_eq!(kept.len(), expected, "all but the torn block");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), scan.blocks.last().unwrap().offset);
    drop(store);
    // A flipped byte with blocks after it: quarantined.
    let other = write_v1_segment(
        dir.path(),
        Stream::Snmp,
        0,
        &[&shared_records(Stream::Snmp)[..4], &shared_records(Stream::Snmp)[4..8]],
    );
    let mut file = OpenOptions::new().read(true).write(true).open(&other).unwrap();
    file.seek(SeekFrom::Start(segment::HEADER_LEN + 30)).unwrap();
    file.write_all(b"\xff\xff").unwrap();
    drop(file);
    let store = Store::open(&config(dir.path())).unwrap();
    assert!(store.read(Stream::Snmp, 0, 100).unwrap().is_empty());
    assert_eq!(std::fs::read_dir(dir.path().join("quarantine")).unwrap().count(), 1);
    assert_eq!(store.read(Stream::Syslog, 0, usize::MAX).unwrap().len(), expected);
}

#[test]
fn a_newer_segment_version_is_quarantined_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_v1_segment(dir.path(), Stream::Syslog, 0, &[&batch(0, 3)]);
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(8)).unwrap();
    file.write_all(&(segment::VERSION + 1).to_le_bytes()).unwrap();
    drop(file);
    let store = Store::open(&config(dir.path())).unwrap();
    assert!(store.read(Stream::Syslog, 0, 100).unwrap().is_empty());
    assert_eq!(std::fs::read_dir(dir.path().join("quarantine")).unwrap().count(), 1);
}

#[test]
fn version_2_blocks_are_smaller_on_the_shared_syslog_lines() {
    // The bytes a block of the real syslog lines takes in each layout: the
    // columns and the payload references must pay for themselves.
    let records = shared_records(Stream::Syslog);
    for (codec, level) in [(segment::Codec::Gzip, 6), (segment::Codec::Zstd, 3)] {
        let v1 = segment::encode_block_v1(0, &records, codec, level).unwrap().len();
        let (v2, _) = segment::encode_block(0, &records, codec, level).unwrap();
        assert!(
            (v2.len() as f64) < v1 as f64 * 0.9,
            "{codec:?}: version 2 {} bytes, version 1 {v1} bytes",
            v2.len()
        );
    }
}

#[test]
fn damaged_version_2_frames_are_errors_never_panics() {
    let records = shared_records(Stream::Syslog);
    let (block, _) = segment::encode_block(5, &records[..20], segment::Codec::Gzip, 6).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.seg");
    let mut file = File::create(&path).unwrap();
    segment::write_header(&mut file, 2, Stream::Syslog, segment::Codec::Gzip, SystemTime::now())
        .unwrap();
    file.write_all(&block).unwrap();
    drop(file);
    let meta = segment::scan(&path, true).unwrap().blocks[0];
    let mut file = File::open(&path).unwrap();
    let good = segment::read_block(&mut file, &meta, Stream::Syslog, segment::Codec::Gzip).unwrap();
    assert_eq!(good.len(), 20);
    assert_eq!(good[0].seq, 5);
    // Frames that pass the CRC but lie: every prefix of the real frame,
    // and bytes changed, re-compressed and re-sealed.
    let frame = {
        let mut d = flate2::read::GzDecoder::new(&block[segment::BLOCK_HEADER_LEN as usize..]);
        let mut f = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut f).unwrap();
        f
    };
    let mut variants: Vec<(Vec<u8>, u32)> =
        (0..frame.len()).step_by(7).map(|cut| (frame[..cut].to_vec(), 20)).collect();
    for i in (0..frame.len()).step_by(3) {
        for b in [0x00, 0x7f, 0xff] {
            let mut bad = frame.clone();
            bad[i] = b;
            variants.push((bad, 20));
        }
    }
    variants.push((frame.clone(), 21));
    variants.push((frame.clone(), u32::MAX));
    for (bad, records) in variants {
        let data = segment::Codec::Gzip.compress(&bad, 6).unwrap();
        let mut sealed = Vec::new();
        sealed.extend_from_slice(&(data.len() as u32).to_le_bytes());
        sealed.extend_from_slice(&[0; 4]);
        sealed.extend_from_slice(&5u64.to_le_bytes());
        sealed.extend_from_slice(&records.to_le_bytes());
        sealed.extend_from_slice(&data);
        let crc = crc32c::crc32c(&sealed[8..]);
        sealed[4..8].copy_from_slice(&crc.to_le_bytes());
        let mut file = File::create(&path).unwrap();
        segment::write_header(
            &mut file,
            2,
            Stream::Syslog,
            segment::Codec::Gzip,
            SystemTime::now(),
        )
        .unwrap();
        file.write_all(&sealed).unwrap();
        drop(file);
        let meta = segment::BlockMeta { len: data.len() as u32, records, ..meta };
        let mut file = File::open(&path).unwrap();
        let _ = segment::read_block(&mut file, &meta, Stream::Syslog, segment::Codec::Gzip);
    }
}

// --- re-packing (store::repack) ---

/// Every row's file is there, every segment file on disk has a row, and
/// no re-pack temporary is left.
fn assert_one_file_per_segment(dir: &Path, store: &Store) {
    let mut on_disk = Vec::new();
    for stream in std::fs::read_dir(dir.join("segments")).unwrap().flatten() {
        for day in std::fs::read_dir(stream.path()).unwrap().flatten() {
            for file in std::fs::read_dir(day.path()).unwrap().flatten() {
                on_disk.push(file.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    on_disk.sort();
    let mut rows: Vec<String> = store.segments(None).unwrap().into_iter().map(|r| r.path).collect();
    rows.sort();
    assert_eq!(on_disk, rows, "segment files on disk against index rows");
}

/// Every row's blocks pass their CRCs and hold the records the row says.
fn assert_verifies(dir: &Path, store: &Store) {
    for row in store.segments(None).unwrap() {
        let scan = segment::scan(&dir.join(&row.path), true).unwrap();
        assert!(scan.corrupt.is_none() && !scan.torn_tail, "{row:?}");
        let records: u64 = scan.blocks.iter().map(|b| u64::from(b.records)).sum();
        assert_eq!(records, row.records, "{row:?}");
        assert_eq!(scan.file_len, row.stored_bytes, "{row:?}");
    }
}

/// Rows without what re-packing may change: id, path, size.
fn rows_but_files(store: &Store) -> Vec<SegmentRow> {
    store
        .segments(None)
        .unwrap()
        .into_iter()
        .map(|r| SegmentRow { id: 0, path: String::new(), stored_bytes: 0, ..r })
        .collect()
}

fn everything(store: &Store) -> Vec<StoredRecord> {
    Stream::ALL.into_iter().flat_map(|s| store.read(s, 0, usize::MAX).unwrap()).collect()
}

fn every_exporter(store: &Store) -> Vec<index::StoredExporter> {
    Stream::ALL.into_iter().flat_map(|s| store.exporters(s).unwrap()).collect()
}

const REPACK_ALL: repack::RepackLimits = repack::RepackLimits {
    min_records_per_block: 100,
    block_records: 1000,
    max_segments: usize::MAX,
    max_bytes: u64::MAX,
    max_scans: usize::MAX,
    min_free_bytes: 0,
};

/// A store of every shared capture's records (each stream decoded by the
/// real decoder) appended two at a time, as group commit does at 100
/// records/s, over several segments; reopened, so every segment is sealed.
fn low_rate_store(dir: &Path) -> Store {
    let c = StoreConfig { segment_max_bytes: 32 << 10, ..config(dir) };
    let store = Store::open(&c).unwrap();
    for stream in Stream::ALL.into_iter().filter(|s| *s != Stream::Windows) {
        let records = shared_records(stream);
        // Twice over, so that syslog spans several segments.
        let twice: Vec<NewRecord> = records.iter().chain(&records).cloned().collect();
        for pair in twice.chunks(2) {
            store.append(stream, pair.to_vec()).unwrap();
        }
    }
    drop(store);
    Store::open(&c).unwrap()
}

#[test]
fn repacking_keeps_every_record_identical_and_shrinks_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = low_rate_store(dir.path());
    let before = everything(&store);
    let (rows, exporters) = (rows_but_files(&store), every_exporter(&store));
    let bytes = |store: &Store| -> u64 {
        store.segments(Some(Stream::Syslog)).unwrap().iter().map(|r| r.stored_bytes).sum()
    };
    let syslog_before = bytes(&store);
    assert!(store.segments(Some(Stream::Syslog)).unwrap().len() > 2, "several syslog segments");
    // Every segment of more than one block (a stream with two records in
    // the captures has one block of them: nothing to gain).
    let several: Vec<SegmentRow> = store
        .segments(None)
        .unwrap()
        .into_iter()
        .filter(|r| segment::scan(&dir.path().join(&r.path), false).unwrap().blocks.len() > 1)
        .collect();

    let done = store.repack_pass(&REPACK_ALL).unwrap();
    assert_eq!(done.failed, 0, "{done:?}");
    assert_eq!(done.segments as usize, several.len(), "{done:?}");
    assert!(done.bytes_after < done.bytes_before, "{done:?}");
    assert_eq!(done.records, several.iter().map(|r| r.records).sum::<u64>());
    // Same records, byte for byte and as `segments cat` prints them;
    // the same index rows but for the files; nothing left behind.
    let after = everything(&store);
    assert_eq!(after, before);
    assert_eq!(cat(&after), cat(&before));
    assert_eq!(rows_but_files(&store), rows);
    assert_eq!(every_exporter(&store), exporters);
    assert_one_file_per_segment(dir.path(), &store);
    assert_verifies(dir.path(), &store);
    let syslog_after = bytes(&store);
    assert!(
        syslog_after * 2 < syslog_before,
        "syslog in blocks of 2: {syslog_before} bytes, re-packed: {syslog_after}"
    );
    // Time ranges and exporters are served from the new files too.
    let range = store
        .read_range(None, SystemTime::UNIX_EPOCH, SystemTime::now() + Duration::from_secs(1), None)
        .unwrap();
    assert_eq!(range.len(), before.len());
    // Nothing is wanted twice, and a reopened store reads the same.
    assert_eq!(store.repack_pass(&REPACK_ALL).unwrap(), repack::Repacked::default());
    drop(store);
    let store = Store::open(&config(dir.path())).unwrap();
    assert_eq!(everything(&store), before);
    assert_eq!(store.repack_pass(&REPACK_ALL).unwrap().segments, 0);
    // Appends continue the numbering.
    let next = store.durable_seq(Stream::Syslog).unwrap() + 1;
    assert_eq!(store.append(Stream::Syslog, batch(0, 1)).unwrap().first_seq, next);
}

#[test]
fn repacking_leaves_the_open_segment_version_1_and_large_blocks_alone() {
    let dir = tempfile::tempdir().unwrap();
    let c = StoreConfig { segment_max_bytes: 1 << 20, ..config(dir.path()) };
    let store = Store::open(&c).unwrap();
    // Sealed: blocks of 50 records. Then, open: blocks of one.
    store.append(Stream::Syslog, batch(0, 50)).unwrap();
    store.append(Stream::Syslog, batch(50, 50)).unwrap();
    drop(store);
    let records = shared_records(Stream::Syslog);
    let v1_blocks: Vec<&[NewRecord]> = records[..20].chunks(1).collect();
    write_v1_segment(dir.path(), Stream::Netflow, 0, &v1_blocks);
    let store = Store::open(&c).unwrap();
    for i in 0..10 {
        store.append(Stream::Syslog, batch(100 + i, 1)).unwrap();
    }
    let limits =
        repack::RepackLimits { min_records_per_block: 100, block_records: 50, ..REPACK_ALL };
    // A pass that may not look at any segment's blocks does nothing.
    let blind = repack::RepackLimits { max_scans: 0, block_records: 1000, ..limits };
    assert_eq!(store.repack_pass(&blind).unwrap(), repack::Repacked::default());
    assert_eq!(store.repack_pass(&limits).unwrap(), repack::Repacked::default());
    let wider = repack::RepackLimits { block_records: 1000, ..limits };
    let done = store.repack_pass(&wider).unwrap();
    assert_eq!((done.segments, done.blocks_before, done.blocks_after), (1, 2, 1), "{done:?}");
    let open = store.segments(Some(Stream::Syslog)).unwrap().into_iter().last().unwrap();
    assert_eq!((open.state.as_str(), open.records), ("open", 10));
    assert!(open.path.ends_with(".seg") && !open.path.contains(".r"), "{open:?}");
    assert_eq!(store.read(Stream::Syslog, 0, usize::MAX).unwrap().len(), 110);
    assert_eq!(store.read(Stream::Netflow, 0, usize::MAX).unwrap().len(), 20);
}

#[test]
fn a_crash_at_any_step_of_a_repack_leaves_every_record_exactly_once() {
    use repack::Stop;
    for (stop, rebuild_index) in [
        (Stop::Written, false),
        (Stop::Renamed, false),
        (Stop::Swapped, false),
        (Stop::Renamed, true),
        (Stop::Swapped, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let drop_index = || {
            for name in ["raven.db", "raven.db-wal", "raven.db-shm"] {
                let _ = std::fs::remove_file(dir.path().join(name));
            }
        };
        let mut store = low_rate_store(dir.path());
        if rebuild_index {
            // A rebuilt index has exact first times (an appended one has
            // each segment's first block's): compare like with like.
            drop(store);
            drop_index();
            store = Store::open(&config(dir.path())).unwrap();
        }
        let before = everything(&store);
        let rows = rows_but_files(&store);
        let row = store.segments(Some(Stream::Syslog)).unwrap().remove(1);
        let outcome = store.repack_until(&row, &REPACK_ALL, Some(stop)).unwrap().unwrap();
        assert!(outcome.blocks_after < outcome.blocks_before);
        // What the crash leaves on disk.
        let old = dir.path().join(&row.path);
        let new = old
            .with_file_name(old.file_name().unwrap().to_string_lossy().replace(".seg", ".r1.seg"));
        let temporary =
            new.with_file_name(format!("{}.tmp", new.file_name().unwrap().to_string_lossy()));
        assert!(old.exists(), "{stop:?}: the old file stays until the swap is done");
        assert_eq!(temporary.exists(), stop == Stop::Written, "{stop:?}");
        assert_eq!(new.exists(), stop != Stop::Written, "{stop:?}");
        drop(store);
        if rebuild_index {
            drop_index();
        }
        let store = Store::open(&config(dir.path())).unwrap();
        assert_eq!(everything(&store), before, "{stop:?} rebuild {rebuild_index}");
        assert_eq!(rows_but_files(&store), rows, "{stop:?} rebuild {rebuild_index}");
        assert_one_file_per_segment(dir.path(), &store);
        assert_verifies(dir.path(), &store);
        // Whichever file survived, re-packing finishes the job.
        let done = store.repack_pass(&REPACK_ALL).unwrap();
        assert_eq!(done.failed, 0);
        assert_eq!(everything(&store), before);
        assert_one_file_per_segment(dir.path(), &store);
        let rows = store.segments(Some(Stream::Syslog)).unwrap();
        assert!(rows[1].path.ends_with(".r1.seg"), "{stop:?}: {:?}", rows[1]);
    }
}

#[test]
fn a_segment_evicted_during_its_repack_stays_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let store = low_rate_store(dir.path());
    let row = store.segments(Some(Stream::Syslog)).unwrap().remove(0);
    // Retention took the segment (the swap checks the same under the
    // state lock): the re-pack gives up and leaves no file behind.
    let mut evicted = Evicted::default();
    store.evict(&row, "max_age", &mut evicted).unwrap();
    let failure = store.repack_segment(&row, &REPACK_ALL).unwrap_err();
    assert_eq!(failure.reason, "segment_gone");
    assert_one_file_per_segment(dir.path(), &store);
    assert!(store.read(Stream::Syslog, 0, 1).unwrap()[0].seq > row.last_seq as u64);
}

/// Readers in the agent (the forwarder: `read` from a sequence number, in
/// small batches; a replay: `read_range`) and in a read-only process (`segments cat`: a fresh
/// index connection, `read_range`) keep reading while every segment is
/// re-packed: each read sees every record once, in order, identical. (The
/// read-only reader meets a file deleted under it once or twice a run:
/// the retry `a_read_that_finds_its_file_gone_...` tests on its own.)
#[test]
fn readers_during_a_repack_see_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = low_rate_store(dir.path());
    let expected = store.read(Stream::Syslog, 0, usize::MAX).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let far = SystemTime::now() + Duration::from_secs(3600);
    let (forwarded, catted) = std::thread::scope(|scope| {
        let forwarder = scope.spawn(|| {
            let mut passes = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || passes < 2 {
                let mut got = Vec::new();
                loop {
                    let batch = store.read(Stream::Syslog, got.len() as u64, 37).unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    got.extend(batch);
                }
                assert!(got == expected, "pass {passes}: the forwarder's reads differ");
                // A replay (the API's): the lock per segment, between swaps.
                let got = store.read_range(Some(Stream::Syslog), SystemTime::UNIX_EPOCH, far, None);
                assert!(got.unwrap() == expected, "pass {passes}: a replay's read differs");
                passes += 1;
            }
            passes
        });
        let cat = scope.spawn(|| {
            let reader = Store::open_read_only(dir.path()).unwrap();
            let mut passes = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || passes < 2 {
                let got = reader
                    .read_range(Some(Stream::Syslog), SystemTime::UNIX_EPOCH, far, None)
                    .unwrap();
                assert!(got == expected, "pass {passes}: a read-only reader's read differs");
                let got = reader.read(Stream::Syslog, 0, usize::MAX).unwrap();
                assert!(got == expected, "pass {passes}: a read-only reader's read differs");
                passes += 1;
            }
            passes
        });
        // One segment at a time, so that the readers run between swaps.
        let limits = repack::RepackLimits { max_segments: 1, ..REPACK_ALL };
        let mut repacked = 0;
        while store.repack_pass(&limits).unwrap().segments == 1 {
            repacked += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(repacked > 2, "{repacked}");
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (forwarder.join().unwrap(), cat.join().unwrap())
    });
    assert!(forwarded >= 2 && catted >= 2);
    assert_eq!(store.read(Stream::Syslog, 0, usize::MAX).unwrap(), expected);
}

#[test]
fn a_read_that_finds_its_file_gone_starts_over_a_few_times_only() {
    let gone = || StoreError::Io(io::Error::from(io::ErrorKind::NotFound));
    let mut calls = 0;
    let got = retry_vanished(|| {
        calls += 1;
        if calls < 3 { Err(gone()) } else { Ok(calls) }
    });
    assert_eq!(got.unwrap(), 3, "a re-pack's swap: the next look at the index finds the new file");
    let mut calls = 0;
    let got: Result<(), _> = retry_vanished(|| {
        calls += 1;
        Err(gone())
    });
    assert!(matches!(got, Err(StoreError::Io(_))) && calls == 4, "a file really gone: an error");
    let mut calls = 0;
    let got: Result<(), _> = retry_vanished(|| {
        calls += 1;
        Err(StoreError::Damaged { offset: 0, reason: "CRC".into() })
    });
    assert!(matches!(got, Err(StoreError::Damaged { .. })) && calls == 1, "damage is not retried");
}

#[test]
fn a_spare_copy_is_kept_in_quarantine_when_the_indexed_one_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = low_rate_store(dir.path());
    let row = store.segments(Some(Stream::Syslog)).unwrap().remove(1);
    // Interrupted after the swap: the old file is still there, and then
    // the new (indexed) one is damaged.
    store.repack_until(&row, &REPACK_ALL, Some(repack::Stop::Swapped)).unwrap().unwrap();
    let new = store.segments(Some(Stream::Syslog)).unwrap().remove(1);
    assert!(new.path.ends_with(".r1.seg"), "{new:?}");
    drop(store);
    let mut file = OpenOptions::new().write(true).open(dir.path().join(&new.path)).unwrap();
    file.seek(SeekFrom::Start(segment::HEADER_LEN + segment::BLOCK_HEADER_LEN + 5)).unwrap();
    file.write_all(b"\xff\xff\xff").unwrap();
    drop(file);
    let store = Store::open(&config(dir.path())).unwrap();
    let kept: Vec<String> = std::fs::read_dir(dir.path().join("quarantine"))
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept, [row.path.replace('/', "_")], "the old file is kept aside, not deleted");
    assert_one_file_per_segment(dir.path(), &store);
}

#[test]
fn no_repack_without_room_for_a_copy_above_the_free_space_floor() {
    let dir = tempfile::tempdir().unwrap();
    let store = low_rate_store(dir.path());
    let before = everything(&store);
    let (_, free) = disk_space(dir.path());
    let crowded = repack::RepackLimits { min_free_bytes: free, ..REPACK_ALL };
    let done = store.repack_pass(&crowded).unwrap();
    assert!(done.segments == 0 && done.failed > 0, "{done:?}");
    let row = store.segments(Some(Stream::Syslog)).unwrap().remove(0);
    assert_eq!(store.repack_segment(&row, &crowded).unwrap_err().reason, "no_room");
    assert_eq!(everything(&store), before);
    assert_one_file_per_segment(dir.path(), &store);
    // With room, the same pass goes ahead (the refusal was not remembered).
    assert!(store.repack_pass(&REPACK_ALL).unwrap().segments > 0);
}

/// A range read a segment at a time (replays): each batch is one
/// segment's records, and together they are `read_range`'s, in order —
/// also when every segment is re-packed (their files replaced) between two
/// batches: the reader looks the rest up again and goes on after what it
/// handed out, nothing twice, nothing skipped.
#[test]
fn a_range_is_read_a_segment_at_a_time_and_survives_a_repack_midway() {
    let dir = tempfile::tempdir().unwrap();
    let store = low_rate_store(dir.path());
    let far = SystemTime::now() + Duration::from_secs(3600);
    let everything = store.read_range(None, SystemTime::UNIX_EPOCH, far, None).unwrap();
    let largest = store.segments(None).unwrap().iter().map(|r| r.records).max().unwrap();
    let mut reader = store.range(None, SystemTime::UNIX_EPOCH, far, None).unwrap();
    let mut got = Vec::new();
    let mut batches = 0;
    while let Some(batch) = reader.next_segment().unwrap() {
        assert!(!batch.is_empty() && batch.len() as u64 <= largest, "one segment's worth");
        batches += 1;
        got.extend(batch);
    }
    assert!(batches > 3, "{batches} segments");
    assert!(got == everything, "the batches are the range");

    // Syslog's first segment read, then every segment re-packed.
    let syslog = |records: &[StoredRecord]| -> Vec<StoredRecord> {
        records.iter().filter(|r| r.record.stream == Stream::Syslog).cloned().collect()
    };
    let mut reader = store.range(Some(Stream::Syslog), SystemTime::UNIX_EPOCH, far, None).unwrap();
    let mut got = reader.next_segment().unwrap().unwrap();
    assert!(got.len() < syslog(&everything).len(), "more than one syslog segment");
    let repacked = store.repack_pass(&REPACK_ALL).unwrap().segments;
    assert!(repacked > 1, "{repacked}");
    while let Some(batch) = reader.next_segment().unwrap() {
        got.extend(batch);
    }
    assert!(got == syslog(&everything), "every syslog record once, in order");
}

/// The index runs WAL with `synchronous = NORMAL`: a power cut may lose
/// the re-pack's committed swap while the old file's deletion reached the
/// disk. The index then names a file that is gone, and the re-packed copy
/// (renamed and synced before the swap) is named by no row: opening the
/// store must take the copy for the row, with every record exactly once.
#[test]
fn a_repack_whose_index_commit_is_lost_after_the_old_file_went_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let index_files = ["raven.db", "raven.db-wal", "raven.db-shm"];
    let saved = tempfile::tempdir().unwrap();
    let store = low_rate_store(dir.path());
    let before = everything(&store);
    let rows = rows_but_files(&store);
    let row = store.segments(Some(Stream::Syslog)).unwrap().remove(1);
    drop(store);
    // The index before the swap: what the power cut leaves of it.
    for name in index_files {
        let _ = std::fs::copy(dir.path().join(name), saved.path().join(name));
    }
    let store = Store::open(&config(dir.path())).unwrap();
    let outcome = store.repack_segment(&row, &REPACK_ALL).unwrap().unwrap();
    assert!(outcome.blocks_after < outcome.blocks_before);
    drop(store);
    assert!(!dir.path().join(&row.path).exists(), "the old file is deleted after the swap");
    for name in index_files {
        let _ = std::fs::remove_file(dir.path().join(name));
        let _ = std::fs::copy(saved.path().join(name), dir.path().join(name));
    }
    let db = rusqlite::Connection::open(dir.path().join("raven.db")).unwrap();
    let named: String =
        db.query_row("SELECT path FROM segments WHERE id = ?1", [row.id], |r| r.get(0)).unwrap();
    assert_eq!(named, row.path, "the index names the deleted file again");
    drop(db);
    let store = Store::open(&config(dir.path())).unwrap();
    assert_eq!(everything(&store), before);
    assert_eq!(rows_but_files(&store), rows);
    assert_one_file_per_segment(dir.path(), &store);
    assert_verifies(dir.path(), &store);
}
