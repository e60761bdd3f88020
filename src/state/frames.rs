//! Frames: the layout of the files that hold many households (the state snapshot, the
//! months' base). Each frame is `[u32 length][u32 CRC-32][bytes]`, little-endian, the bytes
//! postcard's ([`write_frame`]) or a layout of the caller's own ([`write_raw_frame`], such as
//! households' packed months, [`encode_months`]), so that a file is written and read a few
//! thousand households at a time, and damage is found where it is.

use std::io::{BufReader, Read, Seek, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Months;
use crate::model::HouseholdId;

/// No frame is larger; a length above it means a damaged file, not an allocation to try.
pub const MAX_FRAME: u32 = 256 * 1024 * 1024;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Io(std::io::Error),
    #[error("it ends in the middle (cut short)")]
    CutShort,
    #[error("a frame longer than the limit")]
    TooLong,
    #[error("a frame whose checksum does not match")]
    Checksum,
    #[error("postcard: {0}")]
    Decode(postcard::Error),
}

/// Writes `value` as one frame; `buf` is reused between frames.
pub fn write_frame<T: Serialize + ?Sized>(
    out: &mut (impl Write + ?Sized),
    buf: &mut Vec<u8>,
    value: &T,
) -> std::io::Result<()> {
    buf.clear();
    // Invariant: postcard serialization into a Vec fails only for types serde cannot
    // describe; the state's types are all plain (the store encodes them the same way).
    *buf = postcard::to_extend(value, std::mem::take(buf))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    write_raw_frame(out, buf)
}

/// `value`'s postcard bytes, to be written as one frame later ([`write_raw_frame`]) and
/// read by [`read_frame`].
pub fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Invariant: as in `write_frame`, the state's types all serialize.
    postcard::to_allocvec(value).expect("the state's values serialize")
}

/// Writes `bytes` as one frame: a layout of the caller's own instead of postcard.
pub fn write_raw_frame(out: &mut (impl Write + ?Sized), buf: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(buf.len())
        .ok()
        .filter(|&n| n <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::other("a frame above its size limit"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&crc32fast::hash(buf).to_le_bytes())?;
    out.write_all(buf)
}

/// Reads exactly `out.len()` bytes; an early end is [`FrameError::CutShort`].
pub fn read_exact(input: &mut impl Read, out: &mut [u8]) -> Result<(), FrameError> {
    input.read_exact(out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::CutShort
        } else {
            FrameError::Io(e)
        }
    })
}

/// Reads one frame and decodes it; `buf` is reused between frames.
pub fn read_frame<T: DeserializeOwned>(
    input: &mut impl Read,
    buf: &mut Vec<u8>,
) -> Result<T, FrameError> {
    read_raw_frame(input, buf)?;
    postcard::from_bytes(buf).map_err(FrameError::Decode)
}

/// Skips one frame without reading its bytes (checked by the reader that reads them): a
/// reader that wants only every other frame.
pub fn skip_frame<R: Read + Seek>(input: &mut BufReader<R>) -> Result<(), FrameError> {
    let mut head = [0u8; 8];
    read_exact(input, &mut head)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if len > MAX_FRAME {
        return Err(FrameError::TooLong);
    }
    input.seek_relative(i64::from(len)).map_err(FrameError::Io)
}

/// Reads one frame's bytes into `buf`, checked against its length and checksum.
pub fn read_raw_frame(input: &mut impl Read, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    let mut head = [0u8; 8];
    read_exact(input, &mut head)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_FRAME {
        return Err(FrameError::TooLong);
    }
    buf.resize(len as usize, 0);
    read_exact(input, buf)?;
    if crc32fast::hash(buf) != crc {
        return Err(FrameError::Checksum);
    }
    Ok(())
}

/// Encodes households' months as the bytes of one frame: for each, the id's length (u32) and
/// bytes, the number of packed words (u32) and the words (u64), all little-endian. The words
/// are [`Months`]'s own, so encoding is a copy. The months' base and the state snapshot
/// (both format 3, format 2 before narrow months) hold their months so; a change to the
/// packing of [`Months`] changes both formats.
pub fn encode_months<'a>(
    households: impl IntoIterator<Item = (&'a HouseholdId, &'a Months)>,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    buf.clear();
    for (id, months) in households {
        let id = id.as_str().as_bytes();
        let words = months.words();
        let (Ok(id_len), Ok(n)) = (u32::try_from(id.len()), u32::try_from(words.len())) else {
            return Err(std::io::Error::other(
                "a household's months beyond what a frame holds",
            ));
        };
        buf.extend_from_slice(&id_len.to_le_bytes());
        buf.extend_from_slice(id);
        buf.extend_from_slice(&n.to_le_bytes());
        buf.reserve(words.len() * 8);
        for w in words {
            buf.extend_from_slice(&w.to_le_bytes());
        }
    }
    Ok(())
}

/// Decodes what [`encode_months`] wrote, checking every length and the months' words
/// ([`Months::from_le_bytes`]).
pub fn decode_months(mut bytes: &[u8]) -> Result<Vec<(HouseholdId, Months)>, &'static str> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
        if bytes.len() < n {
            return Err("a household cut short in its frame");
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn take_u32(bytes: &mut &[u8]) -> Result<usize, &'static str> {
        let b = take(bytes, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = take_u32(&mut bytes)?;
        let id = std::str::from_utf8(take(&mut bytes, len)?)
            .ok()
            .and_then(|s| s.parse::<HouseholdId>().ok())
            .ok_or("a household id that is not one")?;
        let n = take_u32(&mut bytes)?;
        let raw = take(
            &mut bytes,
            n.checked_mul(8)
                .ok_or("a household's words beyond memory")?,
        )?;
        out.push((id, Months::from_le_bytes(raw)?));
    }
    Ok(out)
}

/// Whether `input` is at its end.
pub fn at_end(input: &mut impl Read) -> Result<bool, FrameError> {
    let mut rest = [0u8; 1];
    Ok(input.read(&mut rest).map_err(FrameError::Io)? == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_and_damage_is_named() {
        let mut file = Vec::new();
        let mut buf = Vec::new();
        write_frame(&mut file, &mut buf, &(7u32, "seven")).unwrap();
        write_frame(&mut file, &mut buf, &vec![1u64, 2, 3]).unwrap();
        let mut input = &file[..];
        let first: (u32, String) = read_frame(&mut input, &mut buf).unwrap();
        assert_eq!(first, (7, "seven".to_string()));
        let second: Vec<u64> = read_frame(&mut input, &mut buf).unwrap();
        assert_eq!(second, [1, 2, 3]);
        assert!(at_end(&mut input).unwrap());

        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut input = &flipped[..];
        let _: (u32, String) = read_frame(&mut input, &mut buf).unwrap();
        let r: Result<Vec<u64>, _> = read_frame(&mut input, &mut buf);
        assert!(matches!(r, Err(FrameError::Checksum)), "{r:?}");

        let mut input = &file[..file.len() - 1];
        let _: (u32, String) = read_frame(&mut input, &mut buf).unwrap();
        let r: Result<Vec<u64>, _> = read_frame(&mut input, &mut buf);
        assert!(matches!(r, Err(FrameError::CutShort)), "{r:?}");

        let mut long = file.clone();
        long[..4].copy_from_slice(&(MAX_FRAME + 1).to_le_bytes());
        let r: Result<(u32, String), _> = read_frame(&mut &long[..], &mut buf);
        assert!(matches!(r, Err(FrameError::TooLong)), "{r:?}");
    }

    #[test]
    fn a_frame_of_households_months_reads_back_and_damage_is_refused() {
        use super::super::MonthBucket;
        use crate::model::Month;
        let months = |wage: i64| {
            let mut b = MonthBucket::new(Month::new(2026, 3).unwrap());
            b.values[crate::model::Indicator::WageIncome.index()] = wage;
            b.present |= 1 << crate::model::Indicator::WageIncome.index();
            b.records.push(wage as u64);
            Months::from_buckets([&b])
        };
        let chunk: Vec<(HouseholdId, Months)> = vec![
            ("H1".parse().unwrap(), months(100)),
            ("H2".parse().unwrap(), Months::default()),
            ("H3".parse().unwrap(), months(300)),
        ];
        let mut buf = Vec::new();
        encode_months(chunk.iter().map(|(id, m)| (id, m)), &mut buf).unwrap();
        assert_eq!(decode_months(&buf).unwrap(), chunk);
        assert!(decode_months(&buf[..buf.len() - 3]).is_err(), "cut short");
        // H1's id as "H/" (not an id), and its word count one too many.
        let mut bad_id = buf.clone();
        bad_id[5] = b'/';
        assert!(decode_months(&bad_id).is_err());
        let mut bad_count = buf.clone();
        bad_count[6] += 1;
        assert!(decode_months(&bad_count).is_err());
    }
}
