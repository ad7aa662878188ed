#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = custos_model::wire::decode(data, &custos_model::wire::Limits::default());
});
