//! Offline kits as `stella offline verify|import` reads them: the tar is unpacked and
//! verified (against no trusted key, so every kit is refused somewhere) without panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(kit) = stella_decision::offline::Kit::from_tar(data) {
        assert!(stella_decision::offline::verify_kit(&kit, &[]).is_err());
    }
});
