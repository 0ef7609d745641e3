//! The task-pack expression language: templates (`{{ … }}`) and conditions.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = stella_packs::expr::Template::parse(text);
    let _ = stella_packs::expr::parse_condition(text);
    let _ = stella_packs::expr::parse(text);
});
