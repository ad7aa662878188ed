//! Customer-managed workspace keys in an HSM, through PKCS#11
//! ([`Pkcs11Provider`]).
//!
//! # Objects in the token
//!
//! - One **AES-256 secret key per workspace key version**, labelled
//!   `<prefix>:<workspace id>:v<N>` (prefix `custos` by default), with
//!   `CKA_ID` = the workspace id's 16 bytes. It is generated inside the HSM
//!   (`CKM_AES_KEY_GEN`) with `CKA_TOKEN`, `CKA_PRIVATE` and `CKA_SENSITIVE`
//!   true, `CKA_EXTRACTABLE` false, `CKA_ENCRYPT`/`CKA_DECRYPT` true (and
//!   nothing else: no wrap, unwrap, sign, verify or derive). The key never
//!   leaves the HSM: data keys are wrapped and unwrapped by the HSM
//!   (`C_Encrypt`/`C_Decrypt`).
//! - One **marker** per workspace: a data object (`CKO_DATA`, private,
//!   label `<prefix>:<workspace id>`, `CKA_APPLICATION` `custos`) whose
//!   value lists the versions made, one ASCII line each: `v<N> <made at, µs
//!   since the epoch>` (the age scheduled rotation goes by). It tells "the
//!   keys were deleted" apart from "this workspace never had a key": with
//!   it, a deleted key is an error naming it, never a silently made new
//!   `v1`. It is replaced (a new object first, then the old one removed) at
//!   every new version. Deleting the marker *and* every key object of a
//!   workspace is crypto-shredding: custos then starts the workspace
//!   afresh.
//!
//! Key states come from the objects themselves: a version whose
//! `CKA_ENCRYPT` or `CKA_DECRYPT` is false is **revoked** (the HSM refuses
//! to use it, `CKR_KEY_FUNCTION_NOT_PERMITTED`); a version the marker
//! promises but whose object is gone is **deleted** (reported as revoked by
//! [`KeyProvider::versions`], [`KeyError::Unavailable`] on use); otherwise
//! the newest version is active and older ones are retired.
//!
//! # Revocation
//!
//! [`KeyProvider::set_revoked`] sets `CKA_ENCRYPT` and `CKA_DECRYPT` false
//! (`C_SetAttributeValue`; the objects are made with `CKA_MODIFIABLE`) on
//! every version of the workspace at once, so the HSM itself refuses every
//! wrap and unwrap; restoring sets them true again. The customer can revoke
//! in the HSM too, without custos: clear either attribute, delete the key
//! objects (restore them from the HSM's backup to give access back), or
//! change the user PIN custos logs in with.
//!
//! # Wrapped data key, format version 2 (PKCS#11)
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 1  | version, `2` |
//! | 1  | 12 | IV, random per wrap |
//! | 13 | 32 | the data key, `CKM_AES_GCM` under the workspace key, in the HSM |
//! | 45 | 16 | GCM tag (128 bits) |
//!
//! The same length as format 1 (the built-in providers) and the same
//! associated data: `custos-dek-v1`, the workspace id (16 bytes), the key
//! id (`pkcs11`) and the version (u32 LE), so a wrapped key moved to another
//! workspace or labelled with another version fails to unwrap. The version
//! byte keeps the formats apart: a format-1 key is never sent to the HSM.
//!
//! # Sessions
//!
//! One PKCS#11 context per module path for the whole process (initialised
//! once, never finalised: `C_Initialize` is per process), and per provider
//! one read-write session logged in as the user, behind a mutex (calls are
//! serialised; an HSM round trip is short next to a segment's decode). A
//! session the token no longer knows (`CKR_SESSION_HANDLE_INVALID`, token
//! removed, logged out) is reopened and logged in again, and the call
//! retried once; if the token still cannot be reached the call fails with
//! [`KeyError::Unavailable`] naming the workspace and key, which the server
//! treats like a revocation (ingest answers 503, queries fail naming it).
//!
//! One custos server per token label prefix: two servers making the same
//! workspace's first key at the same moment would both make a `v1`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use custos_model::{now_micros, Secret, TimestampMicros, WorkspaceId};
use ring::aead::NONCE_LEN;
use ring::rand::{SecureRandom, SystemRandom};

use super::{wrap_aad, DataKey, KeyError, KeyProvider, KeyRef, KeyState, KeyVersionInfo, KEY_LEN, WRAPPED_LEN};

/// The key id of every PKCS#11 workspace key (versions tell them apart).
pub const PKCS11_KEY_ID: &str = "pkcs11";
/// The default label prefix of the key objects.
pub const DEFAULT_KEY_LABEL_PREFIX: &str = "custos";
/// Version byte of a data key wrapped in the HSM.
const WRAP_VERSION_PKCS11: u8 = 2;
/// GCM tag length, bits.
const TAG_BITS: u64 = 128;
/// `CKA_APPLICATION` of the workspace markers.
const MARKER_APPLICATION: &[u8] = b"custos";

/// How to reach the HSM.
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library), e.g.
    /// `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The label of the token holding the workspace keys.
    pub token_label: String,
    /// The token's user PIN (never printed).
    pub pin: Secret<String>,
    /// The prefix of the key objects' labels (`<prefix>:<workspace id>:v<N>`).
    pub key_label_prefix: String,
}

/// Workspace keys as non-extractable AES-256 keys in a PKCS#11 token (an
/// HSM; tested against SoftHSM2). See the [module documentation](self) for
/// the objects, revocation, the wrapped-key format and sessions.
pub struct Pkcs11Provider {
    cfg: Pkcs11Config,
    ctx: Pkcs11,
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for Pkcs11Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Provider")
            .field("module", &self.cfg.module)
            .field("token_label", &self.cfg.token_label)
            .field("key_label_prefix", &self.cfg.key_label_prefix)
            .finish_non_exhaustive()
    }
}

/// Why a call failed, before it is given its workspace and key.
enum Fail {
    /// The token cannot be used at all (not present, PIN refused, session
    /// cannot be opened).
    Token(String),
    /// A PKCS#11 call failed.
    Call(CkError),
    /// Already decided.
    Key(KeyError),
}

impl From<CkError> for Fail {
    fn from(e: CkError) -> Self {
        Fail::Call(e)
    }
}

/// `RvError::PinIncorrect` → `CKR_PIN_INCORRECT`.
fn ckr_name(rv: &RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A PKCS#11 error in a few words: `C_Decrypt: CKR_KEY_FUNCTION_NOT_PERMITTED`.
fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => format!("C_{f:?}: {}", ckr_name(rv)),
        CkError::LibraryLoading(e) => format!("cannot load the module: {e}"),
        other => other.to_string().to_lowercase(),
    }
}

fn rv_of(e: &CkError) -> Option<&RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(rv),
        _ => None,
    }
}

/// Errors after which the session is useless: reopen (and log in) again.
fn is_session_error(e: &CkError) -> bool {
    matches!(
        rv_of(e),
        Some(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::SlotIdInvalid
                | RvError::CryptokiNotInitialized
        )
    )
}

/// The process's PKCS#11 context for `module`, loaded and initialised once.
/// PKCS#11 allows one `C_Initialize` per process; contexts are kept (and
/// the module loaded) until the process ends.
fn context(module: &Path) -> Result<Pkcs11, String> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let map = CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()));
    // A panic while holding the lock leaves at most a context not yet
    // inserted: the map stays consistent.
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = map.get(module) {
        return Ok(ctx.clone());
    }
    if !module.is_file() {
        return Err(format!("the module {} does not exist", module.display()));
    }
    let ctx = Pkcs11::new(module).map_err(|e| describe(&e))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        // Initialised by someone else in this process (another library).
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(format!("cannot initialise the module: {}", describe(&e))),
    }
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// One key object of a workspace, as listed.
struct Listed {
    version: u32,
    usable: bool,
}

/// A workspace's objects: its key versions (sorted) and the versions its
/// marker says were made, with when.
struct Inventory {
    keys: Vec<Listed>,
    made: BTreeMap<u32, TimestampMicros>,
}

impl Inventory {
    /// The newest version made (by the marker or an object found).
    fn newest(&self) -> u32 {
        let listed = self.keys.iter().map(|k| k.version).max().unwrap_or(0);
        listed.max(self.made.keys().next_back().copied().unwrap_or(0))
    }

    fn get(&self, version: u32) -> Option<&Listed> {
        self.keys.iter().find(|k| k.version == version)
    }
}

/// `N` of a key label `<prefix>:<workspace id>:v<N>`, given everything before `N`.
fn version_in_label(label: &[u8], prefix: &str) -> Option<u32> {
    let rest = label.strip_prefix(prefix.as_bytes())?;
    if rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// The marker's value: `v<N> <µs>` lines (malformed lines are skipped).
fn parse_marker(value: &[u8], into: &mut BTreeMap<u32, TimestampMicros>) {
    for line in String::from_utf8_lossy(value).lines() {
        let mut parts = line.split_whitespace();
        let version = parts.next().and_then(|v| v.strip_prefix('v')).and_then(|v| v.parse::<u32>().ok());
        let at = parts.next().and_then(|t| t.parse::<TimestampMicros>().ok()).unwrap_or(0);
        if let Some(v) = version {
            let e = into.entry(v).or_insert(at);
            *e = (*e).max(at);
        }
    }
}

fn format_marker(made: &BTreeMap<u32, TimestampMicros>) -> Vec<u8> {
    made.iter().map(|(v, at)| format!("v{v} {at}\n")).collect::<String>().into_bytes()
}

impl Pkcs11Provider {
    /// Loads the module, finds the token by its label, logs in with the
    /// PIN and checks the token can generate AES keys and do AES-GCM. Every
    /// failure names the token and what went wrong (a missing module, no
    /// such token, a wrong PIN).
    pub fn open(cfg: Pkcs11Config) -> Result<Self, KeyError> {
        let provider_err = |reason: String| KeyError::Provider {
            provider: format!("pkcs11 token {:?} (module {})", cfg.token_label, cfg.module.display()),
            reason,
        };
        if cfg.token_label.is_empty() {
            return Err(provider_err("the token label is empty".into()));
        }
        if cfg.key_label_prefix.is_empty() || cfg.key_label_prefix.chars().any(char::is_control) {
            return Err(provider_err(format!("the key label prefix {:?} must be non-empty, without control characters", cfg.key_label_prefix)));
        }
        let ctx = context(&cfg.module).map_err(provider_err)?;
        let p = Self { cfg, ctx, session: Mutex::new(None) };
        let slot = p.slot().map_err(|r| p.provider_error(r))?;
        let mechs = p.ctx.get_mechanism_list(slot).map_err(|e| p.provider_error(describe(&e)))?;
        for (m, name) in [(MechanismType::AES_KEY_GEN, "CKM_AES_KEY_GEN"), (MechanismType::AES_GCM, "CKM_AES_GCM")] {
            if !mechs.contains(&m) {
                return Err(p.provider_error(format!("the token does not offer {name}")));
            }
        }
        let session = p.connect().map_err(|r| p.provider_error(r))?;
        *p.lock() = Some(session);
        Ok(p)
    }

    fn provider_error(&self, reason: String) -> KeyError {
        KeyError::Provider { provider: self.name(), reason }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Session>> {
        // The guarded value is only a session handle: a panic elsewhere
        // cannot leave it half-changed.
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot holding the token labelled `token_label`.
    fn slot(&self) -> Result<Slot, String> {
        let slots = self.ctx.get_slots_with_token().map_err(|e| describe(&e))?;
        let mut labels = Vec::new();
        let mut found = Vec::new();
        for slot in slots {
            let info = self.ctx.get_token_info(slot).map_err(|e| describe(&e))?;
            if info.label() == self.cfg.token_label {
                found.push(slot);
            }
            labels.push(format!("{:?}", info.label()));
        }
        match found.as_slice() {
            [slot] => Ok(*slot),
            [] => Err(format!(
                "no token labelled {:?} is present (tokens: {})",
                self.cfg.token_label,
                if labels.is_empty() { "none".to_string() } else { labels.join(", ") }
            )),
            _ => Err(format!("{} tokens are labelled {:?}: give each token its own label", found.len(), self.cfg.token_label)),
        }
    }

    /// A new read-write session, logged in as the user.
    fn connect(&self) -> Result<Session, String> {
        let slot = self.slot()?;
        let session = self.ctx.open_rw_session(slot).map_err(|e| format!("cannot open a session: {}", describe(&e)))?;
        let pin = AuthPin::from(self.cfg.pin.expose().clone());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => Ok(session),
            // Login state is shared by the process's sessions on a token:
            // another session of this process logged in already.
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                Err("login refused: the user PIN is incorrect (CKR_PIN_INCORRECT)".into())
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err("login refused: the user PIN is locked (CKR_PIN_LOCKED)".into()),
            Err(e) => Err(format!("login failed: {}", describe(&e))),
        }
    }

    /// Runs `op` on the logged-in session, reopening it once if the token
    /// lost it.
    fn run<T>(&self, op: impl Fn(&Session) -> Result<T, Fail>) -> Result<T, Fail> {
        let mut guard = self.lock();
        for attempt in 0..2 {
            let session = match guard.take() {
                Some(s) => s,
                None => self.connect().map_err(Fail::Token)?,
            };
            match op(&session) {
                Err(Fail::Call(e)) if is_session_error(&e) => {
                    drop(session);
                    if attempt == 1 {
                        return Err(Fail::Token(format!("the token lost the session: {}", describe(&e))));
                    }
                    tracing::warn!(provider = %self.name(), error = %describe(&e), "pkcs11 session lost; reopening");
                }
                other => {
                    *guard = Some(session);
                    return other;
                }
            }
        }
        Err(Fail::Token("the token lost the session twice".into()))
    }

    /// Private objects are invisible to a session that is no longer logged
    /// in (another session of the process logged out): before taking "not
    /// found" for an answer, check, so that [`Self::run`] logs in again.
    fn ensure_logged_in(s: &Session) -> Result<(), Fail> {
        match s.get_session_info()?.session_state() {
            SessionState::RwUser | SessionState::RoUser => Ok(()),
            _ => Err(Fail::Call(CkError::Pkcs11(RvError::UserNotLoggedIn, Function::GetSessionInfo))),
        }
    }

    /// Whether the key `h` seals and opens 32 random bytes with AES-GCM.
    fn probe(s: &Session, h: ObjectHandle) -> bool {
        let mut data = [0u8; KEY_LEN];
        let mut iv = [0u8; NONCE_LEN];
        if SystemRandom::new().fill(&mut data).is_err() || SystemRandom::new().fill(&mut iv).is_err() {
            return false;
        }
        let aad = b"custos-pkcs11-probe";
        let run = || -> Result<bool, CkError> {
            let mut iv1 = iv;
            let sealed = s.encrypt(&Mechanism::AesGcm(GcmParams::new(&mut iv1, aad, TAG_BITS.into())?), h, &data)?;
            let mut iv2 = iv;
            let opened = s.decrypt(&Mechanism::AesGcm(GcmParams::new(&mut iv2, aad, TAG_BITS.into())?), h, &sealed)?;
            Ok(opened == data)
        };
        run().unwrap_or(false)
    }

    fn key_label(&self, ws: WorkspaceId, version: u32) -> String {
        format!("{}:{ws}:v{version}", self.cfg.key_label_prefix)
    }

    fn marker_label(&self, ws: WorkspaceId) -> String {
        format!("{}:{ws}", self.cfg.key_label_prefix)
    }

    fn marker_template(&self, ws: WorkspaceId) -> Vec<Attribute> {
        vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Application(MARKER_APPLICATION.to_vec()),
            Attribute::Label(self.marker_label(ws).into_bytes()),
        ]
    }

    /// Every object of `ws`: key versions and its marker.
    fn inventory(&self, s: &Session, ws: WorkspaceId) -> Result<Inventory, Fail> {
        let prefix = format!("{}:{ws}:v", self.cfg.key_label_prefix);
        let template = [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Id(ws.as_uuid().as_bytes().to_vec())];
        let mut keys: Vec<Listed> = Vec::new();
        for h in s.find_objects(&template)? {
            let attrs = s.get_attributes(h, &[AttributeType::Label, AttributeType::Encrypt, AttributeType::Decrypt])?;
            let (mut version, mut enc, mut dec) = (None, false, false);
            for a in attrs {
                match a {
                    Attribute::Label(l) => version = version_in_label(&l, &prefix),
                    Attribute::Encrypt(b) => enc = b,
                    Attribute::Decrypt(b) => dec = b,
                    _ => {}
                }
            }
            let Some(version) = version else { continue };
            if keys.iter().any(|k| k.version == version) {
                return Err(Fail::Token(format!("two key objects are labelled {:?}: remove the one custos did not make", self.key_label(ws, version))));
            }
            keys.push(Listed { version, usable: enc && dec });
        }
        keys.sort_by_key(|k| k.version);
        let mut made = BTreeMap::new();
        for h in s.find_objects(&self.marker_template(ws))? {
            for a in s.get_attributes(h, &[AttributeType::Value])? {
                if let Attribute::Value(v) = a {
                    parse_marker(&v, &mut made);
                }
            }
        }
        if keys.is_empty() && made.is_empty() {
            Self::ensure_logged_in(s)?;
        }
        Ok(Inventory { keys, made })
    }

    /// Replaces the marker of `ws` with one listing `made`: the new object
    /// first, then the old ones go (a marker is always there).
    fn set_marker(&self, s: &Session, ws: WorkspaceId, made: &BTreeMap<u32, TimestampMicros>) -> Result<(), Fail> {
        let old = s.find_objects(&self.marker_template(ws))?;
        let mut template = self.marker_template(ws);
        template.extend([Attribute::Private(true), Attribute::Value(format_marker(made))]);
        s.create_object(&template)?;
        for h in old {
            s.destroy_object(h)?;
        }
        Ok(())
    }

    /// Every key object of `ws` custos made (by id and label prefix).
    fn key_objects(&self, s: &Session, ws: WorkspaceId) -> Result<Vec<ObjectHandle>, Fail> {
        let template = [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Id(ws.as_uuid().as_bytes().to_vec())];
        let prefix = format!("{}:{ws}:v", self.cfg.key_label_prefix);
        let mut out = Vec::new();
        for h in s.find_objects(&template)? {
            let ours = s
                .get_attributes(h, &[AttributeType::Label])?
                .iter()
                .any(|a| matches!(a, Attribute::Label(l) if version_in_label(l, &prefix).is_some()));
            if ours {
                out.push(h);
            }
        }
        Ok(out)
    }

    /// Generates version `version` of `ws`'s key inside the HSM and adds it
    /// to the marker.
    fn generate(&self, s: &Session, ws: WorkspaceId, version: u32, inv: &Inventory) -> Result<(), Fail> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen((KEY_LEN as u64).into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(self.key_label(ws, version).into_bytes()),
            Attribute::Id(ws.as_uuid().as_bytes().to_vec()),
        ];
        s.generate_key(&Mechanism::AesKeyGen, &template)?;
        let mut made = inv.made.clone();
        made.insert(version, now_micros());
        self.set_marker(s, ws, &made)
    }

    /// The handle of `key`'s object, or a clear error if it is missing.
    fn key_object(&self, s: &Session, ws: WorkspaceId, key: &KeyRef) -> Result<ObjectHandle, Fail> {
        if key.key_id != PKCS11_KEY_ID {
            return Err(Fail::Key(KeyError::Unknown { workspace: ws, key: key.to_string(), provider: self.name() }));
        }
        let label = self.key_label(ws, key.version);
        let found = s.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(ws.as_uuid().as_bytes().to_vec()),
            Attribute::Label(label.clone().into_bytes()),
        ])?;
        match found.as_slice() {
            [h] => Ok(*h),
            [] => {
                Self::ensure_logged_in(s)?;
                let inv = self.inventory(s, ws)?;
                if key.version == 0 || key.version > inv.newest() {
                    Err(Fail::Key(KeyError::Unknown { workspace: ws, key: key.to_string(), provider: self.name() }))
                } else {
                    Err(Fail::Key(self.deleted(ws, key)))
                }
            }
            _ => Err(Fail::Token(format!("{} key objects are labelled {label:?}: remove the ones custos did not make", found.len()))),
        }
    }

    fn deleted(&self, ws: WorkspaceId, key: &KeyRef) -> KeyError {
        KeyError::Unavailable {
            workspace: ws,
            key: key.to_string(),
            reason: format!(
                "its object {:?} is not in the token {:?} (deleted in the HSM?): the data sealed under it cannot be read until the object is restored from the HSM's backup",
                self.key_label(ws, key.version),
                self.cfg.token_label
            ),
        }
    }

    /// Gives a failure its workspace and key.
    fn key_error(&self, ws: WorkspaceId, key: Option<&KeyRef>, f: Fail) -> KeyError {
        let key_name = key.map_or_else(|| "-".to_string(), KeyRef::to_string);
        match f {
            Fail::Key(e) => e,
            Fail::Token(reason) => KeyError::Unavailable {
                workspace: ws,
                key: key_name,
                reason: format!("the token {:?} cannot be used: {reason}", self.cfg.token_label),
            },
            Fail::Call(e) => match (rv_of(&e), key) {
                (Some(RvError::KeyFunctionNotPermitted), Some(k)) => KeyError::Revoked { workspace: ws, key: k.clone() },
                (Some(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid), Some(k)) => self.deleted(ws, k),
                _ => KeyError::Provider { provider: self.name(), reason: format!("workspace {ws}, key {key_name}: {}", describe(&e)) },
            },
        }
    }

    fn rotate_in(&self, s: &Session, ws: WorkspaceId) -> Result<KeyRef, Fail> {
        let inv = self.inventory(s, ws)?;
        let newest = inv.newest();
        if newest > 0 {
            let key = KeyRef { key_id: PKCS11_KEY_ID.into(), version: newest };
            if inv.keys.iter().any(|k| !k.usable) {
                return Err(Fail::Key(KeyError::Revoked { workspace: ws, key }));
            }
            if inv.get(newest).is_none() {
                return Err(Fail::Key(self.deleted(ws, &key)));
            }
        }
        let version = newest.checked_add(1).ok_or_else(|| Fail::Token("no key version is left after u32::MAX".into()))?;
        self.generate(s, ws, version, &inv)?;
        Ok(KeyRef { key_id: PKCS11_KEY_ID.into(), version })
    }
}

impl KeyProvider for Pkcs11Provider {
    fn name(&self) -> String {
        format!("pkcs11 token {:?} (module {})", self.cfg.token_label, self.cfg.module.display())
    }

    fn current(&self, workspace: WorkspaceId) -> Result<KeyRef, KeyError> {
        self.run(|s| {
            let inv = self.inventory(s, workspace)?;
            let newest = inv.newest();
            if newest == 0 {
                self.generate(s, workspace, 1, &inv)?;
                return Ok(KeyRef { key_id: PKCS11_KEY_ID.into(), version: 1 });
            }
            let key = KeyRef { key_id: PKCS11_KEY_ID.into(), version: newest };
            match inv.get(newest) {
                None => Err(Fail::Key(self.deleted(workspace, &key))),
                Some(k) if !k.usable => Err(Fail::Key(KeyError::Revoked { workspace, key })),
                Some(_) => {
                    if !inv.made.contains_key(&newest) {
                        // A first key or rotation interrupted after the key
                        // was made: the marker catches up.
                        let mut made = inv.made.clone();
                        made.insert(newest, now_micros());
                        self.set_marker(s, workspace, &made)?;
                    }
                    Ok(key)
                }
            }
        })
        .map_err(|f| self.key_error(workspace, None, f))
    }

    fn wrap(&self, workspace: WorkspaceId, key: &KeyRef, dek: &DataKey) -> Result<Vec<u8>, KeyError> {
        let mut iv = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut iv).map_err(|_| KeyError::Random)?;
        let aad = wrap_aad(workspace, key);
        let sealed = self
            .run(|s| {
                let h = self.key_object(s, workspace, key)?;
                let mut iv = iv;
                let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into())?;
                Ok(s.encrypt(&Mechanism::AesGcm(params), h, dek.expose())?)
            })
            .map_err(|f| self.key_error(workspace, Some(key), f))?;
        if sealed.len() != KEY_LEN + 16 {
            return Err(self.provider_error(format!(
                "workspace {workspace}, key {key}: CKM_AES_GCM gave {} bytes for a {KEY_LEN}-byte key (expected {})",
                sealed.len(),
                KEY_LEN + 16
            )));
        }
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.push(WRAP_VERSION_PKCS11);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn unwrap(&self, workspace: WorkspaceId, key: &KeyRef, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let bad = || KeyError::Unwrap { workspace, key: key.clone() };
        if wrapped.len() != WRAPPED_LEN || wrapped[0] != WRAP_VERSION_PKCS11 {
            return Err(bad());
        }
        let aad = wrap_aad(workspace, key);
        let plain = self
            .run(|s| {
                let h = self.key_object(s, workspace, key)?;
                let mut iv = [0u8; NONCE_LEN];
                iv.copy_from_slice(&wrapped[1..1 + NONCE_LEN]);
                let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into())?;
                match s.decrypt(&Mechanism::AesGcm(params), h, &wrapped[1 + NONCE_LEN..]) {
                    Ok(p) => Ok(p),
                    // The tag does not verify.
                    Err(CkError::Pkcs11(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange, _)) => Err(Fail::Key(bad())),
                    // SoftHSM2 (2.6) answers a tag that does not verify
                    // with CKR_GENERAL_ERROR, as it would a failing HSM.
                    // Tell them apart: if the key still seals and opens a
                    // probe, the HSM is fine and the wrapped key is bad.
                    Err(e @ CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _)) => {
                        if Self::probe(s, h) {
                            Err(Fail::Key(bad()))
                        } else {
                            Err(Fail::Call(e))
                        }
                    }
                    Err(e) => Err(Fail::Call(e)),
                }
            })
            .map_err(|f| self.key_error(workspace, Some(key), f))?;
        let arr: [u8; KEY_LEN] = plain.as_slice().try_into().map_err(|_| bad())?;
        Ok(DataKey::from_bytes(arr))
    }

    fn rotate(&self, workspace: WorkspaceId) -> Result<KeyRef, KeyError> {
        self.run(|s| self.rotate_in(s, workspace)).map_err(|f| self.key_error(workspace, None, f))
    }

    fn set_revoked(&self, workspace: WorkspaceId, revoked: bool) -> Result<(), KeyError> {
        self.run(|s| {
            let mut changed = 0;
            for h in self.key_objects(s, workspace)? {
                s.update_attributes(h, &[Attribute::Encrypt(!revoked), Attribute::Decrypt(!revoked)])?;
                changed += 1;
            }
            if changed == 0 && self.inventory(s, workspace)?.made.is_empty() {
                return Err(Fail::Key(KeyError::Unknown { workspace, key: "-".into(), provider: self.name() }));
            }
            Ok(())
        })
        .map_err(|f| self.key_error(workspace, None, f))
    }

    /// Destroys the objects of retired versions no segment needs (never the
    /// newest, nothing while any version is revoked) and drops them from
    /// the marker.
    fn forget_unused(&self, workspace: WorkspaceId, in_use: &[KeyRef]) -> Result<Vec<KeyRef>, KeyError> {
        self.run(|s| {
            let inv = self.inventory(s, workspace)?;
            let newest = inv.newest();
            if inv.keys.iter().any(|k| !k.usable) {
                return Ok(Vec::new());
            }
            let used = |v: u32| in_use.iter().any(|k| k.key_id == PKCS11_KEY_ID && k.version == v);
            let mut gone = Vec::new();
            let mut made = inv.made.clone();
            for k in inv.keys.iter().filter(|k| k.version != newest && !used(k.version)) {
                let found = s.find_objects(&[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::Id(workspace.as_uuid().as_bytes().to_vec()),
                    Attribute::Label(self.key_label(workspace, k.version).into_bytes()),
                ])?;
                for h in found {
                    s.destroy_object(h)?;
                }
                made.remove(&k.version);
                gone.push(KeyRef { key_id: PKCS11_KEY_ID.into(), version: k.version });
            }
            if !gone.is_empty() {
                self.set_marker(s, workspace, &made)?;
            }
            Ok(gone)
        })
        .map_err(|f| self.key_error(workspace, None, f))
    }

    /// Destroys every key object of the workspace in the token, then its
    /// marker (crypto-shredding).
    fn destroy(&self, workspace: WorkspaceId) -> Result<(), KeyError> {
        self.run(|s| {
            for h in self.key_objects(s, workspace)? {
                s.destroy_object(h)?;
            }
            for h in s.find_objects(&self.marker_template(workspace))? {
                s.destroy_object(h)?;
            }
            Ok(())
        })
        .map_err(|f| self.key_error(workspace, None, f))
    }

    fn versions(&self, workspace: WorkspaceId) -> Result<Vec<KeyVersionInfo>, KeyError> {
        let inv = self.run(|s| self.inventory(s, workspace)).map_err(|f| self.key_error(workspace, None, f))?;
        let newest = inv.newest();
        // Every version made (the marker) or present (an object); a version
        // custos forgot after nothing needed it is in neither.
        let known: std::collections::BTreeSet<u32> = inv.made.keys().copied().chain(inv.keys.iter().map(|k| k.version)).collect();
        Ok(known
            .into_iter()
            .map(|version| {
                let key = KeyRef { key_id: PKCS11_KEY_ID.into(), version };
                match inv.get(version) {
                    // Deleted in the HSM: unusable, as revoked.
                    None => KeyVersionInfo { key, state: KeyState::Revoked, created_at: inv.made.get(&version).copied().unwrap_or(0) },
                    Some(k) => KeyVersionInfo {
                        key,
                        state: if !k.usable {
                            KeyState::Revoked
                        } else if version == newest {
                            KeyState::Active
                        } else {
                            KeyState::Retired
                        },
                        created_at: inv.made.get(&version).copied().unwrap_or(0),
                    },
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs11_errors_are_named_like_the_standard() {
        assert_eq!(ckr_name(&RvError::SessionHandleInvalid), "CKR_SESSION_HANDLE_INVALID");
        assert_eq!(describe(&CkError::Pkcs11(RvError::PinIncorrect, cryptoki::context::Function::Login)), "C_Login: CKR_PIN_INCORRECT");
    }

    #[test]
    fn the_marker_lists_versions_and_when_they_were_made() {
        let mut made = BTreeMap::new();
        made.insert(1, 1_700_000_000_000_000);
        made.insert(2, 1_710_000_000_000_000);
        let text = format_marker(&made);
        assert_eq!(text, b"v1 1700000000000000\nv2 1710000000000000\n");
        let mut back = BTreeMap::new();
        parse_marker(&text, &mut back);
        assert_eq!(back, made);
        // Two markers (a replacement interrupted) merge; junk is skipped.
        parse_marker(b"v3 5\nnonsense\nv 1\nv4\n", &mut back);
        assert_eq!(back.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(back[&4], 0, "no time: unknown age");
    }
}
