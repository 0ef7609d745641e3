//! DSSE envelopes and the in-toto statements inside them, as decision records and
//! imported evidence arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = stella_decision::dsse::Envelope::from_json(data) {
        if let Ok(payload) = envelope.payload_bytes() {
            let _ = stella_decision::intoto::Statement::parse(&payload);
        }
        let _ = envelope.to_canonical();
    }
    let _ = stella_decision::intoto::Statement::parse(data);
});
