//! Any bytes as an instance's response: head (after any 1xx), framing, and body.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let head_only = data.first().is_some_and(|b| b & 0x80 != 0);
    cutover_fuzz::check_cuts(data, head_only, None);
});
