#![no_main]
use libfuzzer_sys::fuzz_target;

// A dead-letter entry file with arbitrary content: listing and reading it
// must report it as damaged, never panic.
fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = std::sync::Arc::new(custos_agent::seal::SealKey::from_bytes(&[3; 32]).expect("key"));
    let Ok(store) = custos_agent::deadletter::DeadLetters::open(dir.path(), key, 1 << 20) else { return };
    let id = "0190f0e4-7a3b-7c1d-8e2f-123456789abc";
    if std::fs::write(store.dir().join(format!("{id}.dl")), data).is_ok() {
        let _ = store.list();
        if let Ok(id) = id.parse() {
            let _ = store.get(&id);
        }
    }
});
