//! The behaviour every [`Storage`] implementation must show.
//!
//! Each check works under its own fresh prefix (`conformance/<uuid>/`), so
//! the suite can run against a shared bucket, and cleans up after itself.
//! Checks panic with a message naming the broken behaviour. Enable the
//! `conformance` feature to use this module from another crate's tests:
//!
//! ```ignore
//! custos_store::conformance::run_all(&*storage).await;
//! ```

use crate::{Storage, StoreError};
use bytes::Bytes;

fn scratch() -> String {
    format!("conformance/{}", uuid::Uuid::new_v4().simple())
}

fn pattern(len: usize, seed: u8) -> Bytes {
    Bytes::from((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>())
}

async fn put_ok(s: &dyn Storage, path: &str, bytes: Bytes) {
    if let Err(e) = s.put(path, bytes).await {
        panic!("{}: put {path:?} failed: {e}", s.uri());
    }
}

async fn get_ok(s: &dyn Storage, path: &str) -> Bytes {
    match s.get(path).await {
        Ok(b) => b,
        Err(e) => panic!("{}: get {path:?} failed: {e}", s.uri()),
    }
}

async fn cleanup(s: &dyn Storage, prefix: &str) {
    if let Ok(objects) = s.list(prefix).await {
        for o in objects {
            let _ = s.delete(&o.path).await;
        }
    }
}

/// Run every check.
pub async fn run_all(s: &dyn Storage) {
    put_then_get_returns_the_same_bytes(s).await;
    put_overwrites_an_existing_object(s).await;
    missing_object_is_a_not_found_error_naming_the_path(s).await;
    range_reads_return_exactly_the_requested_bytes(s).await;
    out_of_range_reads_are_refused(s).await;
    list_returns_objects_under_a_prefix_sorted_with_sizes(s).await;
    delete_removes_and_is_idempotent(s).await;
    traversal_and_malformed_paths_are_refused(s).await;
    large_object_round_trips(s).await;
    concurrent_overwrites_leave_one_complete_object(s).await;
}

/// `put` then `get` gives back the same bytes, including an empty object,
/// and `size` reports the length.
pub async fn put_then_get_returns_the_same_bytes(s: &dyn Storage) {
    let dir = scratch();
    for (name, bytes) in [("a", pattern(1000, 1)), ("nested/deeper/b.bin", pattern(17, 2)), ("empty", Bytes::new())] {
        let path = format!("{dir}/{name}");
        put_ok(s, &path, bytes.clone()).await;
        assert_eq!(get_ok(s, &path).await, bytes, "{}: get {path:?} after put", s.uri());
        match s.size(&path).await {
            Ok(n) => assert_eq!(n, bytes.len() as u64, "{}: size of {path:?}", s.uri()),
            Err(e) => panic!("{}: size {path:?} failed: {e}", s.uri()),
        }
    }
    cleanup(s, &dir).await;
}

/// A second `put` to the same path replaces the object entirely (a shorter
/// object leaves no tail of the longer one).
pub async fn put_overwrites_an_existing_object(s: &dyn Storage) {
    let path = format!("{}/obj", scratch());
    put_ok(s, &path, pattern(4096, 3)).await;
    let second = pattern(10, 4);
    put_ok(s, &path, second.clone()).await;
    assert_eq!(get_ok(s, &path).await, second, "{}: overwrite of {path:?}", s.uri());
    cleanup(s, &path).await;
}

/// `get`, `get_range` and `size` of an absent object are `NotFound` errors
/// whose message names the path.
pub async fn missing_object_is_a_not_found_error_naming_the_path(s: &dyn Storage) {
    let path = format!("{}/does-not-exist", scratch());
    let check = |what: &str, r: Result<(), StoreError>| match r {
        Err(StoreError::NotFound { path: p, .. }) => {
            assert_eq!(p, path, "{}: {what} names the path", s.uri());
        }
        other => panic!("{}: {what} of missing {path:?} gave {other:?}, expected NotFound", s.uri()),
    };
    check("get", s.get(&path).await.map(|_| ()));
    check("get_range", s.get_range(&path, 0..1).await.map(|_| ()));
    check("size", s.size(&path).await.map(|_| ()));
    if let Err(e) = s.get(&path).await {
        assert!(e.to_string().contains(&path), "{}: message {e} names the path", s.uri());
    }
}

/// Range reads return exactly the requested slice, including the empty range
/// and the range ending at the last byte.
pub async fn range_reads_return_exactly_the_requested_bytes(s: &dyn Storage) {
    let path = format!("{}/ranged", scratch());
    let data = pattern(10_000, 5);
    put_ok(s, &path, data.clone()).await;
    for r in [0..10_000u64, 0..1, 9_999..10_000, 1234..5678, 500..500, 10_000..10_000] {
        match s.get_range(&path, r.clone()).await {
            Ok(b) => assert_eq!(b, data.slice(r.start as usize..r.end as usize), "{}: range {r:?}", s.uri()),
            Err(e) => panic!("{}: get_range {path:?} {r:?} failed: {e}", s.uri()),
        }
    }
    cleanup(s, &path).await;
}

/// A range past the end, or reversed, is a `RangeOutOfBounds` error.
pub async fn out_of_range_reads_are_refused(s: &dyn Storage) {
    let path = format!("{}/short", scratch());
    put_ok(s, &path, pattern(100, 6)).await;
    #[allow(clippy::reversed_empty_ranges)]
    for r in [0..101u64, 100..101, 200..300, 50..40] {
        match s.get_range(&path, r.clone()).await {
            Err(StoreError::RangeOutOfBounds { size: 100, .. }) => {}
            other => panic!("{}: get_range {r:?} of a 100-byte object gave {other:?}", s.uri()),
        }
    }
    cleanup(s, &path).await;
}

/// `list` is a plain string-prefix match over full paths, sorted, with sizes.
pub async fn list_returns_objects_under_a_prefix_sorted_with_sizes(s: &dyn Storage) {
    let dir = scratch();
    for (name, len) in [("a/2", 2usize), ("a/1", 1), ("b/1", 3), ("ab", 4), ("a/deep/x", 5)] {
        put_ok(s, &format!("{dir}/{name}"), pattern(len, 7)).await;
    }
    let names = |prefix: String| list_relative(s, &dir, prefix);
    let own = |v: &[(&str, u64)]| v.iter().map(|(n, l)| (n.to_string(), *l)).collect::<Vec<_>>();
    assert_eq!(
        names(format!("{dir}/a/")).await,
        own(&[("a/1", 1), ("a/2", 2), ("a/deep/x", 5)]),
        "{}: list with a directory prefix",
        s.uri()
    );
    assert_eq!(
        names(format!("{dir}/a")).await,
        own(&[("a/1", 1), ("a/2", 2), ("a/deep/x", 5), ("ab", 4)]),
        "{}: list with a partial-name prefix",
        s.uri()
    );
    assert_eq!(names(format!("{dir}/")).await.len(), 5, "{}: list everything under the scratch dir", s.uri());
    assert!(names(format!("{dir}/zzz")).await.is_empty(), "{}: list of an unused prefix", s.uri());
    cleanup(s, &dir).await;
    assert!(names(format!("{dir}/")).await.is_empty(), "{}: list after deleting everything", s.uri());
}

/// List `prefix` and strip `dir/` from the paths.
async fn list_relative(s: &dyn Storage, dir: &str, prefix: String) -> Vec<(String, u64)> {
    match s.list(&prefix).await {
        Ok(v) => v.into_iter().map(|o| (o.path[dir.len() + 1..].to_string(), o.size)).collect(),
        Err(e) => panic!("{}: list {prefix:?} failed: {e}", s.uri()),
    }
}

/// `delete` removes the object; deleting again (or deleting a path never
/// written) is `Ok`.
pub async fn delete_removes_and_is_idempotent(s: &dyn Storage) {
    let path = format!("{}/doomed", scratch());
    put_ok(s, &path, pattern(10, 8)).await;
    for attempt in 0..2 {
        if let Err(e) = s.delete(&path).await {
            panic!("{}: delete {path:?} (attempt {attempt}) failed: {e}", s.uri());
        }
    }
    assert!(
        matches!(s.get(&path).await, Err(StoreError::NotFound { .. })),
        "{}: {path:?} still readable after delete",
        s.uri()
    );
}

/// Absolute paths, `..`/`.`/empty components, backslashes and NUL are refused
/// by every operation, before touching storage.
pub async fn traversal_and_malformed_paths_are_refused(s: &dyn Storage) {
    let bad = [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../escape",
        "a/./b",
        "a//b",
        "a/",
        "..",
        "a\\..\\b",
        "a\0b",
        "/",
    ];
    for path in bad {
        let refused = |op: &str, r: Result<(), StoreError>| match r {
            Err(StoreError::InvalidPath { .. }) => {}
            other => panic!("{}: {op} {path:?} gave {other:?}, expected InvalidPath", s.uri()),
        };
        refused("put", s.put(path, Bytes::from_static(b"x")).await);
        refused("get", s.get(path).await.map(|_| ()));
        refused("get_range", s.get_range(path, 0..1).await.map(|_| ()));
        refused("delete", s.delete(path).await);
        refused("size", s.size(path).await.map(|_| ()));
    }
    for prefix in ["/", "../", "a/../", "a//", "a\\b", "x\0"] {
        assert!(
            matches!(s.list(prefix).await, Err(StoreError::InvalidPath { .. })),
            "{}: list {prefix:?} should be refused",
            s.uri()
        );
    }
}

/// An 8 MiB object round-trips through `put`, `get`, `size` and a range read.
pub async fn large_object_round_trips(s: &dyn Storage) {
    let path = format!("{}/large", scratch());
    let data = pattern(8 << 20, 9);
    put_ok(s, &path, data.clone()).await;
    let back = get_ok(s, &path).await;
    assert!(back == data, "{}: 8 MiB object differs after round trip", s.uri());
    assert!(matches!(s.size(&path).await, Ok(n) if n == 8 << 20), "{}: size of the 8 MiB object", s.uri());
    let r = (4 << 20) - 3..(4 << 20) + 1000;
    match s.get_range(&path, r.clone()).await {
        Ok(b) => assert_eq!(b, data.slice(r.start as usize..r.end as usize), "{}: range of large object", s.uri()),
        Err(e) => panic!("{}: range read of large object failed: {e}", s.uri()),
    }
    cleanup(s, &path).await;
}

/// Concurrent puts of different contents to one path leave exactly one of
/// them, complete.
pub async fn concurrent_overwrites_leave_one_complete_object(s: &dyn Storage) {
    let path = format!("{}/contended", scratch());
    let versions: Vec<Bytes> = (0..8u8).map(|i| pattern(64 << 10, i)).collect();
    let puts = versions.iter().map(|v| s.put(&path, v.clone()));
    for r in futures::future::join_all(puts).await {
        if let Err(e) = r {
            panic!("{}: concurrent put {path:?} failed: {e}", s.uri());
        }
    }
    let back = get_ok(s, &path).await;
    assert!(versions.contains(&back), "{}: concurrent puts left a mixed or partial object", s.uri());
    match s.list(&path).await {
        Ok(v) => assert_eq!(v.len(), 1, "{}: concurrent puts left extra objects: {v:?}", s.uri()),
        Err(e) => panic!("{}: list failed: {e}", s.uri()),
    }
    cleanup(s, &path).await;
}
