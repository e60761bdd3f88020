//! Pseudonymisation of ID numbers with a keyed hash (HMAC-SHA-256).
//!
//! Invariant: an ID number is hashed here the moment a record is decoded and never stored,
//! logged or passed on. The key comes from a file (or a systemd credential); without the key
//! a person key cannot be linked back to an ID number.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::PersonKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "cannot read the pseudonymisation key {path}: {source} (create it with 32 random bytes, e.g. `head -c 32 /dev/urandom > {path}`)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pseudonymisation key {path} is {len} bytes; it needs at least 16")]
    TooShort { path: PathBuf, len: usize },
    #[error("cannot write a new pseudonymisation key to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Clone)]
pub struct Pseudonymizer {
    /// HMAC-SHA-256 with the key already mixed in: each person key clones it instead of
    /// hashing the key's two padded blocks again (half the hashing of a record).
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer { key: <redacted> }")
    }
}

impl Pseudonymizer {
    pub fn from_key(key: &[u8]) -> Self {
        // Invariant: HMAC accepts keys of any length.
        let keyed = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        Self { keyed }
    }

    /// Reads the key from `path`. Surrounding whitespace is part of nothing: it is trimmed.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let raw = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let key = raw.trim_ascii();
        if key.len() < 16 {
            return Err(KeyError::TooShort {
                path: path.to_path_buf(),
                len: key.len(),
            });
        }
        Ok(Self::from_key(key))
    }

    /// Reads the key, or creates a random one first (used by `demo` for its own data dir).
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        if !path.exists() {
            use rand::RngCore;
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write_atomically(path, hex.as_bytes()).map_err(|source| KeyError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Self::load(path)
    }

    /// The person key of an ID number. The number is normalised first (trimmed, `x` upper-cased)
    /// so that the same person gets the same key from every department.
    pub fn person_key(&self, id_number: &str) -> PersonKey {
        // A quarantined record carries the key itself (`pk:…`), never the number.
        if let Some(k) = PersonKey::from_token(id_number) {
            return k;
        }
        let normalized = id_number.trim().to_ascii_uppercase();
        let digest = self.mac(b"person\0", normalized.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        PersonKey(out)
    }

    fn mac(&self, domain: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(domain);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

/// Writes `bytes` to `path` so that a crash leaves either no file or the whole key: a
/// temporary file next to it (readable by its owner only), synced, then linked into place,
/// and the directory synced. A key cut short would otherwise give every person a new key,
/// and no record would join its household. Linking never replaces: if another process
/// created the key meanwhile, its key stays.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    let linked = std::fs::hard_link(&tmp, path);
    std::fs::remove_file(&tmp)?;
    match linked {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_number_same_key_other_key_other_hash() {
        let a = Pseudonymizer::from_key(b"0123456789abcdef0123");
        let b = Pseudonymizer::from_key(b"another key of enough length");
        let k1 = a.person_key("63252219800101123x");
        assert_eq!(k1, a.person_key(" 63252219800101123X "));
        assert_ne!(k1, b.person_key("63252219800101123X"));
        assert_ne!(k1, a.person_key("632522198001011230"));
        assert!(!k1.to_string().contains("632522"));
        assert_eq!(a.person_key(&k1.token()), k1, "a token maps to itself");
    }

    /// Person keys are stored: a change of the hashing would orphan every record's person.
    /// Pinned against Python's `hmac` (SHA-256 over `person\0` and the normalised number),
    /// with a key shorter than SHA-256's block and one longer, which HMAC hashes first;
    /// each twice, so that one key's state is not worn by the first use.
    #[test]
    fn person_keys_are_hmac_sha_256_of_the_domain_and_number() {
        for (key, hex) in [
            (
                b"0123456789abcdef0123".to_vec(),
                "8d020da0f5712b9dfaf803319fea7be9",
            ),
            (
                [b"0123456789abcdef".repeat(4), b"012345".to_vec()].concat(),
                "e63aa9adf8989bf2518665604ab6bb5f",
            ),
        ] {
            let p = Pseudonymizer::from_key(&key);
            for _ in 0..2 {
                assert_eq!(
                    p.person_key("63252219800101123x").token(),
                    format!("pk:{hex}")
                );
            }
        }
    }

    #[test]
    fn short_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "short").unwrap();
        let err = Pseudonymizer::load(&p).unwrap_err().to_string();
        assert!(err.contains("at least 16"), "{err}");
        let created = dir.path().join("new");
        Pseudonymizer::load_or_create(&created).unwrap();
        assert_eq!(std::fs::read(&created).unwrap().len(), 64);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "the key and the short one, no temporary file left"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&created).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
        }
        // A key that exists is never replaced.
        let before = std::fs::read(&created).unwrap();
        write_atomically(&created, b"another key of enough length").unwrap();
        assert_eq!(std::fs::read(&created).unwrap(), before);
    }
}
