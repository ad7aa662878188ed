#![no_main]
use libfuzzer_sys::fuzz_target;

// Arbitrary bytes as an audit log (a segment file and, after the first
// 0xFF byte, a checkpoint file): offline verification and reading must never
// panic, only report damage. The verifier reads files an attacker may have
// edited, so they are untrusted input.
fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, cps) = match data.iter().position(|b| *b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    std::fs::write(dir.path().join(custos_audit::format::segment_file_name(0)), seg).expect("write");
    std::fs::write(dir.path().join(custos_audit::format::CHECKPOINT_FILE_NAME), cps).expect("write");
    let key = custos_audit::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
    let _ = custos_audit::verify(dir.path(), &key);
    if let Ok(r) = custos_audit::AuditReader::open(dir.path()) {
        let _ = r.list(&custos_audit::RecordFilter::default());
    }
});
