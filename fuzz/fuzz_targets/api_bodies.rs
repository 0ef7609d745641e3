//! The API's JSON request bodies, decoded as its `ApiJson` extractor decodes them and
//! checked as the handlers check them before the store
//! (`stella_control_plane::fuzzing::api_bodies`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stella_control_plane::fuzzing::api_bodies(data);
});
