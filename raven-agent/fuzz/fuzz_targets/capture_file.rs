//! Bytes as a capture file (`raven-agent decode FILE`): the pcap/pcapng
//! reader, then every datagram it finds through the decoder of its stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raven_agent::{
    config::DecodeConfig,
    decode::{Decoder, capture_file, samples},
};

fuzz_target!(|data: &[u8]| {
    let stream_of =
        |d: &capture_file::Datagram| samples::stream_of(d.src.port(), d.dst.port(), &d.payload);
    let Ok(batch) = raven_agent::decode::cli::capture_records(data, stream_of) else { return };
    let _ = Decoder::new(&DecodeConfig::default()).decode_batch(&batch);
});
