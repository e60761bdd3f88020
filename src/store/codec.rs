//! Versioned value encoding: one format byte, then the value in postcard (compact, varint).
//!
//! Each value type owns its version number; decoding refuses any other version, so a future
//! format change must add a migration here instead of misreading old bytes.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Space, StoreError};

pub fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    // Invariant: postcard serialization into a Vec only fails for types serde cannot
    // describe (maps with non-string keys are fine); guardline's value types are all plain.
    let body = postcard::to_allocvec(value).expect("guardline values serialize");
    out.extend_from_slice(&body);
    out
}

pub fn decode<T: DeserializeOwned>(
    version: u8,
    space: Space,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    let err = |detail: String| StoreError::Decode {
        space,
        key: String::from_utf8_lossy(key).into_owned(),
        detail,
    };
    match bytes.split_first() {
        Some((&v, body)) if v == version => {
            postcard::from_bytes(body).map_err(|e| err(format!("postcard: {e}")))
        }
        Some((&v, _)) => Err(err(format!("value version {v}, expected {version}"))),
        None => Err(err("empty value".into())),
    }
}
