//! The config front: any text is either a runtime or a list of problems, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gateway::config::compile("fuzz.toml", text, std::path::Path::new("/nonexistent"), None);
    }
});
