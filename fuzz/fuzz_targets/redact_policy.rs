#![no_main]
use libfuzzer_sys::fuzz_target;

// A redaction policy file (operators write them; the server accepts them
// per workspace over the API): any bytes parse or give an error, never panic.
fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = custos_redact::Policy::from_toml(text);
    }
});
