//! A sequence of datagrams through one stateful NetFlow/IPFIX decoder, so
//! templates learned from one datagram apply to the next (the input is
//! framed: see `raven_agent::decode::samples`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use raven_agent::decode::{flow::FlowDecoder, samples};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FlowDecoder::default();
    for (selector, payload) in samples::frames(data) {
        let _ = decoder.decode(samples::exporter(selector), payload);
    }
});
