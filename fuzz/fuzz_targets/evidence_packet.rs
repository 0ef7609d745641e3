//! Evidence packets as `stella evidence verify` reads them from a file anyone may hand
//! over: unpacking refuses what is not a plain set of files and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stella_decision::evidence::Packet::read(data);
});
