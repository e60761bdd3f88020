#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| guardline_fuzz::decode_json(data));
