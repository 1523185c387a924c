//! One datagram through the SNMP decoder and the forwarder's classifier.
//!
//! Invariants checked beyond "no panic": an inform's reply is the same
//! message with one byte changed and is not itself answered. (That the
//! community stays out of error details is a unit test: a fuzzed community
//! can spell any fixed text, so it cannot be checked by substring here.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use raven_agent::decode::snmp;

fuzz_target!(|data: &[u8]| {
    let decoded = snmp::decode(data);
    let _ = snmp::classify(data);
    if let Some(reply) = &decoded.reply {
        assert_eq!(reply.len(), data.len());
        assert_eq!(reply.iter().zip(data).filter(|(a, b)| a != b).count(), 1);
        assert!(snmp::decode(reply).reply.is_none(), "a reply was answered");
    }
});
