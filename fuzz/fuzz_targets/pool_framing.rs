#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sealpipe::fuzz::pool_framing(data));
