//! One datagram through the SNMP decoder (with the USM users of the shared
//! Net-SNMP capture, so authentication and decryption run too) and the
//! forwarder's classifier.
//!
//! Invariants checked beyond "no panic": a v2c inform's reply is the same
//! message with one byte changed, and no reply is itself answered. (That
//! the community stays out of error details is a unit test: a fuzzed
//! community can spell any fixed text, so no substring check works here.)
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use raven_agent::decode::{
    snmp::{self, SnmpDecoder},
    usm::{AuthProtocol, LocalEngine, PrivProtocol, Usm, User},
};

/// One decoder for the whole run: deriving keys costs 1 MiB of hashing per
/// passphrase, and its key cache is bounded (that bound is fuzzed too).
fn decoder() -> &'static SnmpDecoder {
    static DECODER: OnceLock<SnmpDecoder> = OnceLock::new();
    DECODER.get_or_init(|| {
        // The credentials of ../shared/data/_generated-locally/net-snmp-5.9.3.
        let user = |name| {
            let privacy = Some((PrivProtocol::Aes128, &b"ravenprivpass"[..]));
            User::new(name, None, AuthProtocol::Sha1, b"ravenauthpass", privacy)
        };
        let users = Usm::new(vec![user("raventest"), user("raveninform")]);
        SnmpDecoder::new(users, LocalEngine::ephemeral(""))
    })
}

fuzz_target!(|data: &[u8]| {
    let decoded = decoder().decode(data);
    let _ = snmp::classify(data);
    if let Some(reply) = &decoded.reply {
        if decoded.fields.get("version").and_then(|v| v.as_str()) == Some("2c") {
            assert_eq!(reply.len(), data.len());
            assert_eq!(reply.iter().zip(data).filter(|(a, b)| a != b).count(), 1);
        }
        assert!(decoder().decode(reply).reply.is_none(), "a reply was answered");
    }
});
