//! RFC 8785 canonical JSON, which every hash and signature is made over: any JSON value
//! canonicalises without panicking, and canonicalising the result changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(once) = stella_decision::canonical::canonical_value(&value) else {
        return;
    };
    let again: serde_json::Value = serde_json::from_slice(&once).expect("canonical JSON is JSON");
    let twice = stella_decision::canonical::canonical_value(&again).expect("canonicalises again");
    assert_eq!(once, twice, "canonical JSON is a fixed point");
});
