//! The log's keys: the Ed25519 checkpoint signing key, its public key for
//! offline verifiers, and the HMAC key used to pseudonymise values in record
//! details.
//!
//! Files (created by [`load_or_create_keys`] on first use):
//!
//! | file | content | mode |
//! |---|---|---|
//! | `audit-signing.key` | Ed25519 private key, PKCS#8 PEM (`BEGIN PRIVATE KEY`) | 0600 |
//! | `audit-hmac.key` | 32 random bytes as 64 lowercase hex digits and LF | 0600 |
//! | `audit.pub` | Ed25519 public key, SPKI PEM (`BEGIN PUBLIC KEY`) — what `custos audit verify --public-key` reads | 0644 |
//!
//! [`read_public_key`] also accepts a bare 64-digit hex public key.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::format::{parse_hex, to_hex};
use crate::AuditError;

/// File name of the signing key.
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";
/// File name of the HMAC key.
pub const HMAC_KEY_FILE: &str = "audit-hmac.key";
/// File name of the public key.
pub const PUBLIC_KEY_FILE: &str = "audit.pub";

/// Pseudonymises values for audit record details with HMAC-SHA-256 under a
/// secret key, so equal values can be correlated without being revealed.
///
/// `Debug` never shows the key.
#[derive(Clone)]
pub struct Hmacer {
    mac: Hmac<Sha256>,
}

impl Hmacer {
    /// An HMAC-SHA-256 pseudonymiser keyed with `key`.
    pub fn new(key: [u8; 32]) -> Hmacer {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .unwrap_or_else(|_| unreachable!("hmac takes any key length"));
        Hmacer { mac }
    }

    /// `"hmac-sha256:<64 lowercase hex digits>"` of `value`.
    pub fn hmac(&self, value: &str) -> String {
        let mut m = self.mac.clone();
        m.update(value.as_bytes());
        format!("hmac-sha256:{}", to_hex(&m.finalize().into_bytes()))
    }
}

impl fmt::Debug for Hmacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hmacer")
            .field("key", &"<redacted>")
            .finish()
    }
}

fn key_err(path: &Path, reason: impl Into<String>) -> AuditError {
    AuditError::Key {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn fsync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io("fsync directory", dir, e))
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename, fsync
/// directory) with the given mode. Fails if `path` exists.
fn write_new_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), AuditError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(&tmp)
        .map_err(|e| AuditError::io("create key file", &tmp, e))?;
    f.write_all(contents)
        .map_err(|e| AuditError::io("write key file", &tmp, e))?;
    f.sync_all()
        .map_err(|e| AuditError::io("fsync key file", &tmp, e))?;
    drop(f);
    // hard_link fails if the destination exists, so a concurrent creator
    // cannot be overwritten.
    fs::hard_link(&tmp, &path).map_err(|e| AuditError::io("install key file", &path, e))?;
    fs::remove_file(&tmp).map_err(|e| AuditError::io("remove temporary key file", &tmp, e))?;
    fsync_dir(dir)
}

/// Reads a secret key file, refusing it when group or others may read it.
fn read_secret(path: &Path) -> Result<Option<String>, AuditError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuditError::io("read key file", path, e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|e| AuditError::io("stat key file", path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(key_err(
                path,
                format!(
                    "secret key is accessible by group or others (mode {:o}); chmod 600 it",
                    mode & 0o777
                ),
            ));
        }
    }
    Ok(Some(text))
}

/// Loads the signing and HMAC keys from `dir`, creating them (mode 0600)
/// and the public key file `audit.pub` on first use. The directory is
/// created (mode 0700) if missing.
///
/// Refuses secret key files readable by group or others, and an existing
/// `audit.pub` that does not belong to the signing key.
pub fn load_or_create_keys(dir: &Path) -> Result<(SigningKey, Hmacer), AuditError> {
    if !dir.exists() {
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir)
            .map_err(|e| AuditError::io("create key directory", dir, e))?;
    }

    let sk_path = dir.join(SIGNING_KEY_FILE);
    let signing = match read_secret(&sk_path)? {
        Some(pem) => SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            key_err(
                &sk_path,
                format!("not a pkcs#8 pem ed25519 private key: {e}"),
            )
        })?,
        None => {
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let key = SigningKey::from_bytes(&seed);
            let pem = key
                .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                .map_err(|e| key_err(&sk_path, format!("cannot encode private key: {e}")))?;
            write_new_file(dir, SIGNING_KEY_FILE, pem.as_bytes(), 0o600)?;
            key
        }
    };

    let pub_path = dir.join(PUBLIC_KEY_FILE);
    if pub_path.exists() {
        let existing = read_public_key(&pub_path)?;
        if existing != signing.verifying_key() {
            return Err(key_err(
                &pub_path,
                format!(
                    "public key does not belong to the signing key in {}",
                    sk_path.display()
                ),
            ));
        }
    } else {
        let pem = signing
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| key_err(&pub_path, format!("cannot encode public key: {e}")))?;
        write_new_file(dir, PUBLIC_KEY_FILE, pem.as_bytes(), 0o644)?;
    }

    let hmac_path = dir.join(HMAC_KEY_FILE);
    let hmac_key = match read_secret(&hmac_path)? {
        Some(text) => parse_hex::<32>(text.trim_end().as_bytes())
            .ok_or_else(|| key_err(&hmac_path, "expected 64 lowercase hex digits"))?,
        None => {
            let mut k = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut k);
            write_new_file(
                dir,
                HMAC_KEY_FILE,
                format!("{}\n", to_hex(&k)).as_bytes(),
                0o600,
            )?;
            k
        }
    };
    Ok((signing, Hmacer::new(hmac_key)))
}

/// Reads a public key file: SPKI PEM (`-----BEGIN PUBLIC KEY-----`, as
/// written to `audit.pub`) or 64 hex digits of the raw key.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let text = fs::read_to_string(path).map_err(|e| AuditError::io("read public key", path, e))?;
    parse_public_key(&text).map_err(|reason| key_err(path, reason))
}

/// Parses a public key from SPKI PEM or 64 hex digits.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let t = text.trim();
    if t.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(t)
            .map_err(|e| format!("not an ed25519 spki pem public key: {e}"));
    }
    let lower = t.to_ascii_lowercase();
    let raw = parse_hex::<32>(lower.as_bytes())
        .ok_or("expected an spki pem public key or 64 hex digits")?;
    VerifyingKey::from_bytes(&raw).map_err(|e| format!("invalid ed25519 public key: {e}"))
}

/// Signs a document the server vouches for (a purge receipt, an export
/// manifest) with its Ed25519 key; returns the signature in hex. The
/// message is `custos-document-v1\0`, `kind`, `\0`, then `doc`, so a
/// signature over one kind of document (or over an audit checkpoint) can
/// never pass for another.
pub fn sign_document(key: &SigningKey, kind: &str, doc: &[u8]) -> String {
    use ed25519_dalek::Signer;
    hex::encode(key.sign(&document_message(kind, doc)).to_bytes())
}

/// Checks a signature made by [`sign_document`].
pub fn verify_document(key: &VerifyingKey, kind: &str, doc: &[u8], signature_hex: &str) -> Result<(), String> {
    let raw = parse_hex::<64>(signature_hex.trim().to_ascii_lowercase().as_bytes()).ok_or("the signature is not 128 hex digits")?;
    let sig = ed25519_dalek::Signature::from_bytes(&raw);
    key.verify_strict(&document_message(kind, doc), &sig)
        .map_err(|_| format!("the signature does not match this {kind} and key"))
}

fn document_message(kind: &str, doc: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(24 + kind.len() + doc.len());
    m.extend_from_slice(b"custos-document-v1\0");
    m.extend_from_slice(kind.as_bytes());
    m.push(0);
    m.extend_from_slice(doc);
    m
}

/// Where [`load_or_create_keys`] keeps the public key in `dir`.
pub fn public_key_path(dir: &Path) -> PathBuf {
    dir.join(PUBLIC_KEY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_signatures_bind_the_kind_the_bytes_and_the_key() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let sig = sign_document(&k, "purge-receipt", b"{}");
        assert_eq!(verify_document(&k.verifying_key(), "purge-receipt", b"{}", &sig), Ok(()));
        assert!(verify_document(&k.verifying_key(), "export-manifest", b"{}", &sig).is_err());
        assert!(verify_document(&k.verifying_key(), "purge-receipt", b"{ }", &sig).is_err());
        assert!(verify_document(&other.verifying_key(), "purge-receipt", b"{}", &sig).is_err());
        assert!(verify_document(&k.verifying_key(), "purge-receipt", b"{}", "zz").unwrap_err().contains("128 hex"));
    }

    #[test]
    fn keys_are_created_once_and_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let (sk, h) = load_or_create_keys(&dir).unwrap();
        let (sk2, h2) = load_or_create_keys(&dir).unwrap();
        assert_eq!(sk.to_bytes(), sk2.to_bytes());
        assert_eq!(h.hmac("alice"), h2.hmac("alice"));
        assert_ne!(h.hmac("alice"), h.hmac("bob"));
        assert!(h.hmac("alice").starts_with("hmac-sha256:"));
        assert_eq!(h.hmac("alice").len(), "hmac-sha256:".len() + 64);
        assert!(format!("{h:?}").contains("redacted"));
        assert_eq!(
            read_public_key(&public_key_path(&dir)).unwrap(),
            sk.verifying_key()
        );
        let pem = fs::read_to_string(public_key_path(&dir)).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(
            parse_public_key(&to_hex(sk.verifying_key().as_bytes())).unwrap(),
            sk.verifying_key()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [SIGNING_KEY_FILE, HMAC_KEY_FILE] {
                let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{f}");
            }
            fs::set_permissions(dir.join(HMAC_KEY_FILE), fs::Permissions::from_mode(0o644))
                .unwrap();
            let err = load_or_create_keys(&dir).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn hmacer_debug_hides_the_key() {
        let h = Hmacer::new([0xab; 32]);
        let d = format!("{h:?}");
        assert!(d.contains("redacted"));
        assert!(!d.to_lowercase().contains("abab"));
        assert!(!d.contains("171"));
    }

    #[test]
    fn a_foreign_public_key_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        load_or_create_keys(tmp.path()).unwrap();
        let other = SigningKey::from_bytes(&[1; 32]);
        fs::remove_file(tmp.path().join(PUBLIC_KEY_FILE)).unwrap();
        fs::write(
            tmp.path().join(PUBLIC_KEY_FILE),
            to_hex(other.verifying_key().as_bytes()),
        )
        .unwrap();
        assert!(load_or_create_keys(tmp.path()).is_err());
    }
}
