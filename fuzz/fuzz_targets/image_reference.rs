//! Image references as releases, pushes and offline imports name them: parsing never
//! panics, and a parsed reference prints as one that parses back to it
//! (`stella_control_plane::fuzzing::image_reference`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stella_control_plane::fuzzing::image_reference(data);
});
