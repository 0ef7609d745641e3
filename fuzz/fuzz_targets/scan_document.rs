//! Scan reports and VEX as `POST /api/v1/scans` takes them (Trivy, Grype, OpenVEX,
//! detected by content): parsing never panics, and a parsed document yields a verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stella_decision::scan::parse_document(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = stella_decision::scan::parse_block_severity(text);
    }
});
