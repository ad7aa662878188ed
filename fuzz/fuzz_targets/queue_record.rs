#![no_main]
use libfuzzer_sys::fuzz_target;

// The agent queue's record decoder: any payload read back from disk (a
// damaged or tampered queue) must decode or give a clear error, never panic.
fuzz_target!(|data: &[u8]| {
    let _ = custos_agent::queue::format::decode(data);
});
