//! One datagram through the syslog decoder.
//!
//! Invariant checked beyond "no panic": every input yields a `message`
//! field (the decoder keeps the text even when nothing else parses).
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use raven_agent::decode::syslog::SyslogDecoder;

fuzz_target!(|data: &[u8]| {
    let received = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let decoded = SyslogDecoder::default().decode(data, received);
    assert!(decoded.fields.contains_key("message"), "no message field: {:?}", decoded.fields);
});
