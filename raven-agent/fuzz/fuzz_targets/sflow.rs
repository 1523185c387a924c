//! One datagram through the sFlow v5 decoder.
//!
//! Invariant checked beyond "no panic": a parse error's reason is one of
//! the fixed set (`sflow::REASONS`), since it becomes a metric label.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raven_agent::decode::sflow::{REASONS, SflowDecoder};

fuzz_target!(|data: &[u8]| {
    let (decoded, _) = SflowDecoder::default().decode(data);
    if let Some(e) = &decoded.parse_error {
        assert!(REASONS.contains(&e.reason), "reason {:?} not in REASONS", e.reason);
    }
});
