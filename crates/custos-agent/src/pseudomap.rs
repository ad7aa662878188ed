//! The host's pseudonym key and pseudonym map.
//!
//! Pseudonyms ([`custos_redact::pseudonym`]) are HMACs under a
//! per-installation key, so support can correlate without seeing values.
//! The map from pseudonym back to value stays on the host, encrypted:
//! `custos redact lookup TOKEN` shows the operator what support is talking
//! about. Neither file ever leaves the host.
//!
//! # Files (in `<state_dir>/redact/`, mode 0700)
//!
//! - `pseudonym.key`: 32 random bytes, mode 0600, made on first use and
//!   never replaced (a new key would change every pseudonym).
//! - `pseudonyms.map`: the map, append-only, sealed with the state
//!   directory's key ([`crate::seal`], `queue.key`).
//!
//! # Map format, version 1
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | magic `CPSM` |
//! | 4 | 1 | version, `1` |
//! | 5 | 3 | zero |
//! | 8 | … | records |
//!
//! A record is a little-endian `u32` length `n`, then `n` bytes of sealed
//! box (associated data `custos pseudonym map v1`) whose plaintext is a JSON
//! array of `[token, value]` pairs. Records are appended and `fdatasync`ed
//! before the events that use their pseudonyms enter the queue, so every
//! pseudonym that can reach the server can be looked up.
//!
//! Recovery: a record whose length runs past the end of the file is a torn
//! tail from a crash; opening for writing cuts it off. A record that fails
//! authentication inside the file is skipped and counted (its entries are
//! lost, the rest is read).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use custos_redact::PseudonymKey;
use ring::rand::{SecureRandom, SystemRandom};

use crate::seal::{SealError, SealKey};

/// The directory inside the state dir.
pub const DIR: &str = "redact";
/// The key file.
pub const KEY_FILE: &str = "pseudonym.key";
/// The map file.
pub const MAP_FILE: &str = "pseudonyms.map";
/// Map format version.
pub const MAP_VERSION: u8 = 1;
const MAGIC: &[u8; 4] = b"CPSM";
const AAD: &[u8] = b"custos pseudonym map v1";
/// Largest record accepted when reading (a bigger length is damage).
const MAX_RECORD: u32 = 64 << 20;

/// What went wrong with the key or the map.
#[derive(Debug, thiserror::Error)]
pub enum PseudonymMapError {
    /// A file could not be read or written.
    #[error("pseudonym map {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key file exists but is not a key.
    #[error("pseudonym key {} holds {len} bytes, expected 32; it is not replaced (every pseudonym would change)", .path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// Its size.
        len: usize,
    },
    /// The map file does not start with the map header.
    #[error("{} is not a pseudonym map (bad header or unknown version)", .path.display())]
    Header {
        /// The map file.
        path: PathBuf,
    },
    /// The state directory's seal key failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// No randomness for a new key.
    #[error("no randomness for the pseudonym key")]
    Random,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PseudonymMapError + '_ {
    move |source| PseudonymMapError::Io { path: path.to_path_buf(), source }
}

fn dir(state_dir: &Path) -> Result<PathBuf, PseudonymMapError> {
    use std::os::unix::fs::DirBuilderExt;
    let d = state_dir.join(DIR);
    if !d.is_dir() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(io(&d))?;
    }
    Ok(d)
}

/// Loads the installation's pseudonym key, making it (0600) on first use.
pub fn load_or_create_key(state_dir: &Path) -> Result<PseudonymKey, PseudonymMapError> {
    let path = dir(state_dir)?.join(KEY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut k = [0u8; 32];
            SystemRandom::new().fill(&mut k).map_err(|_| PseudonymMapError::Random)?;
            crate::fsutil::write_atomic(&path, &k, 0o600).map_err(io(&path))?;
            k.to_vec()
        }
        Err(e) => return Err(io(&path)(e)),
    };
    let arr: [u8; 32] =
        bytes.as_slice().try_into().map_err(|_| PseudonymMapError::BadKey { path: path.clone(), len: bytes.len() })?;
    Ok(PseudonymKey::new(arr))
}

/// What a scan of the map found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every `(token, value)` entry, in file order.
    pub entries: Vec<(String, String)>,
    /// Records skipped because they failed authentication.
    pub corrupt: u64,
    /// Where the valid records end (a torn tail starts here).
    pub valid_len: u64,
    /// The file's length.
    pub file_len: u64,
}

fn scan_file(path: &Path, seal: &SealKey) -> Result<Scan, PseudonymMapError> {
    let mut buf = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut buf).map_err(io(path))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Scan::default()),
        Err(e) => return Err(io(path)(e)),
    }
    let mut scan = Scan { file_len: buf.len() as u64, ..Scan::default() };
    if buf.is_empty() {
        return Ok(scan);
    }
    if buf.len() < 8 || &buf[..4] != MAGIC || buf[4] != MAP_VERSION {
        return Err(PseudonymMapError::Header { path: path.to_path_buf() });
    }
    let mut at = 8usize;
    scan.valid_len = 8;
    while at + 4 <= buf.len() {
        let n = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let end = at + 4 + n as usize;
        if n > MAX_RECORD || end > buf.len() {
            break;
        }
        match seal.open(AAD, &buf[at + 4..end]).ok().and_then(|p| serde_json::from_slice::<Vec<(String, String)>>(&p).ok()) {
            Some(entries) => scan.entries.extend(entries),
            None => scan.corrupt += 1,
        }
        at = end;
        scan.valid_len = at as u64;
    }
    Ok(scan)
}

/// Every value recorded for `token` (several if pseudonyms collided),
/// read-only.
pub fn lookup(state_dir: &Path, token: &str) -> Result<Vec<String>, PseudonymMapError> {
    let path = state_dir.join(DIR).join(MAP_FILE);
    if !path.exists() {
        // Nothing recorded here; a lookup must not create keys in a
        // directory that is not (yet) a state directory.
        return Ok(Vec::new());
    }
    let seal = SealKey::load_or_create(state_dir)?;
    let scan = scan_file(&path, &seal)?;
    let mut out: Vec<String> = Vec::new();
    for (t, v) in scan.entries {
        if t == token && !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

/// The map, open for appending.
#[derive(Debug)]
pub struct PseudonymMap {
    path: PathBuf,
    file: File,
    seal: SealKey,
    known: HashSet<(String, String)>,
    corrupt: u64,
}

impl PseudonymMap {
    /// Opens (or creates) the map, cutting off a torn tail.
    pub fn open(state_dir: &Path) -> Result<Self, PseudonymMapError> {
        let seal = SealKey::load_or_create(state_dir)?;
        let path = dir(state_dir)?.join(MAP_FILE);
        let scan = scan_file(&path, &seal)?;
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path).map_err(io(&path))?
        };
        if scan.file_len == 0 {
            let mut header = [0u8; 8];
            header[..4].copy_from_slice(MAGIC);
            header[4] = MAP_VERSION;
            file.write_all(&header).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        } else if scan.valid_len < scan.file_len {
            tracing::warn!(path = %path.display(), cut = scan.file_len - scan.valid_len, "pseudonym map: torn tail cut off");
            file.set_len(scan.valid_len).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        if scan.corrupt > 0 {
            tracing::warn!(path = %path.display(), records = scan.corrupt, "pseudonym map: records failed authentication and were skipped");
        }
        file.seek(SeekFrom::End(0)).map_err(io(&path))?;
        Ok(PseudonymMap { path, file, seal, known: scan.entries.into_iter().collect(), corrupt: scan.corrupt })
    }

    /// Records the entries not recorded yet, durably. Returns how many
    /// were new.
    pub fn record(&mut self, entries: &[(String, String)]) -> Result<usize, PseudonymMapError> {
        let fresh: Vec<&(String, String)> = {
            let mut seen = HashSet::new();
            entries.iter().filter(|e| !self.known.contains(*e) && seen.insert(*e)).collect()
        };
        if fresh.is_empty() {
            return Ok(0);
        }
        // Invariant: a Vec of string pairs always serializes.
        let plain = serde_json::to_vec(&fresh).expect("string pairs serialize");
        let sealed = self.seal.seal(AAD, &plain)?;
        let mut rec = Vec::with_capacity(4 + sealed.len());
        rec.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        rec.extend_from_slice(&sealed);
        let path = self.path.clone();
        self.file.write_all(&rec).map_err(io(&path))?;
        self.file.sync_data().map_err(io(&path))?;
        let n = fresh.len();
        for e in fresh {
            self.known.insert(e.clone());
        }
        Ok(n)
    }

    /// Entries known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Records skipped at open because they failed authentication.
    pub fn corrupt_records(&self) -> u64 {
        self.corrupt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(t: &str, v: &str) -> (String, String) {
        (t.to_string(), v.to_string())
    }

    #[test]
    fn entries_survive_reopen_and_are_encrypted() {
        let d = tempfile::tempdir().unwrap();
        let mut m = PseudonymMap::open(d.path()).unwrap();
        assert_eq!(m.record(&[e("u0123456789", "alice"), e("u0123456789", "alice")]).unwrap(), 1);
        assert_eq!(m.record(&[e("u0123456789", "alice"), e("h01234567", "db01")]).unwrap(), 1);
        drop(m);
        let m = PseudonymMap::open(d.path()).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(lookup(d.path(), "h01234567").unwrap(), ["db01"]);
        assert!(lookup(d.path(), "nope").unwrap().is_empty());
        let raw = std::fs::read(d.path().join(DIR).join(MAP_FILE)).unwrap();
        assert!(!raw.windows(5).any(|w| w == b"alice"), "the map is sealed");
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue() {
        let d = tempfile::tempdir().unwrap();
        let mut m = PseudonymMap::open(d.path()).unwrap();
        m.record(&[e("a", "1")]).unwrap();
        m.record(&[e("b", "2")]).unwrap();
        drop(m);
        let p = d.path().join(DIR).join(MAP_FILE);
        let len = std::fs::metadata(&p).unwrap().len();
        OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 5).unwrap();
        let mut m = PseudonymMap::open(d.path()).unwrap();
        assert_eq!(m.len(), 1, "the torn record is gone");
        m.record(&[e("b", "2"), e("c", "3")]).unwrap();
        drop(m);
        assert_eq!(lookup(d.path(), "b").unwrap(), ["2"]);
        assert_eq!(lookup(d.path(), "c").unwrap(), ["3"]);
    }

    #[test]
    fn a_damaged_record_is_skipped_and_the_rest_read() {
        let d = tempfile::tempdir().unwrap();
        let mut m = PseudonymMap::open(d.path()).unwrap();
        m.record(&[e("a", "1")]).unwrap();
        m.record(&[e("b", "2")]).unwrap();
        drop(m);
        let p = d.path().join(DIR).join(MAP_FILE);
        let mut raw = std::fs::read(&p).unwrap();
        raw[8 + 4 + 20] ^= 0xff;
        std::fs::write(&p, &raw).unwrap();
        let m = PseudonymMap::open(d.path()).unwrap();
        assert_eq!(m.corrupt_records(), 1);
        assert_eq!(lookup(d.path(), "b").unwrap(), ["2"]);
    }

    #[test]
    fn a_foreign_file_is_refused_and_kept() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(DIR)).unwrap();
        std::fs::write(d.path().join(DIR).join(MAP_FILE), b"hello world").unwrap();
        let err = PseudonymMap::open(d.path()).unwrap_err();
        assert!(err.to_string().contains("not a pseudonym map"), "{err}");
    }

    #[test]
    fn the_key_is_made_once_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create_key(d.path()).unwrap();
        let b = load_or_create_key(d.path()).unwrap();
        let pa = custos_redact::Pseudonymizer::new(&a).pseudonym(custos_redact::Entity::UserName, "USER_NAME", "x");
        let pb = custos_redact::Pseudonymizer::new(&b).pseudonym(custos_redact::Entity::UserName, "USER_NAME", "x");
        assert_eq!(pa, pb);
        let mode = std::fs::metadata(d.path().join(DIR).join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
