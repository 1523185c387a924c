//! A batch of records of any stream through `Decoder::decode_batch`, the
//! pipeline's entry point: every stream in `Stream::ALL` is reachable (the
//! selector byte of each framed datagram picks it), so a decoder added
//! later is fuzzed without a new target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raven_agent::{
    config::DecodeConfig,
    decode::{Decoder, samples},
    record::Record,
};

fuzz_target!(|data: &[u8]| {
    let decoder = Decoder::new(&DecodeConfig::default());
    let batch: Vec<Record> =
        samples::frames(data).map(|(s, payload)| samples::framed_record(s, payload)).collect();
    let decoded = decoder.decode_batch(&batch);
    assert_eq!(decoded.len(), batch.len());
    // decode_batch keeps the agent alive through a decoder's panic (the
    // record is kept raw, `decoder_panic`); here that is the finding.
    assert!(!decoded.iter().flatten().any(|d| d.panicked()), "a decoder panicked");
});
