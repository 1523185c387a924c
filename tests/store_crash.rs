//! The store under SIGKILL: a child `raven-agent store load` appends
//! batches and prints each acknowledged (durable) range; the test kills it
//! at random moments, many times, and after each restart checks that every
//! acknowledged record is present exactly once and in order, and that the
//! store verifies clean.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use common::AGENT;

/// Seqs the store holds, from `segments cat`.
fn stored_seqs(dir: &std::path::Path) -> Vec<u64> {
    common::segments_cat(dir, Some("syslog")).iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

#[test]
fn acknowledged_records_survive_random_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: u64 = 0; // records 0..acknowledged are durable
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for round in 0..15 {
        let mut child = Command::new(AGENT)
            .args(["store", "--data-dir"])
            .arg(dir.path())
            .args(["load", "--records", "1000000", "--batch", "37", "--segment-max-bytes", "8192"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        thread::sleep(Duration::from_millis(50 + rng % 250));
        child.kill().unwrap();
        child.wait().unwrap();
        // Every range it printed before it died, read to the pipe's end:
        // one still in the pipe would go unchecked.
        reader.join().unwrap();
        let mut last_acked = None;
        for line in rx.try_iter() {
            let (first, last) = line.split_once(' ').unwrap();
            let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
            // A batch written and synced but killed before it was indexed
            // and acknowledged is found by the next start's reconcile: the
            // sequence may skip ahead by at most that one batch.
            assert!(
                first >= acknowledged && first - acknowledged <= 37,
                "round {round}: range {first}.. after {acknowledged} acknowledged"
            );
            acknowledged = last + 1;
            last_acked = Some(last);
        }
        let seqs = stored_seqs(dir.path());
        assert!(
            seqs.len() as u64 >= acknowledged,
            "round {round}: {} stored < {acknowledged} acknowledged",
            seqs.len()
        );
        assert!(
            seqs.iter().enumerate().all(|(i, s)| *s == i as u64),
            "round {round}: not dense and in order (or duplicated)"
        );
        // A batch written but killed before its acknowledgement reached us
        // may be there too: it becomes part of the sequence.
        acknowledged = seqs.len() as u64;
        println!("round {round}: last acknowledged {last_acked:?}, stored {}", seqs.len());
    }
    common::assert_store_verifies(dir.path());
    assert!(acknowledged > 0, "the writer never got a batch in");
}

/// A tmpfs mount removed on drop, failures too.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_evicts_the_oldest_and_writing_goes_on() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount(dir.path().join("small"));
    std::fs::create_dir(&mount.0).unwrap();
    common::sh(Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&mount.0));
    let out = Command::new(AGENT)
        .args(["store", "--data-dir"])
        .arg(&mount.0)
        .args(["load", "--records", "400000", "--batch", "4000", "--segment-max-bytes", "65536"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().last() == Some("396000 399999"), "every batch acknowledged");
    let seqs = stored_seqs(&mount.0);
    assert_eq!(seqs.last(), Some(&399_999), "the newest records are kept");
    assert!(seqs.len() < 400_000, "the disk was too small for all: the oldest went");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "what is left is contiguous");
    common::assert_store_verifies(&mount.0);
    println!("kept {} of 400000 records on a 2 MiB filesystem", seqs.len());
}

/// I/O faults injected by libfiu (`fiu-run`, Debian `fiu-utils`) into the
/// real binary: `fdatasync` failing (EIO and the other errors it may
/// return), `pwrite` failing, and `pwrite` writing short. SQLite's own
/// writes go through the same calls, so index updates fail too. The load
/// must stay alive, count the failures, acknowledge only what is durable,
/// and every acknowledged record must be there, once and in order.
#[test]
fn acknowledged_records_survive_injected_io_faults() {
    let dir = tempfile::tempdir().unwrap();
    // The store exists before the faults start (the index schema is in
    // place), as on an appliance whose disk starts failing in service.
    let created = Command::new(AGENT)
        .args(["store", "--data-dir"])
        .arg(dir.path())
        .args(["load", "--records", "0"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let out = Command::new("fiu-run")
        .args(["-x", "-c", "enable_random name=posix/io/sync/fdatasync,probability=0.05"])
        .args(["-c", "enable_random name=posix/io/rw/pwrite,probability=0.02"])
        .args(["-c", "enable_random name=posix/io/rw/pwrite/reduce,probability=0.02"])
        .arg(AGENT)
        .args(["store", "--data-dir"])
        .arg(dir.path())
        .args(["load", "--records", "20000", "--batch", "50", "--segment-max-bytes", "16384"])
        .output()
        .expect("fiu-run (Debian package fiu-utils; `cargo xtask setup --test-deps`)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the load died under faults: {stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(stderr.lines().last().expect("a summary line")).unwrap();
    println!("{summary}");
    assert!(
        summary["write_failures"].as_u64().unwrap() > 0,
        "no fault was injected: is fiu_posix_preload.so working? {summary}"
    );
    // Acknowledged ranges, in order; an append that failed after its
    // retries left no range and no sequence numbers behind.
    let mut acknowledged = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (first, last) = line.split_once(' ').unwrap();
        let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
        assert_eq!(first, acknowledged.len() as u64, "ranges are dense");
        acknowledged.extend(first..=last);
    }
    let failed = summary["failed_records"].as_u64().unwrap();
    assert_eq!(acknowledged.len() as u64 + failed, 20_000, "{summary}");
    // Read back without faults: the acknowledged records, except that an
    // injected ENOSPC is a full disk to the store, which evicts its oldest
    // segments (counted) and retries: those are a prefix.
    let evicted = summary["evicted_records"].as_u64().unwrap() as usize;
    let stored = stored_seqs(dir.path());
    assert!(evicted < acknowledged.len(), "{summary}");
    let kept = &acknowledged[evicted..];
    assert_eq!(stored.len(), kept.len(), "{summary}");
    let first_difference = stored.iter().zip(kept).position(|(s, k)| s != k);
    assert_eq!(first_difference, None, "stored differs from acknowledged");
    common::assert_store_verifies(dir.path());
}

/// Re-packing (`raven-agent store repack`) under SIGKILL: a store of small
/// blocks (batches of 3, many segments) is re-packed by a child killed at
/// random moments, again and again. After every kill, `segments cat` (read
/// only: what the index names, nothing repaired) prints exactly what it
/// printed before, and the store verifies; the next start removes what the
/// killed one left, and in the end every segment is re-packed, with no
/// file left over.
#[test]
fn repacking_survives_random_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let load = Command::new(AGENT)
        .args(["store", "--data-dir"])
        .arg(dir.path())
        .args(["load", "--records", "9000", "--batch", "3", "--segment-max-bytes", "16384"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    let before = common::segments_cat(dir.path(), None);
    assert_eq!(before.len(), 9000);
    let segment_files = |dir: &std::path::Path| -> Vec<String> {
        let mut out = Vec::new();
        for day in std::fs::read_dir(dir.join("segments/syslog")).unwrap().flatten() {
            for f in std::fs::read_dir(day.path()).unwrap().flatten() {
                out.push(f.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        out
    };
    let segments = segment_files(dir.path()).len();
    assert!(segments > 10, "{segments} segments");
    // How long a whole re-pack takes here, and a start that finds nothing
    // to do (on a copy): the kills land at random moments within the work,
    // however fast or slow this machine is (with fixed delays, a fast one
    // finishes before enough kills land midway).
    let copy = tempfile::tempdir().unwrap();
    common::sh(Command::new("cp").arg("-a").arg(dir.path().join(".")).arg(copy.path()));
    let timed = || {
        let started = std::time::Instant::now();
        let out = Command::new(AGENT)
            .args(["store", "--data-dir"])
            .arg(copy.path())
            .arg("repack")
            .output();
        let out = out.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        started.elapsed().as_millis() as u64
    };
    let (whole, start) = (timed(), timed());
    let work = whole.saturating_sub(start).max(10);
    println!("a whole re-pack takes {whole} ms here, a start {start} ms");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    // Kills that left the store part re-packed (what this test is about).
    let mut midway = 0;
    for round in 0..40 {
        let mut child = Command::new(AGENT)
            .args(["store", "--data-dir"])
            .arg(dir.path())
            .arg("repack")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // After the start, within the first fifth of the work.
        thread::sleep(Duration::from_millis(start + rng % (work / 5)));
        if child.try_wait().unwrap().is_some_and(|status| status.success()) {
            println!("round {round}: the re-pack finished before the kill");
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(common::segments_cat(dir.path(), None), before, "round {round}");
        common::assert_store_verifies(dir.path());
        let repacked = segment_files(dir.path()).iter().filter(|f| f.contains(".r1.")).count();
        if repacked > 0 && repacked < segments {
            midway += 1;
        }
    }
    println!("{midway} kills landed in the middle of a re-pack");
    assert!(midway >= 3, "only {midway} kills landed in the middle of a re-pack");
    let done = Command::new(AGENT)
        .args(["store", "--data-dir"])
        .arg(dir.path())
        .arg("repack")
        .output()
        .unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(common::segments_cat(dir.path(), None), before);
    common::assert_store_verifies(dir.path());
    let files = segment_files(dir.path());
    assert!(
        files.iter().all(|f| f.ends_with(".r1.seg")),
        "every segment re-packed once: {files:?}"
    );
    assert_eq!(files.len(), segments, "one file per segment, nothing left over");
}
