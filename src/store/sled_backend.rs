//! The sled backend: one tree, keys prefixed by their space, so that one sled batch is
//! atomic across households, villages, alerts, the outbox and cursors.

use std::path::{Path, PathBuf};

use super::{Batch, Entries, SCHEMA_VERSION, Space, Store, StoreError};

const SCHEMA_KEY: &[u8] = b"schema_version";

pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
}

fn key_of(space: Space, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(space.prefix());
    k.extend_from_slice(key);
    k
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("store");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let store = Self { db, path };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let key = key_of(Space::Meta, SCHEMA_KEY);
        match self.db.get(&key)? {
            None => {
                if self.db.iter().next().is_some() {
                    return Err(StoreError::UnknownSchema {
                        path: self.path.clone(),
                        detail: "data without a schema version".into(),
                    });
                }
                self.db.insert(key, &SCHEMA_VERSION.to_be_bytes())?;
                self.db.flush()?;
                Ok(())
            }
            Some(v) => {
                let bytes: [u8; 4] =
                    v.as_ref()
                        .try_into()
                        .map_err(|_| StoreError::UnknownSchema {
                            path: self.path.clone(),
                            detail: format!("{} bytes instead of 4", v.len()),
                        })?;
                let found = u32::from_be_bytes(bytes);
                if found == SCHEMA_VERSION {
                    Ok(())
                } else if found > SCHEMA_VERSION {
                    Err(StoreError::NewerSchema {
                        path: self.path.clone(),
                        found,
                        expected: SCHEMA_VERSION,
                    })
                } else {
                    Err(StoreError::UnknownSchema {
                        path: self.path.clone(),
                        detail: format!("version {found} is not one this guardline can migrate"),
                    })
                }
            }
        }
    }

    /// Overwrites the schema version (tests use it to simulate a store of another version).
    pub fn write_schema_version_for_tests(&self, version: u32) -> Result<(), StoreError> {
        self.db
            .insert(key_of(Space::Meta, SCHEMA_KEY), &version.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }
}

impl Store for SledStore {
    fn scan(&self, space: Space) -> Result<Entries, StoreError> {
        self.db
            .scan_prefix([space.prefix()])
            .map(|r| {
                r.map(|(k, v)| (k[1..].to_vec(), v.to_vec()))
                    .map_err(StoreError::from)
            })
            .collect()
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key_of(space, key))?.map(|v| v.to_vec()))
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut b = sled::Batch::default();
        for (space, key, value) in batch.ops {
            let k = key_of(space, &key);
            match value {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.db.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_applied_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::default();
            b.put(Space::Household, b"h1".to_vec(), b"one".to_vec());
            b.put(Space::Cursor, b"h1".to_vec(), b"cursor".to_vec());
            s.commit(b).unwrap();
            let mut b = Batch::default();
            b.delete(Space::Cursor, b"h1".to_vec());
            s.commit(b).unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            s.scan(Space::Household).unwrap(),
            vec![(b"h1".to_vec(), b"one".to_vec())]
        );
        assert_eq!(s.get(Space::Cursor, b"h1").unwrap(), None);
        let a = s.next_id().unwrap();
        assert!(s.next_id().unwrap() > a);
    }

    #[test]
    fn newer_schema_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        SledStore::open(dir.path())
            .unwrap()
            .write_schema_version_for_tests(SCHEMA_VERSION + 1)
            .unwrap();
        let err = SledStore::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("written by a newer guardline"), "{err}");
    }

    #[test]
    fn unknown_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        SledStore::open(dir.path())
            .unwrap()
            .write_schema_version_for_tests(0)
            .unwrap();
        let err = SledStore::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("can migrate") && err.contains("damaged"),
            "{err}"
        );
    }
}
