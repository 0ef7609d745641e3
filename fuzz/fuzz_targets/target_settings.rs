//! Target and router kinds with their settings, validated as target and router
//! creation validate them (`stella_control_plane::fuzzing::target_settings`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stella_control_plane::fuzzing::target_settings(data);
});
