//! One body through the Windows event decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raven_agent::decode::windows_event;

fuzz_target!(|data: &[u8]| {
    let decoded = windows_event(data);
    assert_eq!(decoded.parse_error.is_none(), decoded.fields.contains_key("event"));
});
