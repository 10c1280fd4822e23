#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sealpipe::fuzz::ring_pod_ops(data));
