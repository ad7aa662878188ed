#![no_main]
use libfuzzer_sys::fuzz_target;

// Arbitrary bytes as the ledger's only segment file (after the first 0xFF
// byte, a second segment following it): verification, listing and the
// writer's recovery must never panic, only report damage. The ledger lives in
// a state dir anyone with root can edit, so its files are untrusted input.
fuzz_target!(|data: &[u8]| {
    use custos_agent::ledger::{self, Filter, Ledger, LedgerOptions, LedgerReader};
    let state = tempfile::tempdir().expect("tempdir");
    let dir = ledger::ledger_dir(state.path());
    std::fs::create_dir(&dir).expect("mkdir");
    let (first, second) = match data.iter().position(|b| *b == 0xFF) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    std::fs::write(dir.join(ledger::segment_file_name(0)), first).expect("write");
    if let Some(second) = second {
        std::fs::write(dir.join(ledger::segment_file_name(2)), second).expect("write");
    }
    let _ = ledger::verify(state.path());
    if let Ok(r) = LedgerReader::open(state.path()) {
        let _ = r.list(&Filter::default());
    }
    if let Ok(mut l) = Ledger::open(state.path(), LedgerOptions::default()) {
        let _ = l.prune(0);
        let _ = l.append_ack(custos_model::BatchId::new(), "fuzz", 0, 0, 0);
    }
});
