//! The PKCS#11 key provider against a real SoftHSM2 (Debian package
//! `softhsm2`; `scripts/test.sh` installs it). Without it these tests fail,
//! saying so: they never pass silently.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` and scans its token directory once, when
//! the module is initialised, and PKCS#11 allows one initialisation per
//! process: the whole test binary shares one token directory, set up once
//! before the module is first loaded, with a token per test (its own
//! label) made there and then with `softhsm2-util`, as an operator would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use custos_model::{AgentId, Category, Event, Level, SegmentId, Secret, TableName, Value, WorkspaceId};
use custos_store::keys::wrap_with;
use custos_store::{
    decode_segment_with, rewrap_segment, DataKey, EncodedSegment, KeyError, KeyProvider, KeyRef, KeyState, Pkcs11Config,
    Pkcs11Provider, SegmentBuilder, StoreError,
};

const PIN: &str = "4711-user";
const SO_PIN: &str = "0815-so";
/// One token per test, all made before the module is loaded (SoftHSM2
/// does not see tokens made by another process after that).
const TOKENS: [&str; 9] = ["seal", "nonextractable", "rotation", "revocation", "deleted", "moved", "wrongpin", "relogin", "threads"];
const MODULES: [&str; 2] = ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"];

struct Hsm {
    _dir: tempfile::TempDir,
    module: PathBuf,
}

fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let module = MODULES.iter().map(PathBuf::from).find(|p| p.is_file()).unwrap_or_else(|| {
            panic!(
                "SoftHSM2 is not installed (no {}): install it with `apt-get install softhsm2` \
                 (scripts/test.sh does); the PKCS#11 provider is tested against it",
                MODULES.join(" or ")
            )
        });
        let util = Command::new("softhsm2-util").arg("--version").output();
        assert!(
            util.is_ok_and(|o| o.status.success()),
            "softhsm2-util is not installed: install it with `apt-get install softhsm2` (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
        )
        .unwrap();
        // Set once, before any test of this binary loads the module (every
        // test calls hsm() first); SoftHSM2 reads it at C_Initialize.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        for label in TOKENS {
            // The way docs/ENCRYPTION.md tells operators to make a token.
            let out = Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN])
                .env("SOFTHSM2_CONF", &conf)
                .output()
                .unwrap();
            assert!(out.status.success(), "softhsm2-util --init-token: {}", String::from_utf8_lossy(&out.stderr));
        }
        Hsm { _dir: dir, module }
    })
}

/// The token made for the test, and how to open it.
fn token(label: &str) -> Pkcs11Config {
    assert!(TOKENS.contains(&label), "add {label:?} to TOKENS");
    config(label, PIN)
}

fn config(label: &str, pin: &str) -> Pkcs11Config {
    Pkcs11Config {
        module: hsm().module.clone(),
        token_label: label.into(),
        pin: Secret::new(pin.into()),
        key_label_prefix: "custos".into(),
    }
}

/// The customer's own view of the token (their HSM tooling): a separate
/// session, as a second application would have.
fn admin_session(label: &str) -> Session {
    let ctx = Pkcs11::new(&hsm().module).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == label)
        .unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    match s.login(UserType::User, Some(&AuthPin::from(PIN.to_string()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    s
}

fn key_object(s: &Session, ws: WorkspaceId, version: u32) -> Option<ObjectHandle> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(format!("custos:{ws}:v{version}").into_bytes()),
        ])
        .unwrap();
    assert!(found.len() <= 1, "one object per version");
    found.first().copied()
}

fn event(time: i64, message: &str) -> Event {
    Event {
        table: TableName::new("logs").unwrap(),
        time,
        level: Level::Enhanced,
        category: Category::Logs,
        host: "host-1".into(),
        message: message.into(),
        attrs: [("user".to_string(), Value::Str(format!("user{time}")))].into_iter().collect(),
    }
}

fn sealed(keys: &dyn KeyProvider, ws: WorkspaceId) -> EncodedSegment {
    let mut b = SegmentBuilder::new(ws, TableName::new("logs").unwrap());
    let agent = AgentId::new();
    for i in 0..50 {
        b.push(agent, &event(1_000 + i, &format!("secret message {i}")));
    }
    b.finish_sealed(SegmentId::new(), keys).unwrap()
}

fn rows(keys: &dyn KeyProvider, seg: &[u8]) -> Result<usize, StoreError> {
    let d = decode_segment_with(seg, None, Some(keys))?;
    Ok(d.batches.iter().map(|b| b.num_rows()).sum())
}

fn seal_key(seg: &[u8], keys: &dyn KeyProvider) -> KeyRef {
    decode_segment_with(seg, Some(&[]), Some(keys)).unwrap().header.seal.unwrap().key
}

#[test]
fn a_segment_sealed_under_the_hsm_key_decodes() {
    let keys = Pkcs11Provider::open(token("seal")).unwrap();
    let ws = WorkspaceId::new();
    let seg = sealed(&keys, ws);
    assert!(!String::from_utf8_lossy(&seg.bytes).contains("secret message"), "no row text in clear");
    assert_eq!(rows(&keys, &seg.bytes).unwrap(), 50);
    let header = decode_segment_with(&seg.bytes, Some(&[]), Some(&keys)).unwrap().header;
    let seal = header.seal.unwrap();
    assert_eq!(seal.key, KeyRef { key_id: "pkcs11".into(), version: 1 });
    // Format version 2 of a wrapped data key: version, IV, ciphertext, tag.
    let wrapped = base64::engine::general_purpose::STANDARD.decode(&seal.wrapped_key).unwrap();
    assert_eq!((wrapped.len(), wrapped[0]), (61, 2));
    // A provider opened anew (a restarted server) reads it: the key lives in the token.
    drop(keys);
    let again = Pkcs11Provider::open(config("seal", PIN)).unwrap();
    assert_eq!(rows(&again, &seg.bytes).unwrap(), 50);
    let v = again.versions(ws).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].state, KeyState::Active);
    assert!(v[0].created_at > 0, "dated by CKA_START_DATE");
}

#[test]
fn the_workspace_key_is_made_in_the_hsm_and_cannot_be_extracted() {
    let keys = Pkcs11Provider::open(token("nonextractable")).unwrap();
    let ws = WorkspaceId::new();
    keys.current(ws).unwrap();
    let s = admin_session("nonextractable");
    let h = key_object(&s, ws, 1).expect("the key object custos:<ws>:v1");
    let wanted = [
        AttributeType::KeyType,
        AttributeType::ValueLen,
        AttributeType::Token,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::AlwaysSensitive,
        AttributeType::NeverExtractable,
        AttributeType::Local,
        AttributeType::Encrypt,
        AttributeType::Decrypt,
        AttributeType::Wrap,
        AttributeType::Value,
    ];
    let attrs = s.get_attributes(h, &wanted).unwrap();
    let has = |a: Attribute| attrs.contains(&a);
    assert!(has(Attribute::KeyType(KeyType::AES)) && has(Attribute::ValueLen(32u64.into())), "{attrs:?}");
    assert!(has(Attribute::Token(true)) && has(Attribute::Sensitive(true)) && has(Attribute::Extractable(false)), "{attrs:?}");
    // Generated inside the token (CKA_LOCAL) and never out of it.
    assert!(has(Attribute::Local(true)) && has(Attribute::AlwaysSensitive(true)) && has(Attribute::NeverExtractable(true)), "{attrs:?}");
    assert!(has(Attribute::Encrypt(true)) && has(Attribute::Decrypt(true)) && has(Attribute::Wrap(false)), "{attrs:?}");
    // CKA_VALUE cannot be read: the token answers CKR_ATTRIBUTE_SENSITIVE.
    assert!(!attrs.iter().any(|a| matches!(a, Attribute::Value(_))), "the key's value was readable: {attrs:?}");
    // Nor wrapped out under another key.
    let kek = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::Token(false), Attribute::ValueLen(32u64.into()), Attribute::Wrap(true), Attribute::Encrypt(true)],
        )
        .unwrap();
    let e = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, h).unwrap_err();
    assert!(matches!(e, CkError::Pkcs11(RvError::KeyUnextractable, _)), "{e}");
}

#[test]
fn rotation_puts_new_segments_under_v2_keeps_v1_readable_and_rewrap_moves_old_ones() {
    let keys = Pkcs11Provider::open(token("rotation")).unwrap();
    let ws = WorkspaceId::new();
    let old = sealed(&keys, ws);
    assert_eq!(keys.rotate(ws).unwrap(), KeyRef { key_id: "pkcs11".into(), version: 2 });
    assert_eq!(keys.current(ws).unwrap().version, 2);
    let new = sealed(&keys, ws);
    assert_eq!(seal_key(&new.bytes, &keys).version, 2, "new data under v2");
    assert_eq!(seal_key(&old.bytes, &keys).version, 1);
    assert_eq!(rows(&keys, &old.bytes).unwrap(), 50, "v1 data still readable");
    let states: Vec<_> = keys.versions(ws).unwrap().iter().map(|v| (v.key.version, v.state)).collect();
    assert_eq!(states, [(1, KeyState::Retired), (2, KeyState::Active)]);

    let moved = rewrap_segment(&old.bytes, &keys).unwrap().expect("rewrapped under v2");
    assert_eq!(seal_key(&moved, &keys).version, 2);
    assert_eq!(rows(&keys, &moved).unwrap(), 50);
    assert!(rewrap_segment(&moved, &keys).unwrap().is_none(), "already under the current key");
    assert!(rewrap_segment(&new.bytes, &keys).unwrap().is_none());
    // Both versions are objects in the token.
    let s = admin_session("rotation");
    assert!(key_object(&s, ws, 1).is_some() && key_object(&s, ws, 2).is_some());
    // While a segment is under v1 it stays; once nothing needs it, it goes.
    let v1 = KeyRef { key_id: "pkcs11".into(), version: 1 };
    assert!(keys.forget_unused(ws, std::slice::from_ref(&v1)).unwrap().is_empty());
    assert_eq!(keys.forget_unused(ws, &[]).unwrap(), vec![v1]);
    assert!(key_object(&s, ws, 1).is_none() && key_object(&s, ws, 2).is_some());
    let states: Vec<_> = keys.versions(ws).unwrap().iter().map(|v| (v.key.version, v.state)).collect();
    assert_eq!(states, [(2, KeyState::Active)], "the marker forgets it too");
    assert_eq!(rows(&keys, &moved).unwrap(), 50, "the rewrapped segment reads under v2");
    assert_eq!(keys.current(ws).unwrap().version, 2, "no new v1 is made");
}

#[test]
fn revocation_makes_decode_fail_with_a_clear_error_and_restore_makes_it_work_again() {
    let keys = Pkcs11Provider::open(token("revocation")).unwrap();
    let ws = WorkspaceId::new();
    let other = WorkspaceId::new();
    let v1 = sealed(&keys, ws);
    keys.rotate(ws).unwrap();
    let v2 = sealed(&keys, ws);
    let theirs = sealed(&keys, other);

    keys.set_revoked(ws, true).unwrap();
    for seg in [&v1, &v2] {
        let e = rows(&keys, &seg.bytes).unwrap_err();
        assert!(matches!(e, StoreError::Key { source: KeyError::Revoked { .. }, .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("revoked") && msg.contains(&ws.to_string()) && msg.contains("pkcs11 v"), "{msg}");
    }
    assert!(matches!(keys.current(ws), Err(KeyError::Revoked { .. })), "nothing new is sealed");
    assert!(matches!(keys.rotate(ws), Err(KeyError::Revoked { .. })), "no rotation around it");
    assert!(keys.versions(ws).unwrap().iter().all(|v| v.state == KeyState::Revoked));
    assert_eq!(rows(&keys, &theirs.bytes).unwrap(), 50, "other workspaces are untouched");
    // The HSM itself refuses: the objects may no longer encrypt or decrypt,
    // and a provider opened anew (a restarted server) sees the revocation.
    let s = admin_session("revocation");
    for v in [1, 2] {
        let attrs = s.get_attributes(key_object(&s, ws, v).unwrap(), &[AttributeType::Encrypt, AttributeType::Decrypt]).unwrap();
        assert_eq!(attrs, [Attribute::Encrypt(false), Attribute::Decrypt(false)]);
    }
    let restarted = Pkcs11Provider::open(config("revocation", PIN)).unwrap();
    assert!(matches!(rows(&restarted, &v1.bytes), Err(StoreError::Key { source: KeyError::Revoked { .. }, .. })));

    keys.set_revoked(ws, false).unwrap();
    assert_eq!(rows(&keys, &v1.bytes).unwrap(), 50, "restored");
    assert_eq!(rows(&restarted, &v2.bytes).unwrap(), 50);
    assert_eq!(keys.current(ws).unwrap().version, 2);
    let states: Vec<_> = keys.versions(ws).unwrap().iter().map(|v| v.state).collect();
    assert_eq!(states, [KeyState::Retired, KeyState::Active]);
    // A workspace without keys cannot be revoked.
    assert!(matches!(keys.set_revoked(WorkspaceId::new(), true), Err(KeyError::Unknown { .. })));
}

#[test]
fn a_key_deleted_from_the_token_gives_a_clear_error_naming_the_workspace_and_version() {
    let keys = Pkcs11Provider::open(token("deleted")).unwrap();
    let ws = WorkspaceId::new();
    let v1 = sealed(&keys, ws);
    keys.rotate(ws).unwrap();
    let v2 = sealed(&keys, ws);
    let s = admin_session("deleted");

    // The customer deletes v1: v1 data fails naming it, v2 data still reads.
    s.destroy_object(key_object(&s, ws, 1).unwrap()).unwrap();
    let e = rows(&keys, &v1.bytes).unwrap_err();
    assert!(matches!(e, StoreError::Key { source: KeyError::Unavailable { .. }, .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&ws.to_string()) && msg.contains("pkcs11 v1") && msg.contains("not in the token"), "{msg}");
    assert_eq!(rows(&keys, &v2.bytes).unwrap(), 50);
    let states: Vec<_> = keys.versions(ws).unwrap().iter().map(|v| v.state).collect();
    assert_eq!(states, [KeyState::Revoked, KeyState::Active]);

    // Then v2, the current one: nothing can be sealed or read, and custos
    // does not quietly make a new key in its place.
    s.destroy_object(key_object(&s, ws, 2).unwrap()).unwrap();
    let e = keys.current(ws).unwrap_err();
    assert!(matches!(e, KeyError::Unavailable { .. }) && e.to_string().contains("pkcs11 v2"), "{e}");
    assert!(matches!(keys.rotate(ws), Err(KeyError::Unavailable { .. })));
    assert!(matches!(rows(&keys, &v2.bytes), Err(StoreError::Key { source: KeyError::Unavailable { .. }, .. })));
    assert!(keys.versions(ws).unwrap().iter().all(|v| v.state == KeyState::Revoked));
    assert!(key_object(&s, ws, 1).is_none() && key_object(&s, ws, 2).is_none());
}

#[test]
fn a_wrapped_key_moved_to_another_workspace_fails_to_unwrap() {
    let keys = Pkcs11Provider::open(token("moved")).unwrap();
    let (a, b) = (WorkspaceId::new(), WorkspaceId::new());
    let (ka, kb) = (keys.current(a).unwrap(), keys.current(b).unwrap());
    assert_eq!(ka, kb, "both pkcs11 v1, but different objects");
    let dek = DataKey::generate().unwrap();
    let wrapped = keys.wrap(a, &ka, &dek).unwrap();
    assert_eq!(keys.unwrap(a, &ka, &wrapped).unwrap().expose(), dek.expose());
    let e = keys.unwrap(b, &kb, &wrapped).unwrap_err();
    assert!(matches!(e, KeyError::Unwrap { .. }) && e.to_string().contains(&b.to_string()), "{e}");
    // Every changed byte fails authentication (the version byte before the HSM is asked).
    for i in 0..wrapped.len() {
        let mut bad = wrapped.clone();
        bad[i] ^= 1;
        assert!(matches!(keys.unwrap(a, &ka, &bad), Err(KeyError::Unwrap { .. })), "byte {i} flipped");
    }
    assert!(matches!(keys.unwrap(a, &ka, &wrapped[..60]), Err(KeyError::Unwrap { .. })), "truncated");
    // A key wrapped by a built-in provider (format 1) is not taken for one of ours.
    let service = wrap_with(&DataKey::generate().unwrap(), a, &ka, &dek).unwrap();
    assert!(matches!(keys.unwrap(a, &ka, &service), Err(KeyError::Unwrap { .. })));
    // Keys of another provider, or versions never made, are unknown.
    let foreign = KeyRef { key_id: "service".into(), version: 1 };
    assert!(matches!(keys.unwrap(a, &foreign, &wrapped), Err(KeyError::Unknown { .. })));
    let future = KeyRef { key_id: "pkcs11".into(), version: 7 };
    assert!(matches!(keys.unwrap(a, &future, &wrapped), Err(KeyError::Unknown { .. })));
}

#[test]
fn a_wrong_pin_fails_to_open_with_a_clear_error() {
    token("wrongpin");
    let e = Pkcs11Provider::open(config("wrongpin", "not-the-pin")).unwrap_err().to_string();
    assert!(e.contains("PIN is incorrect") && e.contains("\"wrongpin\""), "{e}");
    assert!(!e.contains("not-the-pin"), "the PIN is never printed: {e}");
    // The right one opens (nothing was locked out).
    Pkcs11Provider::open(config("wrongpin", PIN)).unwrap();

    let e = Pkcs11Provider::open(config("no-such-token", PIN)).unwrap_err().to_string();
    assert!(e.contains("no token labelled \"no-such-token\"") && e.contains("\"wrongpin\""), "{e}");
    let mut missing = config("wrongpin", PIN);
    missing.module = Path::new("/nonexistent/libpkcs11.so").to_path_buf();
    let e = Pkcs11Provider::open(missing).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/libpkcs11.so") && e.contains("does not exist"), "{e}");
    let p = Pkcs11Provider::open(config("wrongpin", PIN)).unwrap();
    assert!(!format!("{p:?}").contains(PIN), "{p:?}");
}

#[test]
fn a_provider_logged_out_under_it_logs_in_again() {
    let keys = Pkcs11Provider::open(token("relogin")).unwrap();
    let ws = WorkspaceId::new();
    let seg = sealed(&keys, ws);
    // Login state is per process and token: another session logging out
    // logs the provider's session out too. Its private objects vanish from
    // view; the provider must log in again rather than call them deleted.
    let s = admin_session("relogin");
    s.logout().unwrap();
    assert_eq!(rows(&keys, &seg.bytes).unwrap(), 50);
    assert_eq!(keys.current(ws).unwrap().version, 1, "no second v1 made while logged out");
}

#[test]
fn many_threads_share_one_provider_and_the_first_key_is_made_once() {
    let keys = std::sync::Arc::new(Pkcs11Provider::open(token("threads")).unwrap());
    let ws = WorkspaceId::new();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let keys = keys.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let k = keys.current(ws).unwrap();
                    let dek = DataKey::generate().unwrap();
                    let w = keys.wrap(ws, &k, &dek).unwrap();
                    assert_eq!(keys.unwrap(ws, &k, &w).unwrap().expose(), dek.expose());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(keys.versions(ws).unwrap().len(), 1);
    let s = admin_session("threads");
    assert!(key_object(&s, ws, 1).is_some());
}

