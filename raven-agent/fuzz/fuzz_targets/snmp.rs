//! One datagram through the SNMP decoder and the forwarder's classifier.
//!
//! Invariants checked beyond "no panic": an inform's reply is the same
//! message with one byte changed and is not itself answered; the community
//! never appears in a parse error's detail.
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
    if let (Some(error), Some(community)) =
        (&decoded.parse_error, decoded.fields.get("community").and_then(|c| c.as_str()))
        && community.len() >= 4
    {
        assert!(!error.detail.contains(community), "community in {:?}", error.detail);
    }
});
