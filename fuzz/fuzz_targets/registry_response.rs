//! What a registry sends back: manifests and image indexes, `Docker-Content-Digest`,
//! `WWW-Authenticate` challenges and token responses
//! (`stella_control_plane::fuzzing::registry_response`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stella_control_plane::fuzzing::registry_response(data);
});
