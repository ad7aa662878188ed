//! Signed checkpoints: the Merkle root of the first `size` records, signed
//! with the log's Ed25519 key.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::format::{hexser, to_hex, FORMAT_VERSION};
use crate::merkle::Hash;

/// A signed statement "the log's first `size` records have Merkle root
/// `root`, and record `size - 1` has hash `chain_head`".
///
/// Serialised (in `checkpoints.log` and over an API) as compact JSON with
/// lowercase hex; see [`format`](mod@crate::format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version of the checkpoint (1).
    #[serde(rename = "v")]
    pub version: u64,
    /// Number of records covered (tree size).
    pub size: u64,
    /// RFC 6962 Merkle tree hash of records `[0, size)`.
    #[serde(serialize_with = "hexser::ser", deserialize_with = "hexser::de")]
    pub root: Hash,
    /// Hash of record `size - 1` (all zeros when `size` is 0).
    #[serde(serialize_with = "hexser::ser", deserialize_with = "hexser::de")]
    pub chain_head: Hash,
    /// When it was made: microseconds since the Unix epoch (writer's clock).
    pub time: i64,
    /// Ed25519 signature over [`signed_message`](Self::signed_message).
    #[serde(serialize_with = "hexser::ser", deserialize_with = "hexser::de")]
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// Makes and signs a version-1 checkpoint.
    pub fn sign(
        size: u64,
        root: Hash,
        chain_head: Hash,
        time: i64,
        key: &SigningKey,
    ) -> Checkpoint {
        let mut cp = Checkpoint {
            version: FORMAT_VERSION,
            size,
            root,
            chain_head,
            time,
            signature: [0; 64],
        };
        cp.signature = key.sign(&cp.signed_message()).to_bytes();
        cp
    }

    /// The exact bytes the signature covers:
    /// `"custos-audit checkpoint v1\nsize N\nroot HEX\nchain_head HEX\ntime T\n"`.
    pub fn signed_message(&self) -> Vec<u8> {
        format!(
            "custos-audit checkpoint v{}\nsize {}\nroot {}\nchain_head {}\ntime {}\n",
            self.version,
            self.size,
            to_hex(&self.root),
            to_hex(&self.chain_head),
            self.time
        )
        .into_bytes()
    }

    /// Whether the signature is valid under `key` (strict Ed25519 verification).
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        key.verify_strict(
            &self.signed_message(),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }

    /// The line stored in `checkpoints.log`, LF included.
    pub fn to_line(&self) -> String {
        // A struct of integers and hex strings always serialises.
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses one line of `checkpoints.log` (without its LF).
    pub fn parse_line(line: &[u8]) -> Result<Checkpoint, String> {
        let cp: Checkpoint =
            serde_json::from_slice(line).map_err(|e| format!("invalid checkpoint json: {e}"))?;
        if cp.version != FORMAT_VERSION {
            return Err(format!("unsupported checkpoint version {}", cp.version));
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_verifies_and_round_trips() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let cp = Checkpoint::sign(5, [1; 32], [2; 32], 77, &key);
        assert!(cp.verify(&key.verifying_key()));
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(!cp.verify(&other.verifying_key()));
        let line = cp.to_line();
        assert!(line.ends_with('\n'));
        let back = Checkpoint::parse_line(line.trim_end().as_bytes()).unwrap();
        assert_eq!(back, cp);
        let mut bad = cp.clone();
        bad.size = 6;
        assert!(!bad.verify(&key.verifying_key()));
        // Any single-byte change of the line either fails to parse or fails to verify.
        let bytes = line.trim_end().as_bytes().to_vec();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            if let Ok(c) = Checkpoint::parse_line(&b) {
                assert!(
                    !c.verify(&key.verifying_key()),
                    "flip at {i} went unnoticed"
                );
            }
        }
    }
}
