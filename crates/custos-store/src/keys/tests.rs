use super::*;

fn ws() -> WorkspaceId {
    WorkspaceId::new()
}

#[test]
fn a_wrapped_data_key_unwraps_only_for_its_workspace_and_key() {
    let kek = DataKey::generate().unwrap();
    let (a, b) = (ws(), ws());
    let k1 = KeyRef { key_id: "service".into(), version: 1 };
    let k2 = KeyRef { key_id: "service".into(), version: 2 };
    let dek = DataKey::generate().unwrap();
    let wrapped = wrap_with(&kek, a, &k1, &dek).unwrap();
    assert_eq!(wrapped.len(), WRAPPED_LEN);
    assert_eq!(unwrap_with(&kek, a, &k1, &wrapped).unwrap().expose(), dek.expose());
    assert!(matches!(unwrap_with(&kek, b, &k1, &wrapped), Err(KeyError::Unwrap { .. })), "another workspace");
    assert!(matches!(unwrap_with(&kek, a, &k2, &wrapped), Err(KeyError::Unwrap { .. })), "another version");
    let other = DataKey::generate().unwrap();
    assert!(matches!(unwrap_with(&other, a, &k1, &wrapped), Err(KeyError::Unwrap { .. })), "another key");
    for i in 0..wrapped.len() {
        let mut bad = wrapped.clone();
        bad[i] ^= 1;
        assert!(unwrap_with(&kek, a, &k1, &bad).is_err(), "byte {i} flipped");
    }
    assert!(unwrap_with(&kek, a, &k1, &wrapped[..WRAPPED_LEN - 1]).is_err(), "truncated");
}

#[test]
fn keys_never_print() {
    let k = DataKey::from_bytes([0xab; 32]);
    assert!(!format!("{k:?}").contains("ab"), "{k:?}");
}

#[test]
fn key_material_is_hex_or_base64_of_32_bytes() {
    let hexed = "00".repeat(31) + "ff";
    assert_eq!(parse_key_material(&format!(" {hexed}\n"), "t").unwrap().expose()[31], 0xff);
    let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    assert_eq!(parse_key_material(&b64, "t").unwrap().expose(), &[7u8; 32]);
    let short = parse_key_material("abcd", "the key file").unwrap_err().to_string();
    assert!(short.contains("the key file"), "{short}");
    let wrong_len = parse_key_material(&base64::engine::general_purpose::STANDARD.encode([1u8; 16]), "k").unwrap_err();
    assert!(wrong_len.to_string().contains("16 bytes, expected 32"), "{wrong_len}");
}

#[test]
fn the_service_keystore_creates_rotates_revokes_and_survives_a_reopen() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("keys/keystore.json");
    let master = DataKey::generate().unwrap();
    let a = ws();
    let ks = ServiceKeystore::open(&path, master.clone()).unwrap();
    let v1 = ks.current(a).unwrap();
    assert_eq!(v1, KeyRef { key_id: SERVICE_KEY_ID.into(), version: 1 });
    let dek = DataKey::generate().unwrap();
    let w1 = ks.wrap(a, &v1, &dek).unwrap();
    let v2 = ks.rotate(a).unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(ks.current(a).unwrap(), v2, "new data under the new version");
    assert_eq!(ks.unwrap(a, &v1, &w1).unwrap().expose(), dek.expose(), "old data still readable");
    let states: Vec<KeyState> = ks.versions(a).iter().map(|v| v.state).collect();
    assert_eq!(states, [KeyState::Retired, KeyState::Active]);

    // The keystore holds no key in clear and reopens under the same master.
    let raw = std::fs::read_to_string(&path).unwrap();
    assert!(!raw.contains(&hex::encode(dek.expose())));
    drop(ks);
    let ks = ServiceKeystore::open(&path, master.clone()).unwrap();
    assert_eq!(ks.unwrap(a, &v1, &w1).unwrap().expose(), dek.expose());
    assert_eq!(ks.current(a).unwrap(), v2);

    // Revoked: nothing can be sealed or read, with an error naming it.
    ks.set_revoked(a, true).unwrap();
    let e = ks.unwrap(a, &v1, &w1).unwrap_err();
    assert!(matches!(e, KeyError::Revoked { .. }) && e.to_string().contains("revoked"), "{e}");
    assert!(matches!(ks.current(a), Err(KeyError::Revoked { .. })));
    assert!(matches!(ks.rotate(a), Err(KeyError::Revoked { .. })));
    ks.set_revoked(a, false).unwrap();
    assert_eq!(ks.unwrap(a, &v1, &w1).unwrap().expose(), dek.expose(), "restored");

    // Destroyed: gone for good, also after a reopen.
    ks.destroy(a).unwrap();
    assert!(matches!(ks.unwrap(a, &v1, &w1), Err(KeyError::Unknown { .. })));
    drop(ks);
    let ks = ServiceKeystore::open(&path, master).unwrap();
    assert!(matches!(ks.unwrap(a, &v1, &w1), Err(KeyError::Unknown { .. })));
}

#[test]
fn a_wrong_master_key_fails_at_open_with_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("keystore.json");
    let ks = ServiceKeystore::open(&path, DataKey::generate().unwrap()).unwrap();
    ks.current(ws()).unwrap();
    let e = ServiceKeystore::open(&path, DataKey::generate().unwrap()).unwrap_err().to_string();
    assert!(e.contains("wrong master key"), "{e}");
    std::fs::write(&path, b"{not json").unwrap();
    let e = ServiceKeystore::open(&path, DataKey::generate().unwrap()).unwrap_err().to_string();
    assert!(e.contains("keystore.json"), "{e}");
}

#[test]
fn the_master_key_file_is_created_once_with_mode_0600() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("master.key");
    assert!(ServiceKeystore::master_key(&f, false).is_err(), "not created unless asked");
    let k = ServiceKeystore::master_key(&f, true).unwrap();
    assert_eq!(ServiceKeystore::master_key(&f, true).unwrap().expose(), k.expose());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn a_customer_key_file_controls_access_and_a_replaced_key_is_another_key() {
    let d = tempfile::tempdir().unwrap();
    let p = KeyFileProvider::new(d.path());
    let a = ws();
    assert!(matches!(p.current(a), Err(KeyError::Revoked { .. })), "no file: no access");
    std::fs::write(p.path(a), hex::encode([3u8; 32])).unwrap();
    let k = p.current(a).unwrap();
    assert!(k.key_id.starts_with("file:"), "{k}");
    let dek = DataKey::generate().unwrap();
    let w = p.wrap(a, &k, &dek).unwrap();
    assert_eq!(p.unwrap(a, &k, &w).unwrap().expose(), dek.expose());
    std::fs::remove_file(p.path(a)).unwrap();
    assert!(matches!(p.unwrap(a, &k, &w), Err(KeyError::Revoked { .. })), "removed: revoked at once");
    std::fs::write(p.path(a), hex::encode([3u8; 32])).unwrap();
    assert!(p.unwrap(a, &k, &w).is_ok(), "put back: restored");
    std::fs::write(p.path(a), hex::encode([4u8; 32])).unwrap();
    let e = p.unwrap(a, &k, &w).unwrap_err();
    assert!(matches!(e, KeyError::Unknown { .. }), "{e}");
}

#[test]
fn retired_versions_no_data_needs_are_forgotten_and_the_rest_kept() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("keys/keystore.json");
    let ks = ServiceKeystore::open(&path, DataKey::generate().unwrap()).unwrap();
    let a = ws();
    let v1 = ks.current(a).unwrap();
    let dek = DataKey::generate().unwrap();
    let w1 = ks.wrap(a, &v1, &dek).unwrap();
    let v2 = ks.rotate(a).unwrap();
    let v3 = ks.rotate(a).unwrap();
    // v1 still seals a segment: kept; v2 nothing: forgotten; v3 active: kept.
    let gone = KeyProvider::forget_unused(&ks, a, std::slice::from_ref(&v1)).unwrap();
    assert_eq!(gone, vec![v2.clone()]);
    let left: Vec<u32> = ks.versions(a).iter().map(|v| v.key.version).collect();
    assert_eq!(left, [1, 3]);
    assert_eq!(ks.unwrap(a, &v1, &w1).unwrap().expose(), dek.expose());
    assert!(ks.unwrap(a, &v2, &w1).is_err(), "a forgotten version opens nothing");
    // Once nothing needs v1, it goes too; the active one never does.
    assert_eq!(KeyProvider::forget_unused(&ks, a, &[]).unwrap(), vec![v1.clone()]);
    assert_eq!(ks.current(a).unwrap(), v3);
    assert!(KeyProvider::forget_unused(&ks, a, &[]).unwrap().is_empty());
    // Revoked versions are never forgotten.
    ks.rotate(a).unwrap();
    ks.set_revoked(a, true).unwrap();
    assert!(KeyProvider::forget_unused(&ks, a, &[]).unwrap().is_empty());
    assert_eq!(ks.versions(a).len(), 2);
}
