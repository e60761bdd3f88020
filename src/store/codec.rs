//! Versioned value encoding: one format byte, then the value in postcard (compact, varint).
//!
//! Each value type owns its version number; decoding refuses any other version, so a future
//! format change must add a migration here instead of misreading old bytes.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Space, StoreError};

/// Room for most values (a month's bucket is tens of bytes) without growing the vector
/// byte by byte; larger ones grow from there. The store copies the bytes, so the spare
/// capacity is not kept.
const FIRST_CAPACITY: usize = 128;

pub fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIRST_CAPACITY);
    out.push(version);
    extend_item(value, out)
}

/// Appends `item` as postcard encodes it, without a version: one element of a sequence, or
/// one field of a tuple, that a caller writes in parts.
pub fn extend_item<T: Serialize + ?Sized>(item: &T, out: Vec<u8>) -> Vec<u8> {
    // Invariant: postcard serialization into a Vec only fails for types serde cannot
    // describe (maps with non-string keys are fine); guardline's value types are all plain.
    postcard::to_extend(item, out).expect("guardline values serialize")
}

/// Appends `v` as postcard writes an unsigned integer or a sequence's length: a varint,
/// seven bits to a byte, low bits first.
pub fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` as postcard writes a signed integer: zigzag, then a varint.
pub fn push_zigzag(out: &mut Vec<u8>, v: i64) {
    push_varint(out, ((v << 1) ^ (v >> 63)) as u64);
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
