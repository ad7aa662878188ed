#![no_main]
use std::sync::{Arc, OnceLock};

use custos_model::{Category, Level};
use custos_redact::{Context, LinePrefilter, Policy, PseudonymKey, Redacted, Redactor, Session};
use libfuzzer_sys::fuzz_target;

// The redaction engine over any text (every log line is untrusted): it
// must never panic, every span must lie on character boundaries, and
// redacting its own output must change nothing. Taken as a block of lines,
// the block prefilter's hints must not change any line's findings.
fuzz_target!(|data: &[u8]| {
    static R: OnceLock<Arc<Redactor>> = OnceLock::new();
    let r = R.get_or_init(|| {
        let p = Policy::from_toml("[detect]\nany_fqdn = true\ndomains = ['example.com']\nhostnames = ['db01']").unwrap();
        Arc::new(Redactor::new(p, None, Some(&PseudonymKey::new([1; 32]))).unwrap())
    });
    let text = String::from_utf8_lossy(data);
    for s in r.find(&text) {
        assert!(text.is_char_boundary(s.start) && text.is_char_boundary(s.end) && s.start < s.end);
    }
    let mut lines = Vec::new();
    let mut at = 0;
    for l in text.split('\n') {
        lines.push(at..at + l.len());
        at += l.len() + 1;
    }
    let mut pre = LinePrefilter::new();
    pre.scan(r, text.as_bytes(), &lines);
    let mut hinted = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        r.find_hinted(&text[l.clone()], pre.hints(i), &mut hinted);
        assert_eq!(r.find(&text[l.clone()]), hinted);
    }
    let ctx = Context { table: "syslog", category: Category::Logs, level: Level::Full };
    let mut session = Session::new(r.clone());
    if let Redacted::Text(once) = session.redact_str(&text, &ctx) {
        let once = once.into_owned();
        if let Redacted::Text(twice) = session.redact_str(&once, &ctx) {
            assert_eq!(once, twice);
        }
    }
});
