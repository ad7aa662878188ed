#![no_main]
use libfuzzer_sys::fuzz_target;

// The agent's control socket parser: any bytes a local peer sends must give
// a request or a clear error, never a panic.
fuzz_target!(|data: &[u8]| {
    let _ = custos_agent::control::parse_request(data);
});
