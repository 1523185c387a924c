//! Bytes as a capture file (`raven-agent decode FILE`): the pcap/pcapng
//! reader, then every datagram it finds through the decoder of its stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raven_agent::{
    config::DecodeConfig,
    decode::{Decoder, capture_file, samples},
    record::{Record, Via},
};

fuzz_target!(|data: &[u8]| {
    let Ok(capture) = capture_file::read(data) else { return };
    let batch: Vec<Record> = capture
        .datagrams
        .into_iter()
        .filter_map(|d| {
            let stream = samples::stream_of(d.src.port(), d.dst.port(), &d.payload)?;
            Some(Record {
                captured_at: d.captured_at,
                stream,
                src: d.src,
                dst_port: d.dst.port(),
                ifindex: 0,
                wire_len: d.payload.len() as u32,
                truncated: false,
                via: Via::File,
                payload: d.payload,
            })
        })
        .collect();
    let _ = Decoder::new(&DecodeConfig::default()).decode_batch(&batch);
});
