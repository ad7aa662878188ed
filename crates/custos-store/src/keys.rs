//! Keys for encryption at rest: per-segment data keys wrapped by versioned
//! workspace keys that a [`KeyProvider`] holds.
//!
//! # Hierarchy
//!
//! - A **data key** ([`DataKey`]): 32 random bytes drawn for every segment;
//!   the segment body is sealed under it with AES-256-GCM (see
//!   [`crate::segment`], the sealed flag). It is stored only wrapped.
//! - A **workspace key**, in versions ([`KeyRef`]: key id and version): held
//!   by the provider, never stored beside the data it protects. It wraps and
//!   unwraps data keys. New segments are sealed under the workspace's
//!   current version ([`KeyProvider::current`]); older versions stay
//!   usable for unwrapping until nothing needs them.
//!
//! A provider decides where workspace keys live: [`ServiceKeystore`] (a
//! keystore file in the data directory, every workspace key sealed under a
//! master key from a file or an environment variable) and
//! [`KeyFileProvider`] (a customer's key file per workspace) are here;
//! [`Pkcs11Provider`] keeps them in an HSM (customer-managed, non-extractable
//! keys; [`pkcs11`] documents its objects, revocation and wrapped-key format,
//! version 2).
//!
//! # Wrapped data key, format version 1 (the built-in providers)
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 1  | version, `1` |
//! | 1  | 12 | nonce, random per wrap |
//! | 13 | 32 | the data key, AES-256-GCM under the workspace key |
//! | 45 | 16 | GCM tag |
//!
//! Associated data: `custos-dek-v1`, the workspace id (16 bytes), the key id
//! and the version (u32 LE), so a wrapped key moved to another workspace or
//! labelled with another key version fails to unwrap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use custos_model::{now_micros, Secret, TimestampMicros, WorkspaceId};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// Bytes of an AES-256 key.
pub const KEY_LEN: usize = 32;
/// Version byte of a wrapped data key (built-in providers).
const WRAP_VERSION: u8 = 1;
/// Length of a wrapped data key (built-in providers).
pub const WRAPPED_LEN: usize = 1 + NONCE_LEN + KEY_LEN + 16;

/// Which workspace key (and version) wraps a data key; recorded in every
/// sealed segment's header.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyRef {
    /// The provider's name for the workspace key (stable across versions).
    pub key_id: String,
    /// The version, from 1.
    pub version: u32,
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} v{}", self.key_id, self.version)
    }
}

/// A 256-bit key (a data key, or a workspace key inside a provider). Never
/// printed.
#[derive(Clone)]
pub struct DataKey(Secret<[u8; KEY_LEN]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut k = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut k).map_err(|_| KeyError::Random)?;
        Ok(Self(Secret::new(k)))
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Secret::new(bytes))
    }

    /// The key bytes (for sealing; name the reason at the call site).
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        self.0.expose()
    }

    fn aead(&self) -> LessSafeKey {
        // Invariant: any 32 bytes are a valid AES-256 key.
        #[allow(clippy::expect_used)]
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, self.expose()).expect("a 32-byte AES-256 key"))
    }
}

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The workspace's key was revoked: its data is unreadable until the
    /// key is restored.
    #[error("the key {key} of workspace {workspace} is revoked: its data cannot be read until a key is restored")]
    Revoked {
        /// The workspace.
        workspace: WorkspaceId,
        /// The key.
        key: KeyRef,
    },
    /// The provider has no such key (or no key at all for the workspace).
    #[error("no key {key} for workspace {workspace} in {provider}")]
    Unknown {
        /// The workspace.
        workspace: WorkspaceId,
        /// The key asked for (`-` when the workspace has none).
        key: String,
        /// The provider.
        provider: String,
    },
    /// A wrapped data key does not unwrap under the key it names (damaged,
    /// moved from another workspace, or the key material was replaced).
    #[error("the data key wrapped under {key} for workspace {workspace} fails authentication")]
    Unwrap {
        /// The workspace.
        workspace: WorkspaceId,
        /// The key.
        key: KeyRef,
    },
    /// The master key (service keystore) or a customer key file is missing
    /// or malformed.
    #[error("key material {what}: {reason}")]
    Material {
        /// Which key material.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing the keystore failed.
    #[error("keystore {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The keystore file is not a keystore this build reads.
    #[error("keystore {}: {reason}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key cannot be used right now: deleted from the HSM, or the HSM
    /// (token) cannot be reached or refuses the PIN. Its data is unreadable
    /// until the key is back; the server treats it like a revocation
    /// (ingest answers 503, queries fail naming the key).
    #[error("the key {key} of workspace {workspace} is unavailable: {reason}")]
    Unavailable {
        /// The workspace.
        workspace: WorkspaceId,
        /// The key (`-` when the failure came before a version was known).
        key: String,
        /// Why, and what brings it back.
        reason: String,
    },
    /// The provider itself failed (an HSM, a network KMS).
    #[error("key provider {provider}: {reason}")]
    Provider {
        /// The provider.
        provider: String,
        /// What failed.
        reason: String,
    },
    /// The system random generator failed.
    #[error("no randomness for a key or nonce")]
    Random,
}

/// Holds workspace keys and wraps data keys with them. Calls may block
/// (a keystore write, an HSM round trip): call from blocking contexts.
pub trait KeyProvider: Send + Sync + std::fmt::Debug {
    /// A name for errors and status (`service keystore /var/lib/…`).
    fn name(&self) -> String;

    /// The key version new data of `workspace` is sealed under (creating
    /// the workspace's first key when the provider does that).
    fn current(&self, workspace: WorkspaceId) -> Result<KeyRef, KeyError>;

    /// Wraps `dek` under `key`.
    fn wrap(&self, workspace: WorkspaceId, key: &KeyRef, dek: &DataKey) -> Result<Vec<u8>, KeyError>;

    /// Unwraps a data key wrapped under `key`.
    fn unwrap(&self, workspace: WorkspaceId, key: &KeyRef, wrapped: &[u8]) -> Result<DataKey, KeyError>;

    /// Makes a new key version current for `workspace` (older versions stay
    /// usable for unwrapping). Providers whose keys the customer replaces
    /// themselves refuse.
    fn rotate(&self, workspace: WorkspaceId) -> Result<KeyRef, KeyError> {
        let _ = workspace;
        Err(KeyError::Provider { provider: self.name(), reason: "keys are rotated by the customer, not by custos".into() })
    }

    /// Revokes (`true`) or restores (`false`) every key version of
    /// `workspace`. Providers the customer controls directly refuse.
    fn set_revoked(&self, workspace: WorkspaceId, revoked: bool) -> Result<(), KeyError> {
        let _ = (workspace, revoked);
        Err(KeyError::Provider {
            provider: self.name(),
            reason: "revocation is done at the key's source (remove or restore the customer's key)".into(),
        })
    }

    /// Destroys the retired versions of `workspace` that no stored data
    /// needs any more: every version but the current one and those in
    /// `in_use` (the versions the workspace's segments are sealed under).
    /// Returns the versions destroyed. Providers that keep every version
    /// (the default) destroy none.
    fn forget_unused(&self, workspace: WorkspaceId, in_use: &[KeyRef]) -> Result<Vec<KeyRef>, KeyError> {
        let _ = (workspace, in_use);
        Ok(Vec::new())
    }

    /// Destroys every key version of `workspace` (crypto-shredding: data
    /// sealed under them can never be read again). Idempotent. Providers
    /// that cannot destroy keys refuse, so a deletion never claims a
    /// shredding that did not happen.
    fn destroy(&self, workspace: WorkspaceId) -> Result<(), KeyError> {
        let _ = workspace;
        Err(KeyError::Provider { provider: self.name(), reason: "this provider cannot destroy keys".into() })
    }

    /// The key versions of `workspace`, oldest first (as far as the
    /// provider knows them).
    fn versions(&self, workspace: WorkspaceId) -> Result<Vec<KeyVersionInfo>, KeyError> {
        match self.current(workspace) {
            Ok(key) => Ok(vec![KeyVersionInfo { key, state: KeyState::Active, created_at: 0 }]),
            Err(KeyError::Revoked { key, .. }) => Ok(vec![KeyVersionInfo { key, state: KeyState::Revoked, created_at: 0 }]),
            Err(e) => Err(e),
        }
    }
}

fn wrap_aad(workspace: WorkspaceId, key: &KeyRef) -> Vec<u8> {
    let mut aad = b"custos-dek-v1".to_vec();
    aad.extend_from_slice(workspace.as_uuid().as_bytes());
    aad.extend_from_slice(key.key_id.as_bytes());
    aad.extend_from_slice(&key.version.to_le_bytes());
    aad
}

/// Wraps `dek` under the workspace key `kek` (format version 1 above).
pub fn wrap_with(kek: &DataKey, workspace: WorkspaceId, key: &KeyRef, dek: &DataKey) -> Result<Vec<u8>, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| KeyError::Random)?;
    let mut out = Vec::with_capacity(WRAPPED_LEN);
    out.push(WRAP_VERSION);
    out.extend_from_slice(&nonce);
    let mut body = dek.expose().to_vec();
    kek.aead()
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(wrap_aad(workspace, key)), &mut body)
        .map_err(|_| KeyError::Random)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Unwraps a data key [`wrap_with`] wrapped.
pub fn unwrap_with(kek: &DataKey, workspace: WorkspaceId, key: &KeyRef, wrapped: &[u8]) -> Result<DataKey, KeyError> {
    let bad = || KeyError::Unwrap { workspace, key: key.clone() };
    if wrapped.len() != WRAPPED_LEN || wrapped[0] != WRAP_VERSION {
        return Err(bad());
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&wrapped[1..1 + NONCE_LEN]);
    let mut body = wrapped[1 + NONCE_LEN..].to_vec();
    let plain = kek
        .aead()
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(wrap_aad(workspace, key)), &mut body)
        .map_err(|_| bad())?;
    let arr: [u8; KEY_LEN] = plain.try_into().map_err(|_| bad())?;
    Ok(DataKey::from_bytes(arr))
}

/// Parses key material: 32 bytes as 64 hex digits or base64 (surrounding
/// whitespace ignored).
pub fn parse_key_material(text: &str, what: &str) -> Result<DataKey, KeyError> {
    let t = text.trim();
    let bytes = if t.len() == 2 * KEY_LEN && t.bytes().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(t).ok()
    } else {
        base64::engine::general_purpose::STANDARD.decode(t).ok()
    };
    let bytes = bytes.ok_or_else(|| KeyError::Material {
        what: what.to_string(),
        reason: "not 64 hex digits or base64".into(),
    })?;
    let arr: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| KeyError::Material {
        what: what.to_string(),
        reason: format!("{} bytes, expected {KEY_LEN}", bytes.len()),
    })?;
    Ok(DataKey::from_bytes(arr))
}

/// The state of one workspace key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// New data is sealed under it (one per workspace).
    Active,
    /// Kept to unwrap older data keys.
    Retired,
    /// Unusable until restored.
    Revoked,
}

/// One workspace key version in the service keystore.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredVersion {
    version: u32,
    state: KeyState,
    created_at: TimestampMicros,
    /// The workspace key, sealed under the master key (base64 of
    /// [`wrap_with`]'s format, with the workspace id and `master` v1 as
    /// associated data).
    sealed: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    format_version: u32,
    /// Per workspace id, its key versions, oldest first.
    workspaces: BTreeMap<String, Vec<StoredVersion>>,
}

/// A status line per key version (for `custos key status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyVersionInfo {
    /// The key and version.
    pub key: KeyRef,
    /// Its state.
    pub state: KeyState,
    /// When it was made (µs since the epoch).
    pub created_at: TimestampMicros,
}

/// Service-managed keys: a keystore file (`keystore.json`, format 1) in
/// which every workspace key version is sealed under one master key. The
/// master key comes from a file or an environment variable and is never
/// written into the keystore; a copy of the data directory without it
/// reveals nothing.
///
/// The file is rewritten atomically (temporary file, fsync, rename, fsync
/// of the directory) on every change; workspace keys are created on first
/// use.
pub struct ServiceKeystore {
    path: PathBuf,
    master: DataKey,
    state: Mutex<StoreFile>,
}

impl std::fmt::Debug for ServiceKeystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceKeystore").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The key id of every service-managed workspace key.
pub const SERVICE_KEY_ID: &str = "service";

fn master_ref() -> KeyRef {
    KeyRef { key_id: "master".into(), version: 1 }
}

impl ServiceKeystore {
    /// Opens (or creates, empty) the keystore at `path` under `master`.
    /// Every stored version is checked to unseal under `master` now, so a
    /// wrong master key fails at start, not at the first query.
    pub fn open(path: &Path, master: DataKey) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: path.to_path_buf(), source };
        let file = match std::fs::read(path) {
            Ok(bytes) => {
                let f: StoreFile = serde_json::from_slice(&bytes)
                    .map_err(|e| KeyError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
                if f.format_version != 1 {
                    return Err(KeyError::Corrupt {
                        path: path.to_path_buf(),
                        reason: format!("format version {} (this build reads 1)", f.format_version),
                    });
                }
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoreFile { format_version: 1, ..StoreFile::default() },
            Err(e) => return Err(io(e)),
        };
        let ks = Self { path: path.to_path_buf(), master, state: Mutex::new(file) };
        {
            let f = ks.lock();
            for (ws, versions) in &f.workspaces {
                let ws: WorkspaceId = ws
                    .parse()
                    .map_err(|_| KeyError::Corrupt { path: path.to_path_buf(), reason: format!("bad workspace id {ws:?}") })?;
                for v in versions {
                    ks.unseal(ws, v).map_err(|_| KeyError::Material {
                        what: "master key".into(),
                        reason: format!(
                            "it does not open the keystore {} (workspace {ws} v{}): wrong master key?",
                            path.display(),
                            v.version
                        ),
                    })?;
                }
            }
        }
        Ok(ks)
    }

    /// The master key from `CUSTOS_MASTER_KEY` if set, else from `file`
    /// (created with a random key, mode 0600, when `create` and missing).
    pub fn master_key(file: &Path, create: bool) -> Result<DataKey, KeyError> {
        if let Ok(v) = std::env::var("CUSTOS_MASTER_KEY") {
            return parse_key_material(&v, "CUSTOS_MASTER_KEY");
        }
        match std::fs::read_to_string(file) {
            Ok(t) => parse_key_material(&t, &file.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = DataKey::generate()?;
                write_atomic(file, hex::encode(key.expose()).as_bytes(), 0o600)
                    .map_err(|source| KeyError::Io { path: file.to_path_buf(), source })?;
                Ok(key)
            }
            Err(e) => Err(KeyError::Material { what: file.display().to_string(), reason: e.to_string() }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreFile> {
        // A panic while holding the lock cannot leave the file half-changed
        // (changes are written before the in-memory state is replaced).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unseal(&self, ws: WorkspaceId, v: &StoredVersion) -> Result<DataKey, KeyError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&v.sealed)
            .map_err(|_| KeyError::Corrupt { path: self.path.clone(), reason: format!("workspace {ws} v{}: bad base64", v.version) })?;
        unwrap_with(&self.master, ws, &master_ref(), &raw)
    }

    fn save(&self, f: &StoreFile) -> Result<(), KeyError> {
        let bytes = serde_json::to_vec_pretty(f).map_err(|e| KeyError::Corrupt { path: self.path.clone(), reason: e.to_string() })?;
        write_atomic(&self.path, &bytes, 0o600).map_err(|source| KeyError::Io { path: self.path.clone(), source })
    }

    fn new_version(&self, ws: WorkspaceId, version: u32) -> Result<StoredVersion, KeyError> {
        let key = DataKey::generate()?;
        let sealed = wrap_with(&self.master, ws, &master_ref(), &key)?;
        Ok(StoredVersion {
            version,
            state: KeyState::Active,
            created_at: now_micros(),
            sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
        })
    }

    /// Makes a new key version for `workspace` the one new data is sealed
    /// under; the previous one is kept (retired) for older data.
    pub fn rotate(&self, workspace: WorkspaceId) -> Result<KeyRef, KeyError> {
        let mut f = self.lock();
        let mut next = f.clone();
        let versions = next.workspaces.entry(workspace.to_string()).or_default();
        if versions.iter().any(|v| v.state == KeyState::Revoked) {
            return Err(KeyError::Revoked {
                workspace,
                key: KeyRef { key_id: SERVICE_KEY_ID.into(), version: versions.last().map_or(0, |v| v.version) },
            });
        }
        let version = versions.last().map_or(1, |v| v.version + 1);
        for v in versions.iter_mut() {
            v.state = KeyState::Retired;
        }
        versions.push(self.new_version(workspace, version)?);
        self.save(&next)?;
        *f = next;
        Ok(KeyRef { key_id: SERVICE_KEY_ID.into(), version })
    }

    /// Revokes (`true`) or restores (`false`) every key version of
    /// `workspace`: while revoked nothing of it can be sealed or read.
    pub fn set_revoked(&self, workspace: WorkspaceId, revoked: bool) -> Result<(), KeyError> {
        let mut f = self.lock();
        let mut next = f.clone();
        let versions = next.workspaces.get_mut(&workspace.to_string()).ok_or_else(|| KeyError::Unknown {
            workspace,
            key: "-".into(),
            provider: self.name(),
        })?;
        let last = versions.len() - 1;
        for (i, v) in versions.iter_mut().enumerate() {
            v.state = match (revoked, i == last) {
                (true, _) => KeyState::Revoked,
                (false, true) => KeyState::Active,
                (false, false) => KeyState::Retired,
            };
        }
        self.save(&next)?;
        *f = next;
        Ok(())
    }

    /// Forgets the retired versions of `workspace` not in `in_use` (never
    /// the active one, nothing while revoked); returns them.
    pub fn forget_unused(&self, workspace: WorkspaceId, in_use: &[KeyRef]) -> Result<Vec<KeyRef>, KeyError> {
        let mut f = self.lock();
        let mut next = f.clone();
        let Some(versions) = next.workspaces.get_mut(&workspace.to_string()) else { return Ok(Vec::new()) };
        let used = |v: u32| in_use.iter().any(|k| k.key_id == SERVICE_KEY_ID && k.version == v);
        let mut gone = Vec::new();
        versions.retain(|v| {
            let keep = v.state != KeyState::Retired || used(v.version);
            if !keep {
                gone.push(KeyRef { key_id: SERVICE_KEY_ID.into(), version: v.version });
            }
            keep
        });
        if !gone.is_empty() {
            self.save(&next)?;
            *f = next;
        }
        Ok(gone)
    }

    /// Forgets every key of `workspace` (crypto-shredding: its data can
    /// never be read again). Idempotent.
    pub fn destroy(&self, workspace: WorkspaceId) -> Result<(), KeyError> {
        let mut f = self.lock();
        let mut next = f.clone();
        if next.workspaces.remove(&workspace.to_string()).is_some() {
            self.save(&next)?;
            *f = next;
        }
        Ok(())
    }

    /// The key versions of `workspace`, oldest first.
    pub fn versions(&self, workspace: WorkspaceId) -> Vec<KeyVersionInfo> {
        self.lock()
            .workspaces
            .get(&workspace.to_string())
            .map(|vs| {
                vs.iter()
                    .map(|v| KeyVersionInfo {
                        key: KeyRef { key_id: SERVICE_KEY_ID.into(), version: v.version },
                        state: v.state,
                        created_at: v.created_at,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn kek(&self, workspace: WorkspaceId, key: &KeyRef) -> Result<DataKey, KeyError> {
        let f = self.lock();
        let unknown = || KeyError::Unknown { workspace, key: key.to_string(), provider: self.name() };
        if key.key_id != SERVICE_KEY_ID {
            return Err(unknown());
        }
        let v = f
            .workspaces
            .get(&workspace.to_string())
            .and_then(|vs| vs.iter().find(|v| v.version == key.version))
            .ok_or_else(unknown)?;
        if v.state == KeyState::Revoked {
            return Err(KeyError::Revoked { workspace, key: key.clone() });
        }
        self.unseal(workspace, v)
    }
}

impl KeyProvider for ServiceKeystore {
    fn name(&self) -> String {
        format!("service keystore {}", self.path.display())
    }

    fn current(&self, workspace: WorkspaceId) -> Result<KeyRef, KeyError> {
        {
            let f = self.lock();
            if let Some(v) = f.workspaces.get(&workspace.to_string()).and_then(|vs| vs.last()) {
                let key = KeyRef { key_id: SERVICE_KEY_ID.into(), version: v.version };
                return match v.state {
                    KeyState::Revoked => Err(KeyError::Revoked { workspace, key }),
                    _ => Ok(key),
                };
            }
        }
        self.rotate(workspace)
    }

    fn wrap(&self, workspace: WorkspaceId, key: &KeyRef, dek: &DataKey) -> Result<Vec<u8>, KeyError> {
        wrap_with(&self.kek(workspace, key)?, workspace, key, dek)
    }

    fn unwrap(&self, workspace: WorkspaceId, key: &KeyRef, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        unwrap_with(&self.kek(workspace, key)?, workspace, key, wrapped)
    }

    fn rotate(&self, workspace: WorkspaceId) -> Result<KeyRef, KeyError> {
        ServiceKeystore::rotate(self, workspace)
    }

    fn set_revoked(&self, workspace: WorkspaceId, revoked: bool) -> Result<(), KeyError> {
        ServiceKeystore::set_revoked(self, workspace, revoked)
    }

    fn forget_unused(&self, workspace: WorkspaceId, in_use: &[KeyRef]) -> Result<Vec<KeyRef>, KeyError> {
        ServiceKeystore::forget_unused(self, workspace, in_use)
    }

    fn destroy(&self, workspace: WorkspaceId) -> Result<(), KeyError> {
        ServiceKeystore::destroy(self, workspace)
    }

    fn versions(&self, workspace: WorkspaceId) -> Result<Vec<KeyVersionInfo>, KeyError> {
        Ok(ServiceKeystore::versions(self, workspace))
    }
}

/// Customer-managed keys as files: each workspace's key is 32 bytes (hex or
/// base64) in a file the customer controls (`<dir>/<workspace id>.key`).
/// The key id is `file:` and the first 16 hex digits of the key's SHA-256,
/// so replacing the file with another key is a new key, and data sealed
/// under the old one fails with a clear error. The file is read on every
/// use: removing it revokes access at once, putting it back restores it.
#[derive(Debug)]
pub struct KeyFileProvider {
    dir: PathBuf,
}

impl KeyFileProvider {
    /// Keys under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// The key file of `workspace`.
    pub fn path(&self, workspace: WorkspaceId) -> PathBuf {
        self.dir.join(format!("{workspace}.key"))
    }

    fn read(&self, workspace: WorkspaceId) -> Result<(KeyRef, DataKey), KeyError> {
        let path = self.path(workspace);
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => KeyError::Revoked {
                workspace,
                key: KeyRef { key_id: format!("file:{}", path.display()), version: 1 },
            },
            _ => KeyError::Io { path: path.clone(), source: e },
        })?;
        let key = parse_key_material(&text, &path.display().to_string())?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.expose());
        let id = format!("file:{}", &hex::encode(digest.as_ref())[..16]);
        Ok((KeyRef { key_id: id, version: 1 }, key))
    }
}

impl KeyProvider for KeyFileProvider {
    fn name(&self) -> String {
        format!("key files in {}", self.dir.display())
    }

    fn current(&self, workspace: WorkspaceId) -> Result<KeyRef, KeyError> {
        self.read(workspace).map(|(r, _)| r)
    }

    fn wrap(&self, workspace: WorkspaceId, key: &KeyRef, dek: &DataKey) -> Result<Vec<u8>, KeyError> {
        let (have, kek) = self.read(workspace)?;
        if &have != key {
            return Err(KeyError::Unknown { workspace, key: key.to_string(), provider: self.name() });
        }
        wrap_with(&kek, workspace, key, dek)
    }

    /// Removes the workspace's key file (the customer's copy elsewhere,
    /// if any, is theirs to destroy).
    fn destroy(&self, workspace: WorkspaceId) -> Result<(), KeyError> {
        match std::fs::remove_file(self.path(workspace)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(KeyError::Provider { provider: self.name(), reason: format!("cannot remove {}: {e}", self.path(workspace).display()) }),
        }
    }

    fn unwrap(&self, workspace: WorkspaceId, key: &KeyRef, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let (have, kek) = self.read(workspace)?;
        if &have != key {
            return Err(KeyError::Unknown { workspace, key: key.to_string(), provider: self.name() });
        }
        unwrap_with(&kek, workspace, key, wrapped)
    }
}

/// Writes `bytes` to `path` atomically and durably with `mode` (Unix).
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

pub mod pkcs11;
pub use pkcs11::{Pkcs11Config, Pkcs11Provider, DEFAULT_KEY_LABEL_PREFIX, PKCS11_KEY_ID};

#[cfg(test)]
mod tests;
