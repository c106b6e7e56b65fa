//! Any bytes as a chunked response body: chunk sizes, extensions, CRLFs, trailers.
#![no_main]

use cutover_proxy::h1_codec::{Chunk, Decoder};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cutover_fuzz::check_cuts(data, false, Some(Decoder::Chunked(Chunk::Size)));
});
