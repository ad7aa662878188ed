//! The host's telemetry identity: a random installation id and the key of
//! its host-name pseudonyms.
//!
//! `installation.json` (mode 0600, written once, atomically) in the state
//! dir, format version 1:
//!
//! ```json
//! {"version":1,"installation_id":"<uuid v4>","pseudonym_key":"<64 hex digits>"}
//! ```
//!
//! Neither value is derived from hardware or any host identifier: both come
//! from the operating system's random number generator the first time the
//! agent runs with this state dir. Deleting the file gives the host a new,
//! unlinkable telemetry identity.
//!
//! Below level 3 (Full), the host name of every event that leaves the host is
//! replaced by `h-` and the first 16 hex digits of HMAC-SHA256(key,
//! `"host\0" || name`): stable for one installation (support can tell two
//! events of the same host apart from two hosts), meaningless without the
//! key, and different between installations.

use crate::error::AgentError;
use custos_model::Secret;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::path::Path;

/// The file name in the state dir.
pub const INSTALLATION_FILE: &str = "installation.json";
/// The format version of [`INSTALLATION_FILE`].
pub const INSTALLATION_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: u32,
    installation_id: uuid::Uuid,
    pseudonym_key: String,
}

/// The host's telemetry identity.
#[derive(Clone, Debug)]
pub struct Installation {
    /// The random installation id.
    pub id: uuid::Uuid,
    key: Secret<[u8; 32]>,
}

impl Installation {
    /// Load the installation of `state_dir`, creating it on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<Installation, AgentError> {
        let path = state_dir.join(INSTALLATION_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&bytes).map_err(|reason| {
                AgentError::Invalid(format!(
                    "{} is corrupt ({reason}); delete it to give this host a new telemetry identity",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(state_dir)
                    .map_err(|e| AgentError::io(format!("cannot create {}", state_dir.display()), e))?;
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let inst = Installation { id: uuid::Uuid::new_v4(), key: Secret::new(key) };
                let raw = Raw { version: INSTALLATION_VERSION, installation_id: inst.id, pseudonym_key: hex::encode(key) };
                let text = serde_json::to_vec(&raw).map_err(|e| AgentError::Invalid(format!("encoding {INSTALLATION_FILE}: {e}")))?;
                crate::identity::write_file(&path, &text, 0o600)?;
                tracing::info!(installation = %inst.id, "created a new installation id");
                Ok(inst)
            }
            Err(e) => Err(AgentError::io(format!("cannot read {}", path.display()), e)),
        }
    }

    fn parse(bytes: &[u8]) -> Result<Installation, String> {
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if raw.version != INSTALLATION_VERSION {
            return Err(format!("unsupported version {} (this agent reads {INSTALLATION_VERSION})", raw.version));
        }
        let key = hex::decode(&raw.pseudonym_key).map_err(|e| format!("pseudonym_key: {e}"))?;
        let key: [u8; 32] = key.try_into().map_err(|_| "pseudonym_key must be 32 bytes (64 hex digits)".to_string())?;
        Ok(Installation { id: raw.installation_id, key: Secret::new(key) })
    }

    /// An installation with the given id and key (tests, benchmarks).
    pub fn from_parts(id: uuid::Uuid, key: [u8; 32]) -> Installation {
        Installation { id, key: Secret::new(key) }
    }

    /// The keyed pseudonym of a host name: `h-` and 16 hex digits.
    pub fn host_pseudonym(&self, name: &str) -> String {
        // Invariant: HMAC accepts keys of any length.
        #[allow(clippy::expect_used)]
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose()).expect("hmac takes any key length");
        mac.update(b"host\0");
        mac.update(name.as_bytes());
        let out = mac.finalize().into_bytes();
        format!("h-{}", hex::encode(&out[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installation_is_created_once_and_reloaded_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let a = Installation::load_or_create(dir.path()).unwrap();
        let b = Installation::load_or_create(dir.path()).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.host_pseudonym("web-1"), b.host_pseudonym("web-1"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(INSTALLATION_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn pseudonyms_are_stable_per_installation_and_differ_between_installations() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let a = Installation::load_or_create(d1.path()).unwrap();
        let b = Installation::load_or_create(d2.path()).unwrap();
        assert_ne!(a.id, b.id);
        let p = a.host_pseudonym("web-1");
        assert!(p.starts_with("h-") && p.len() == 18, "{p}");
        assert!(!p.contains("web"));
        assert_ne!(p, a.host_pseudonym("web-2"));
        assert_ne!(p, b.host_pseudonym("web-1"));
    }

    #[test]
    fn a_corrupt_installation_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INSTALLATION_FILE), b"{not json").unwrap();
        let e = Installation::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains(INSTALLATION_FILE) && e.contains("corrupt"), "{e}");
    }

    #[test]
    fn the_key_never_prints() {
        let i = Installation::from_parts(uuid::Uuid::nil(), [7u8; 32]);
        let dbg = format!("{i:?}");
        assert!(!dbg.contains("0707") && !dbg.contains("7, 7"), "{dbg}");
    }
}
