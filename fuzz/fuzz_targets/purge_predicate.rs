#![no_main]
use libfuzzer_sys::fuzz_target;

// A purge predicate (`custos purge create --where`, the API's `where`):
// any text parses or gives an error naming where, never panics; whatever
// parses prints back to a predicate that parses to the same thing.
fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = custos_store::purge::Predicate::parse(text) {
            let again = custos_store::purge::Predicate::parse(&p.to_sql()).expect("canonical form parses");
            assert_eq!(again, p);
        }
    }
});
