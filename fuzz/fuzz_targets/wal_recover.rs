#![no_main]
use libfuzzer_sys::fuzz_target;

// Arbitrary bytes as the only segment file of a log: opening (recovery) and
// reading must never panic.
fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = custos_wal::format::segment_file_name(0);
    std::fs::write(dir.path().join(name), data).expect("write");
    if let Ok((wal, _)) = custos_wal::Wal::open(custos_wal::WalOptions::new(dir.path())) {
        if let Ok(r) = wal.read_from(0) {
            for _ in r {}
        }
    }
});
