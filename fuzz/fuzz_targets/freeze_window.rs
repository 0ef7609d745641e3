//! Freeze window specs (`CRON/DURATION[@TZ]`) as `--freeze` and the API take them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = std::str::from_utf8(data) {
        let _ = stella_decision::freeze::FreezeWindow::parse(spec);
    }
});
