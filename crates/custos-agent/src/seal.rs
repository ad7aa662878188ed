//! Encryption at rest for the agent's queue and dead-letter store:
//! AES-256-GCM under one random key kept in the state directory.
//!
//! # Key file
//!
//! `<state_dir>/queue.key`, mode 0600 (the state dir itself is 0700): 32
//! random bytes, written once, atomically. A missing key is created; a key
//! file of another size is an error (never silently replaced, because that
//! would make the queued data unreadable). Losing the key loses the queue,
//! which is the point of encrypting it: a copied disk image without the
//! key file reveals nothing.
//!
//! # Sealed box, version 1
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 1  | version, `1` |
//! | 1  | 12 | nonce: 12 random bytes, drawn for every box |
//! | 13 | n  | ciphertext |
//! | 13+n | 16 | GCM tag |
//!
//! The caller's associated data (for the queue: the record header) is
//! authenticated but not stored. Nonces are random per box (96 bits from the
//! system generator), which keeps them unique across restarts without any
//! persisted counter; boxes are whole batches, so the agent seals far fewer
//! than the 2^32 boxes per key NIST SP 800-38D allows for random nonces.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::{Path, PathBuf};

/// The key file's name inside the state directory.
pub const KEY_FILE: &str = "queue.key";
/// The sealed-box format version.
pub const SEAL_VERSION: u8 = 1;
/// Bytes a sealed box adds to its plaintext.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// What went wrong with the key or a sealed box.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or written.
    #[error("queue key {}: {source}", .path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file exists but is not a key.
    #[error("queue key {} holds {len} bytes, expected 32; it is not replaced (the queue would become unreadable)", .path.display())]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its size.
        len: usize,
    },
    /// The system random generator failed.
    #[error("no randomness for the queue key or nonce")]
    Random,
    /// A sealed box is too short, has an unknown version, or fails
    /// authentication (tampered, truncated, or sealed under another key).
    #[error("sealed data fails authentication: {0}")]
    Open(&'static str),
}

/// The AES-256-GCM key of one state directory. Never printed.
pub struct SealKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// Load `<state_dir>/queue.key`, creating it (0600) if missing.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, SealError> {
        let path = state_dir.join(KEY_FILE);
        let io = |source| SealError::Io { path: path.clone(), source };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(state_dir).map_err(io)?;
                let mut k = [0u8; 32];
                SystemRandom::new().fill(&mut k).map_err(|_| SealError::Random)?;
                crate::fsutil::write_atomic(&path, &k, 0o600).map_err(io)?;
                k.to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| SealError::BadKeyFile { path: path.clone(), len: bytes.len() })?;
        Self::from_bytes(&arr)
    }

    /// A key from raw bytes (tests and benchmarks).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SealError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::Random)?;
        Ok(Self { key: LessSafeKey::new(key), rng: SystemRandom::new() })
    }

    /// Seal `plaintext`, authenticating `aad` with it, appending the box to `out`.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        out.reserve(plaintext.len() + OVERHEAD);
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out[start..])
            .map_err(|_| SealError::Open("sealing failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Seal into a new buffer.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::new();
        self.seal_into(aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Open a sealed box with the same `aad` it was sealed with.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < OVERHEAD {
            return Err(SealError::Open("shorter than a sealed box"));
        }
        if sealed[0] != SEAL_VERSION {
            return Err(SealError::Open("unknown sealed-box version"));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let mut buf = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
            .map_err(|_| SealError::Open("tag mismatch (tampered, truncated, or another key)"))?;
        let n = plain.len();
        buf.truncate(n);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_file_is_created_owner_only_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let a = SealKey::load_or_create(d.path()).unwrap();
        let mode = std::fs::metadata(d.path().join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = a.seal(b"h", b"secret").unwrap();
        let b = SealKey::load_or_create(d.path()).unwrap();
        assert_eq!(b.open(b"h", &sealed).unwrap(), b"secret");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn a_key_file_of_the_wrong_size_is_an_error_and_is_kept() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(KEY_FILE), b"short").unwrap();
        let e = SealKey::load_or_create(d.path()).unwrap_err();
        assert!(e.to_string().contains("holds 5 bytes"), "{e}");
        assert_eq!(std::fs::read(d.path().join(KEY_FILE)).unwrap(), b"short");
    }

    #[test]
    fn another_key_or_other_aad_fails() {
        let a = SealKey::from_bytes(&[1; 32]).unwrap();
        let b = SealKey::from_bytes(&[2; 32]).unwrap();
        let s = a.seal(b"aad", b"x").unwrap();
        assert!(b.open(b"aad", &s).is_err());
        assert!(a.open(b"other", &s).is_err());
        assert!(a.open(b"aad", &s[..OVERHEAD - 1]).is_err());
    }

    proptest! {
        #[test]
        fn round_trips_and_every_flipped_bit_is_detected(data in proptest::collection::vec(any::<u8>(), 0..512), aad in proptest::collection::vec(any::<u8>(), 0..32), bit in any::<usize>()) {
            let k = SealKey::from_bytes(&[7; 32]).unwrap();
            let s = k.seal(&aad, &data).unwrap();
            prop_assert_eq!(s.len(), data.len() + OVERHEAD);
            prop_assert_eq!(k.open(&aad, &s).unwrap(), data);
            let mut t = s.clone();
            let i = bit % (t.len() * 8);
            t[i / 8] ^= 1 << (i % 8);
            prop_assert!(k.open(&aad, &t).is_err());
        }
    }
}
