//! A household's (or village's) monthly buckets, packed into one run of 64-bit words.
//!
//! A `Vec<MonthBucket>` costs about 100 bytes per month (a fixed array of every indicator,
//! two vectors and their heap blocks) and most of a province's memory. Packed, a month with
//! one wage record takes two words: a header holding the value, and the record's tag.
//!
//! Layout of one bucket, in month order: a header, its values, the record tags, then two
//! words per event kind (the kind's index and its count (`count << 32`), the amount).
//! The header has two forms, told apart by bit 63:
//! - *narrow* (bit 63 set), for a month with one indicator whose value fits 32 bits, at most
//!   255 records and an ordinal below 2¹⁷ (every month up to 9999): bits 0–16 the month's
//!   ordinal, 17–18 the indicator's index, 19–22 the number of event kinds, 23–30 the number
//!   of record tags, 31–62 the value (two's complement); no value words follow;
//! - *wide* (bit 63 clear), for every other month: bits 0–31 the ordinal, 32–35 which
//!   indicators are present, 36–39 the number of event kinds, 40–62 the number of record
//!   tags; one word per present indicator follows, in indicator order (the value in fen,
//!   two's complement).
//!
//! A month is packed narrow whenever it can be, so one bucket has one packing and equal
//! buckets equal words. Files written before the narrow form (base file and snapshot
//! format 2) hold wide months only, which read as they are and are packed again on reading.
//!
//! `MonthBucket` stays the owned form: what the store encodes, and what a change edits.

use std::sync::Arc;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::values::{EventCount, MonthBucket};
use crate::model::{EventKind, Fen, Indicator, Month};
use crate::store::codec;

const PRESENT_SHIFT: u32 = 32;
const EVENTS_SHIFT: u32 = 36;
const RECORDS_SHIFT: u32 = 40;
/// Record tags a wide header counts: 23 bits, bit 63 telling the forms apart.
const MAX_RECORDS: usize = (1 << 23) - 1;

const NARROW: u64 = 1 << 63;
const NARROW_INDICATOR_SHIFT: u32 = 17;
const NARROW_EVENTS_SHIFT: u32 = 19;
const NARROW_RECORDS_SHIFT: u32 = 23;
const NARROW_VALUE_SHIFT: u32 = 31;
const NARROW_MAX_ORDINAL: u32 = (1 << 17) - 1;
const NARROW_MAX_RECORDS: usize = 0xff;

// Four bits hold the present indicators and the number of event kinds; two the narrow
// header's indicator; every month up to December 9999 has a narrow ordinal.
const _: () = assert!(Indicator::COUNT <= 4 && EventKind::ALL.len() <= 15);
const _: () = assert!(Month::LAST <= NARROW_MAX_ORDINAL);

/// The buckets of one entity, oldest first, only months with data. Shared, not copied: a
/// change packs new words anyway, so a clone (the undo log's, a base written on another
/// thread) costs a reference count.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Months(Arc<[u64]>);

/// One month of a [`Months`], read in place.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bucket<'a>(&'a [u64]);

/// The header `w`'s month, present indicators, number of event kinds and of record tags.
fn header(w: u64) -> (Month, u8, usize, usize) {
    if w & NARROW != 0 {
        (
            Month::from_ordinal((w & u64::from(NARROW_MAX_ORDINAL)) as u32),
            1 << ((w >> NARROW_INDICATOR_SHIFT) & 0x3),
            ((w >> NARROW_EVENTS_SHIFT) & 0xf) as usize,
            ((w >> NARROW_RECORDS_SHIFT) & 0xff) as usize,
        )
    } else {
        (
            Month::from_ordinal(w as u32),
            ((w >> PRESENT_SHIFT) & 0xf) as u8,
            ((w >> EVENTS_SHIFT) & 0xf) as usize,
            ((w >> RECORDS_SHIFT) & MAX_RECORDS as u64) as usize,
        )
    }
}

/// A wide header (`records` at most [`MAX_RECORDS`]).
fn wide_header(month: Month, present: u8, events: usize, records: usize) -> u64 {
    u64::from(month.ordinal())
        | u64::from(present & 0xf) << PRESENT_SHIFT
        | (events as u64) << EVENTS_SHIFT
        | (records as u64) << RECORDS_SHIFT
}

/// Value words after the header `w`.
fn value_words(w: u64) -> usize {
    if w & NARROW != 0 {
        0
    } else {
        header(w).1.count_ones() as usize
    }
}

/// Words taken by the bucket whose header is `w`.
fn span(w: u64) -> usize {
    let (_, _, events, records) = header(w);
    1 + value_words(w) + records + 2 * events
}

/// The narrow header of the wide bucket that `words` begins with, if it has one.
fn narrow_header(words: &[u64]) -> Option<u64> {
    let w = *words.first()?;
    if w & NARROW != 0 {
        return None;
    }
    let (month, present, events, records) = header(w);
    if present.count_ones() != 1
        || month.ordinal() > NARROW_MAX_ORDINAL
        || records > NARROW_MAX_RECORDS
    {
        return None;
    }
    let value = i32::try_from(*words.get(1)? as i64).ok()?;
    Some(
        NARROW
            | u64::from(month.ordinal())
            | u64::from(present.trailing_zeros()) << NARROW_INDICATOR_SHIFT
            | (events as u64) << NARROW_EVENTS_SHIFT
            | (records as u64) << NARROW_RECORDS_SHIFT
            | u64::from(value as u32) << NARROW_VALUE_SHIFT,
    )
}

/// Packs the wide bucket that starts at `at`, the last of `words`, narrow if it can be.
fn narrow_last(words: &mut Vec<u64>, at: usize) {
    if let Some(h) = narrow_header(&words[at..]) {
        words[at] = h;
        words.remove(at + 1);
    }
}

fn kind_index(kind: EventKind) -> u64 {
    EventKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default() as u64
}

/// Appends `b` to `out`, packed as [`Months`] holds it.
pub(super) fn pack(b: &MonthBucket, out: &mut Vec<u64>) {
    // Tags beyond the header's 23 bits would not fit; 8 million records for one entity in
    // one month is not a real feed, and losing duplicate detection for them is the least harm.
    let records = &b.records[..b.records.len().min(MAX_RECORDS)];
    let at = out.len();
    out.push(wide_header(
        b.month,
        b.present,
        b.events.len(),
        records.len(),
    ));
    for ind in Indicator::ALL {
        if b.has(ind) {
            out.push(b.values[ind.index()] as u64);
        }
    }
    out.extend_from_slice(records);
    for e in &b.events {
        out.push(kind_index(e.kind) | u64::from(e.count) << 32);
        out.push(e.amount as u64);
    }
    narrow_last(out, at);
}

impl<'a> Bucket<'a> {
    fn parts(&self) -> (Month, u8, usize, usize) {
        header(self.0[0])
    }
    pub fn month(&self) -> Month {
        self.parts().0
    }
    pub fn has(&self, ind: Indicator) -> bool {
        self.parts().1 & (1 << ind.index()) != 0
    }
    pub fn get(&self, ind: Indicator) -> Option<Fen> {
        let w = self.0[0];
        let present = self.parts().1;
        if present & (1 << ind.index()) == 0 {
            return None;
        }
        if w & NARROW != 0 {
            return Some(Fen::from((w >> NARROW_VALUE_SHIFT) as u32 as i32));
        }
        let before = (present & ((1 << ind.index()) - 1)).count_ones() as usize;
        Some(self.0[1 + before] as Fen)
    }
    /// Tags of the records applied to this month.
    pub fn records(self) -> &'a [u64] {
        let (_, _, _, records) = self.parts();
        let from = 1 + value_words(self.0[0]);
        &self.0[from..from + records]
    }
    /// The month's events by kind.
    pub fn events(self) -> impl Iterator<Item = EventCount> + 'a {
        let (_, _, events, records) = self.parts();
        let from = 1 + value_words(self.0[0]) + records;
        self.0[from..from + 2 * events].chunks_exact(2).map(|w| {
            let kind = EventKind::ALL
                .get((w[0] & 0xff) as usize)
                .copied()
                .unwrap_or(EventKind::ALL[0]);
            EventCount {
                kind,
                count: (w[0] >> 32) as u32,
                amount: w[1] as Fen,
            }
        })
    }
    /// The owned form, as the store keeps it.
    pub fn to_bucket(&self) -> MonthBucket {
        let mut values = [0; Indicator::COUNT];
        let mut present = 0;
        for ind in Indicator::ALL {
            if let Some(v) = self.get(ind) {
                values[ind.index()] = v;
                present |= 1 << ind.index();
            }
        }
        MonthBucket {
            month: self.month(),
            present,
            values,
            records: self.records().to_vec(),
            events: self.events().collect(),
        }
    }
}

impl std::fmt::Debug for Bucket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_bucket().fmt(f)
    }
}

/// The buckets of a [`Months`] in month order.
pub struct Iter<'a>(&'a [u64]);

impl<'a> Iterator for Iter<'a> {
    type Item = Bucket<'a>;
    fn next(&mut self) -> Option<Bucket<'a>> {
        let first = *self.0.first()?;
        let (this, rest) = self.0.split_at(span(first).min(self.0.len()));
        self.0 = rest;
        Some(Bucket(this))
    }
}

impl Months {
    /// Packs buckets given in month order.
    pub fn from_buckets<'b>(buckets: impl IntoIterator<Item = &'b MonthBucket>) -> Self {
        let mut words = Vec::new();
        for b in buckets {
            pack(b, &mut words);
        }
        Self(Arc::from(words))
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter(&self.0)
    }

    /// The packed words, as the base of the months and the state snapshot store them.
    pub fn words(&self) -> &[u64] {
        &self.0
    }

    /// Months from packed words read back as little-endian bytes (see [`Months::words`]),
    /// checked: whole words, every bucket within them, months in increasing order. The
    /// words are copied once, straight into their shared block; wide months that can be
    /// narrow (files written before the narrow form) are then packed again, in a second
    /// copy.
    pub fn from_le_bytes(raw: &[u8]) -> Result<Self, &'static str> {
        if !raw.len().is_multiple_of(8) {
            return Err("packed months cut in the middle of a word");
        }
        let words: Arc<[u64]> = raw
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
            .collect();
        let mut at = 0;
        let mut last: Option<Month> = None;
        // Whether a wide month could be narrow: only in files of format 2. Found in the walk
        // that checks the words, not in a second one over every month a start reads.
        let mut repack = false;
        while let Some(&first) = words.get(at) {
            let month = header(first).0;
            if last.is_some_and(|l| month <= l) {
                return Err("months not in increasing order");
            }
            last = Some(month);
            repack = repack || first & NARROW == 0 && narrow_header(&words[at..]).is_some();
            at = at
                .checked_add(span(first))
                .filter(|&end| end <= words.len())
                .ok_or("a month longer than its words")?;
        }
        let months = Self(words);
        if repack {
            let mut words = Vec::with_capacity(months.0.len());
            for b in months.iter() {
                match narrow_header(b.0) {
                    Some(h) => {
                        words.push(h);
                        words.extend_from_slice(&b.0[2..]);
                    }
                    None => words.extend_from_slice(b.0),
                }
            }
            return Ok(Self(Arc::from(words)));
        }
        Ok(months)
    }

    /// The words with every month packed wide, as files of format 2 hold them.
    #[cfg(test)]
    pub(crate) fn wide_words(&self) -> Vec<u64> {
        let mut words = Vec::new();
        for b in self.iter() {
            let (month, present, events, records) = b.parts();
            words.push(wide_header(month, present, events, records));
            for ind in Indicator::ALL {
                if let Some(v) = b.get(ind) {
                    words.push(v as u64);
                }
            }
            words.extend_from_slice(b.records());
            for e in b.events() {
                words.push(kind_index(e.kind) | u64::from(e.count) << 32);
                words.push(e.amount as u64);
            }
        }
        words
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many months have data.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Reads the first and the last word (the oldest month's header, the newest month's
    /// last word): the cache lines a change to the newest months starts from. For reading
    /// households ahead (`Households::warm`); the answer means nothing.
    pub fn touch(&self) -> u64 {
        self.0.first().copied().unwrap_or(0) ^ self.0.last().copied().unwrap_or(0)
    }

    pub fn find(&self, month: Month) -> Option<Bucket<'_>> {
        self.iter()
            .take_while(|b| b.month() <= month)
            .find(|b| b.month() == month)
    }

    pub fn newest(&self) -> Option<Month> {
        self.iter().last().map(|b| b.month())
    }

    /// What changed from `old` to `self`: the buckets that are new or differ, and the months
    /// that are gone. One walk over both, as both are in month order.
    ///
    /// A batch's change to a household is mostly one month added or edited, so most buckets
    /// are the same words at the same place in both: the words the two begin with in common
    /// are found first, and the buckets within them are passed over without comparing them
    /// one by one (a call to `memcmp` each, for buckets of two or three words).
    pub fn changes_since<'a>(&'a self, old: &Months) -> (Vec<Bucket<'a>>, Vec<Month>) {
        let (mut changed, mut gone) = (Vec::new(), Vec::new());
        let same = common_prefix(&self.0, &old.0);
        let mut olds = old.iter().peekable();
        let mut end = 0;
        for b in self.iter() {
            end += b.0.len();
            if end <= same {
                // Every bucket before this one was the same words in both, so the old months'
                // next bucket starts where this one does, with the same words.
                olds.next();
                continue;
            }
            while let Some(o) = olds.next_if(|o| o.month() < b.month()) {
                gone.push(o.month());
            }
            match olds.next_if(|o| o.month() == b.month()) {
                Some(o) if same_words(o.0, b.0) => {}
                _ => changed.push(b),
            }
        }
        gone.extend(olds.map(|o| o.month()));
        (changed, gone)
    }

    /// Puts `bucket` in place of the month's bucket (`None`: removes the month), as the
    /// store holds it; no retention applies.
    pub fn set(&mut self, month: Month, bucket: Option<&MonthBucket>) {
        let mut words = Vec::with_capacity(self.0.len() + 4);
        let mut placed = bucket.is_none();
        for b in self.iter() {
            if !placed && b.month() > month {
                if let Some(new) = bucket {
                    pack(new, &mut words);
                }
                placed = true;
            }
            if b.month() != month {
                words.extend_from_slice(b.0);
            } else if let Some(new) = bucket.filter(|_| !placed) {
                pack(new, &mut words);
                placed = true;
            }
        }
        if !placed && let Some(new) = bucket {
            pack(new, &mut words);
        }
        self.0 = Arc::from(words);
    }

    /// These months with `changes` made in the order given, each putting a month's packed
    /// bucket in place (`None`: removing the month), as [`Months::set`] would one change
    /// at a time, but packed once. Each change's words are one bucket of its month, as
    /// `pack` wrote it. `changes` is left sorted; `scratch` is a buffer reused from call
    /// to call, so that besides the sort's buffer (for more than 20 changes) the only block
    /// allocated is the result's.
    pub fn with_changes(
        &self,
        changes: &mut [(Month, Option<&[u64]>)],
        scratch: &mut Vec<u64>,
    ) -> Months {
        // Stable: of the changes to one month, the last given is the one that stands.
        changes.sort_by_key(|&(m, _)| m);
        let mut standing = changes
            .chunk_by(|a, b| a.0 == b.0)
            .filter_map(|same| same.last())
            .peekable();
        scratch.clear();
        for b in self.iter() {
            while let Some(&(_, words)) = standing.next_if(|&&(m, _)| m < b.month()) {
                scratch.extend_from_slice(words.unwrap_or_default());
            }
            match standing.next_if(|&&(m, _)| m == b.month()) {
                Some(&(_, words)) => scratch.extend_from_slice(words.unwrap_or_default()),
                None => scratch.extend_from_slice(b.0),
            }
        }
        for &(_, words) in standing {
            scratch.extend_from_slice(words.unwrap_or_default());
        }
        Months(Arc::from(&scratch[..]))
    }

    /// Edits the bucket of `month` (a new empty one if there is none), then drops buckets
    /// more than `retention` months older than the newest. Returns the buckets before: the
    /// edit packs a new run of words anyway, so keeping the old one for an undo log costs
    /// no copy.
    #[must_use = "the months before the edit, for an undo log; drop them if not needed"]
    pub fn update(
        &mut self,
        month: Month,
        retention: u32,
        edit: impl FnOnce(&mut MonthBucket),
    ) -> Months {
        // One walk finds the month's place (`before`: where its bucket starts or would go,
        // `after`: where the buckets after it start) and the newest month.
        let (mut before, mut after) = (None, None);
        let mut owned = None;
        let mut newest = month;
        let mut offset = 0;
        for b in self.iter() {
            let (m, end) = (b.month(), offset + b.0.len());
            if m == month {
                owned = Some(b.to_bucket());
                (before, after) = (Some(offset), Some(end));
            } else if m > month && before.is_none() {
                (before, after) = (Some(offset), Some(offset));
            }
            newest = newest.max(m);
            offset = end;
        }
        let (before, after) = (before.unwrap_or(offset), after.unwrap_or(offset));
        let mut owned = owned.unwrap_or_else(|| MonthBucket::new(month));
        edit(&mut owned);
        let keep = |m: Month| newest.since(m) <= retention;
        // Buckets are in month order: when the oldest is kept, all are, and the runs before
        // and after the month are copied whole.
        let all_kept = self.iter().next().is_none_or(|b| keep(b.month()));
        let mut words = Vec::with_capacity(self.0.len() + 4);
        let copy = |words: &mut Vec<u64>, run: &[u64]| {
            if all_kept {
                words.extend_from_slice(run);
            } else {
                for b in Iter(run).filter(|b| keep(b.month())) {
                    words.extend_from_slice(b.0);
                }
            }
        };
        copy(&mut words, &self.0[..before]);
        if keep(month) {
            pack(&owned, &mut words);
        }
        copy(&mut words, &self.0[after..]);
        Months(std::mem::replace(&mut self.0, Arc::from(words)))
    }
}

/// How many words `a` and `b` begin with in common. Four words at a time, compared inline.
fn common_prefix(a: &[u64], b: &[u64]) -> usize {
    let whole = a
        .as_chunks::<4>()
        .0
        .iter()
        .zip(b.as_chunks::<4>().0)
        .take_while(|(x, y)| x == y)
        .count()
        * 4;
    whole
        + a[whole..]
            .iter()
            .zip(&b[whole..])
            .take_while(|(x, y)| x == y)
            .count()
}

/// `a == b`, compared inline: a bucket is a few words, which `memcmp` takes longer to call
/// than to compare.
fn same_words(a: &[u64], b: &[u64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Packs buckets that arrive one at a time, oldest first. Loading reads the store month by
/// month, so a household's buckets come spread over the whole load.
#[derive(Default)]
pub struct MonthsBuilder {
    words: Vec<u64>,
    newest: Option<Month>,
}

impl MonthsBuilder {
    /// Appends `b`, which must be newer than every bucket before it; if it is not, nothing is
    /// appended and the answer is `false`. `to_come`: how many buckets may still come,
    /// counting this one. Most entities have the same indicators and records every month, so
    /// when the room runs out, room for that many buckets of this size is reserved: the
    /// buckets are packed without the slack of a doubling vector.
    pub fn push(&mut self, b: &MonthBucket, to_come: usize) -> bool {
        if self.newest.is_some_and(|n| n >= b.month) {
            return false;
        }
        // The wide span: at most one word more than the bucket takes.
        let span = 1
            + Indicator::ALL.iter().filter(|&&i| b.has(i)).count()
            + b.records.len().min(MAX_RECORDS)
            + 2 * b.events.len();
        if self.words.capacity() - self.words.len() < span {
            self.words.reserve_exact(span * to_come.max(1));
        }
        pack(b, &mut self.words);
        self.newest = Some(b.month);
        true
    }

    pub fn finish(self) -> Months {
        Months(Arc::from(self.words))
    }
}

impl<'a> IntoIterator for &'a Months {
    type Item = Bucket<'a>;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl std::fmt::Debug for Months {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Stored as the list of owned buckets, so the encoding is that of a `Vec<MonthBucket>`,
/// written from the packed words without building one.
impl Serialize for Months {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for b in self.iter() {
            seq.serialize_element(&b)?;
        }
        seq.end()
    }
}

/// Encoded as its [`MonthBucket`] (field for field, the same bytes), without copying the
/// record tags and events into vectors.
impl Serialize for Bucket<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Events<'a>(Bucket<'a>);
        impl Serialize for Events<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // `chunks_exact` knows its length, which the encoding writes first.
                s.collect_seq(self.0.events())
            }
        }
        let (month, present, _, _) = self.parts();
        let mut values = [0; Indicator::COUNT];
        for ind in Indicator::ALL {
            if let Some(v) = self.get(ind) {
                values[ind.index()] = v;
            }
        }
        let mut st = s.serialize_struct("MonthBucket", 5)?;
        st.serialize_field("month", &month)?;
        st.serialize_field("present", &present)?;
        st.serialize_field("values", &values)?;
        st.serialize_field("records", self.records())?;
        st.serialize_field("events", &Events(*self))?;
        st.end()
    }
}

impl Bucket<'_> {
    /// Appends the bytes postcard makes of this bucket through `Serialize` (those of the
    /// `MonthBucket` it holds), written straight from the words. A batch's run encodes a
    /// bucket for every month it changed, and serde's way through postcard, a byte at a
    /// time, took most of the run's encoding. A test pins the two to the same bytes.
    pub(super) fn encode_postcard(&self, out: &mut Vec<u8>) {
        let (month, present, events, records) = self.parts();
        out.reserve(16 + 10 * (Indicator::COUNT + records + 3 * events));
        codec::push_varint(out, month.ordinal().into());
        out.push(present);
        for ind in Indicator::ALL {
            codec::push_zigzag(out, self.get(ind).unwrap_or(0));
        }
        codec::push_varint(out, records as u64);
        for &tag in self.records() {
            codec::push_varint(out, tag);
        }
        codec::push_varint(out, events as u64);
        for e in self.events() {
            // A unit variant is its index in the declaration, which `EventKind::ALL` follows.
            codec::push_varint(out, kind_index(e.kind));
            codec::push_varint(out, e.count.into());
            codec::push_zigzag(out, e.amount);
        }
    }
}

/// Read from the encoding of a `Vec<MonthBucket>` straight into the packed words, without
/// building the buckets and their vectors (a start reads millions of months).
impl<'de> Deserialize<'de> for Months {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Buckets;
        impl<'de> Visitor<'de> for Buckets {
            type Value = Months;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of month buckets")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Months, A::Error> {
                let mut words = Vec::new();
                while seq.next_element_seed(PackBucket(&mut words))?.is_some() {}
                Ok(Months(Arc::from(words)))
            }
        }
        d.deserialize_seq(Buckets)
    }
}

/// Reads one [`MonthBucket`], field for field, and appends it to the words as
/// [`Months::from_buckets`] would.
struct PackBucket<'w>(&'w mut Vec<u64>);

impl<'de> DeserializeSeed<'de> for PackBucket<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        const FIELDS: &[&str] = &["month", "present", "values", "records", "events"];
        d.deserialize_struct("MonthBucket", FIELDS, self)
    }
}

impl<'de> Visitor<'de> for PackBucket<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a month bucket")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let missing = |i: usize| serde::de::Error::invalid_length(i, &"a month bucket of 5 fields");
        let month: Month = seq.next_element()?.ok_or_else(|| missing(0))?;
        let present: u8 = seq.next_element()?.ok_or_else(|| missing(1))?;
        let values: [Fen; Indicator::COUNT] = seq.next_element()?.ok_or_else(|| missing(2))?;
        let words = self.0;
        let at = words.len();
        words.push(0);
        for ind in Indicator::ALL {
            if present & (1 << ind.index()) != 0 {
                words.push(values[ind.index()] as u64);
            }
        }
        let records = seq
            .next_element_seed(PackTags(words))?
            .ok_or_else(|| missing(3))?;
        let events = seq
            .next_element_seed(PackEvents(words))?
            .ok_or_else(|| missing(4))?;
        if events > EventKind::ALL.len() {
            return Err(serde::de::Error::custom(format!(
                "a month with {events} kinds of events, more than there are"
            )));
        }
        words[at] = wide_header(month, present, events, records);
        narrow_last(words, at);
        Ok(())
    }
}

/// Appends a bucket's record tags (at most [`MAX_RECORDS`], as `pack` keeps); the number
/// appended.
struct PackTags<'w>(&'w mut Vec<u64>);

impl<'de> DeserializeSeed<'de> for PackTags<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PackTags<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of record tags")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(tag) = seq.next_element::<u64>()? {
            if n < MAX_RECORDS {
                self.0.push(tag);
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Appends a bucket's events, two words each; the number appended.
struct PackEvents<'w>(&'w mut Vec<u64>);

impl<'de> DeserializeSeed<'de> for PackEvents<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PackEvents<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of event counts")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(e) = seq.next_element::<EventCount>()? {
            self.0.push(kind_index(e.kind) | u64::from(e.count) << 32);
            self.0.push(e.amount as u64);
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn m(k: u32) -> Month {
        Month::new(2025, 1).unwrap().plus(k)
    }

    #[test]
    fn packed_words_read_back_are_checked() {
        let buckets = [
            bucket(0, Some(1200), &[7], &[]),
            bucket(2, None, &[8, 9], &[(EventKind::ALL[0], 2, 500)]),
        ];
        let months = Months::from_buckets(&buckets);
        let bytes =
            |words: &[u64]| -> Vec<u8> { words.iter().flat_map(|w| w.to_le_bytes()).collect() };
        let again = Months::from_le_bytes(&bytes(months.words())).unwrap();
        assert_eq!(again, months);
        assert_eq!(Months::from_le_bytes(&[]).unwrap(), Months::default());
        // Cut in the middle of a word, and in the middle of the second month.
        let words = months.words();
        let all = bytes(words);
        assert!(Months::from_le_bytes(&all[..all.len() - 1]).is_err());
        assert!(Months::from_le_bytes(&bytes(&words[..words.len() - 1])).is_err());
        // The second month before the first.
        let first = span(words[0]);
        let swapped = [&words[first..], &words[..first]].concat();
        assert!(Months::from_le_bytes(&bytes(&swapped)).is_err());
        // The same month twice.
        let twice = [&words[..first], &words[..first]].concat();
        assert!(Months::from_le_bytes(&bytes(&twice)).is_err());
    }

    fn bucket(
        k: u32,
        wage: Option<Fen>,
        tags: &[u64],
        events: &[(EventKind, u32, Fen)],
    ) -> MonthBucket {
        let mut b = MonthBucket::new(m(k));
        if let Some(v) = wage {
            b.values[Indicator::ALL[1].index()] = v;
            b.present |= 1 << Indicator::ALL[1].index();
        }
        b.records = tags.to_vec();
        b.events = events
            .iter()
            .map(|&(kind, count, amount)| EventCount {
                kind,
                count,
                amount,
            })
            .collect();
        b
    }

    #[test]
    fn packed_buckets_read_back_as_they_were_written() {
        let buckets = vec![
            bucket(0, Some(-5), &[1, u64::MAX], &[]),
            bucket(
                3,
                None,
                &[],
                &[
                    (EventKind::DisasterLoss, 2, 1_000_000),
                    (EventKind::HouseSafe, 1, 0),
                ],
            ),
            bucket(
                4,
                Some(320_000),
                &[7],
                &[(EventKind::TemporaryAssistance, 1, -3)],
            ),
        ];
        let months = Months::from_buckets(&buckets);
        let back: Vec<MonthBucket> = months.iter().map(|b| b.to_bucket()).collect();
        assert_eq!(back, buckets);
        assert_eq!(months.len(), 3);
        assert_eq!(months.newest(), Some(m(4)));
        let b = months.find(m(4)).unwrap();
        assert_eq!(b.get(Indicator::ALL[1]), Some(320_000));
        assert_eq!(b.get(Indicator::ALL[0]), None);
        assert_eq!(b.records(), &[7]);
        assert!(months.find(m(2)).is_none());
        // Serialised like the list of owned buckets.
        let packed = postcard::to_allocvec(&months).unwrap();
        assert_eq!(packed, postcard::to_allocvec(&buckets).unwrap());
        assert_eq!(postcard::from_bytes::<Months>(&packed).unwrap(), months);
        // Cut short anywhere, the encoding is refused, not read in part.
        for cut in 0..packed.len() {
            assert!(
                postcard::from_bytes::<Months>(&packed[..cut]).is_err(),
                "{cut}"
            );
        }
        for (b, owned) in months.iter().zip(&buckets) {
            assert_eq!(
                postcard::to_allocvec(&Some(b)).unwrap(),
                postcard::to_allocvec(&Some(owned)).unwrap()
            );
        }
    }

    /// The words of `b` packed wide, as base files and snapshots of format 2 hold them.
    fn wide(b: &MonthBucket) -> Vec<u64> {
        Months::from_buckets([b]).wide_words()
    }

    #[test]
    fn a_month_of_one_value_that_fits_32_bits_is_packed_narrow_and_reads_back_whole() {
        let many: Vec<u64> = (0..256).collect();
        let mut two = bucket(6, Some(40_000), &[1], &[]);
        two.values[Indicator::ALL[0].index()] = 7;
        two.present |= 1 << Indicator::ALL[0].index();
        let buckets = [
            bucket(0, Some(283_000), &[u64::MAX], &[]),
            bucket(1, Some(-1), &[], &[(EventKind::HouseSafe, 3, -9)]),
            bucket(2, Some(Fen::from(i32::MAX)), &many[..255], &[]),
            bucket(3, Some(Fen::from(i32::MIN)), &[5, 6], &[]),
            // Wide: a value past 32 bits, 256 records, two values, no value.
            bucket(4, Some(Fen::from(i32::MAX) + 1), &[1], &[]),
            bucket(5, Some(1), &many, &[]),
            two,
            bucket(7, None, &[2], &[(EventKind::DisasterLoss, 1, 500)]),
        ];
        let months = Months::from_buckets(&buckets);
        let back: Vec<MonthBucket> = months.iter().map(|b| b.to_bucket()).collect();
        assert_eq!(back, buckets);
        let narrow: Vec<bool> = months.iter().map(|b| b.0[0] & NARROW != 0).collect();
        assert_eq!(narrow, [true, true, true, true, false, false, false, false]);
        // One wage record: a header and its tag.
        assert_eq!(months.iter().next().unwrap().0.len(), 2);
        let words: usize = buckets.iter().map(|b| wide(b).len()).sum();
        assert_eq!(
            months.words().len(),
            words - 4,
            "one word less per narrow month"
        );
        // Read from the list of owned buckets (base files of format 1), the same words.
        let encoded = postcard::to_allocvec(&buckets.to_vec()).unwrap();
        assert_eq!(postcard::from_bytes::<Months>(&encoded).unwrap(), months);
        let mut built = MonthsBuilder::default();
        for b in &buckets {
            assert!(built.push(b, 1));
        }
        assert_eq!(built.finish(), months);
    }

    #[test]
    fn wide_months_of_format_2_files_read_back_packed_narrow() {
        let buckets = [
            bucket(0, Some(283_000), &[9], &[]),
            bucket(1, Some(Fen::from(i32::MAX) + 1), &[1], &[]),
            bucket(2, Some(-20), &[3, 4], &[(EventKind::ALL[0], 1, 5)]),
        ];
        let old: Vec<u8> = buckets
            .iter()
            .flat_map(wide)
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let read = Months::from_le_bytes(&old).unwrap();
        assert_eq!(read, Months::from_buckets(&buckets));
        let back: Vec<MonthBucket> = read.iter().map(|b| b.to_bucket()).collect();
        assert_eq!(back, buckets);
        // Unchanged buckets compare equal to their new packing: a format 2 base brings no
        // spurious changes.
        let (changed, gone) = read.changes_since(&Months::from_buckets(&buckets));
        assert!(changed.is_empty() && gone.is_empty());
    }

    #[test]
    fn a_builder_packs_buckets_given_one_at_a_time_like_from_buckets() {
        let buckets = [
            bucket(3, Some(100), &[7, 8], &[]),
            bucket(4, None, &[9], &[(EventKind::ALL[0], 2, 50)]),
            bucket(9, Some(-1), &[], &[]),
        ];
        for to_come in [0, 1, 3, 24] {
            let mut b = MonthsBuilder::default();
            for x in &buckets {
                assert!(b.push(x, to_come));
            }
            assert!(!b.push(&buckets[1], to_come), "an older month is refused");
            assert!(!b.push(&buckets[2], to_come), "the same month is refused");
            assert_eq!(
                b.finish(),
                Months::from_buckets(&buckets),
                "{to_come} to come"
            );
        }
        assert!(MonthsBuilder::default().finish().is_empty());
    }

    #[test]
    fn update_inserts_in_order_edits_in_place_and_prunes_past_the_retention() {
        let mut months = Months::default();
        for k in [5, 1, 3] {
            let copy = months.clone();
            assert_eq!(
                months.update(m(k), 24, |b| b.records.push(u64::from(k))),
                copy,
                "update returns the months before"
            );
        }
        let order: Vec<Month> = months.iter().map(|b| b.month()).collect();
        assert_eq!(order, vec![m(1), m(3), m(5)]);
        let before = months.update(m(3), 24, |b| b.records.push(30));
        assert_eq!(months.find(m(3)).unwrap().records(), &[3, 30]);
        assert_eq!(before.find(m(3)).unwrap().records(), &[3]);
        // A month 24 past the first drops it; one older than the retention is not kept.
        let before = months.update(m(25), 22, |b| b.records.push(25));
        let order: Vec<Month> = months.iter().map(|b| b.month()).collect();
        assert_eq!(order, vec![m(3), m(5), m(25)]);
        assert_eq!(before.len(), 3, "the months before keep the pruned one");
        let _ = months.update(m(0), 22, |b| b.records.push(0));
        assert!(months.find(m(0)).is_none());
    }

    proptest::proptest! {
        /// `update` against the plain form: the buckets as a sorted list, edited, then
        /// those more than `retention` months older than the newest dropped.
        #[test]
        fn update_matches_editing_a_sorted_list_of_buckets(
            steps in proptest::collection::vec((0u32..40, 1u32..30), 1..60)
        ) {
            let mut months = Months::default();
            let mut plain: Vec<MonthBucket> = Vec::new();
            for (i, (k, retention)) in steps.into_iter().enumerate() {
                let tag = i as u64;
                let before = months.clone();
                let returned = months.update(m(k), retention, |b| b.records.push(tag));
                proptest::prop_assert_eq!(returned, before);
                match plain.iter_mut().find(|b| b.month == m(k)) {
                    Some(b) => b.records.push(tag),
                    None => {
                        let mut b = MonthBucket::new(m(k));
                        b.records.push(tag);
                        plain.push(b);
                    }
                }
                plain.sort_by_key(|b| b.month);
                let newest = plain.iter().map(|b| b.month).max().unwrap();
                plain.retain(|b| newest.since(b.month) <= retention);
                proptest::prop_assert_eq!(&months, &Months::from_buckets(&plain));
            }
        }
    }

    /// A wage bucket of month `k` with `tags` records: a value of a few fen (`v` below 0)
    /// packs narrow, one of more than 32 bits wide.
    fn sized(k: u32, (v, tags): (i64, usize)) -> MonthBucket {
        let wage = if v < 0 { v } else { v << 33 };
        bucket(k, Some(wage), &vec![u64::from(k); tags], &[])
    }

    proptest::proptest! {
        /// `with_changes` against `set`, one change at a time: buckets narrow and wide,
        /// months changed twice, removed, removed then put back, and months the base lacks.
        #[test]
        fn with_changes_matches_setting_each_change_in_turn(
            base in proptest::collection::btree_map(0u32..30, (-3i64..3, 0usize..3), 0..12),
            changes in proptest::collection::vec(
                (0u32..30, proptest::option::of((-3i64..3, 0usize..3))),
                0..40,
            ),
        ) {
            let base: Vec<MonthBucket> = base.into_iter().map(|(k, b)| sized(k, b)).collect();
            let base = Months::from_buckets(&base);
            let mut one_by_one = base.clone();
            let mut packed: Vec<(Month, Vec<u64>)> = Vec::new();
            for &(k, b) in &changes {
                let b = b.map(|b| sized(k, b));
                one_by_one.set(m(k), b.as_ref());
                let mut words = Vec::new();
                if let Some(b) = &b {
                    pack(b, &mut words);
                }
                packed.push((m(k), words));
            }
            let mut given: Vec<(Month, Option<&[u64]>)> = packed
                .iter()
                .map(|(m, w)| (*m, (!w.is_empty()).then_some(&w[..])))
                .collect();
            let mut scratch = vec![7; 3];
            proptest::prop_assert_eq!(base.with_changes(&mut given, &mut scratch), one_by_one);
        }
    }

    #[test]
    fn changes_since_lists_new_and_changed_buckets_and_gone_months() {
        let old = Months::from_buckets(&[
            bucket(1, Some(1), &[1], &[]),
            bucket(2, Some(2), &[2], &[]),
            bucket(4, Some(4), &[4], &[]),
        ]);
        let new = Months::from_buckets(&[
            bucket(2, Some(2), &[2], &[]),
            bucket(3, Some(3), &[3], &[]),
            bucket(4, Some(5), &[4, 5], &[]),
            bucket(6, Some(6), &[6], &[]),
        ]);
        let (changed, gone) = new.changes_since(&old);
        let months: Vec<Month> = changed.iter().map(|b| b.month()).collect();
        assert_eq!(months, vec![m(3), m(4), m(6)]);
        assert_eq!(gone, vec![m(1)]);
        let (changed, gone) = old.changes_since(&Months::default());
        assert_eq!((changed.len(), gone.len()), (3, 0));
        let empty = Months::default();
        let (changed, gone) = empty.changes_since(&old);
        assert_eq!((changed.len(), gone), (0, vec![m(1), m(2), m(4)]));
    }

    proptest::proptest! {
        /// A bucket written straight into postcard's bytes is the bytes serde writes of it,
        /// narrow and wide, with every indicator, records, events of every kind, and values
        /// and counts of every size (negative values, varints of one to ten bytes).
        #[test]
        fn a_bucket_encoded_straight_is_what_serde_writes(
            k in 0u32..2000,
            values in proptest::collection::vec(proptest::option::of(proptest::num::i64::ANY), Indicator::COUNT),
            tags in proptest::collection::vec(proptest::num::u64::ANY, 0..4),
            events in proptest::collection::vec(
                (0usize..EventKind::ALL.len(), proptest::num::u32::ANY, proptest::num::i64::ANY),
                0..4,
            ),
        ) {
            let mut b = bucket(k, None, &tags, &[]);
            for (ind, v) in Indicator::ALL.iter().zip(&values) {
                if let Some(v) = v {
                    b.values[ind.index()] = *v;
                    b.present |= 1 << ind.index();
                }
            }
            let mut kinds = std::collections::BTreeSet::new();
            for (kind, count, amount) in events {
                if kinds.insert(kind) {
                    b.events.push(EventCount { kind: EventKind::ALL[kind], count, amount });
                }
            }
            let months = Months::from_buckets([&b]);
            let packed = months.iter().next().unwrap();
            let mut straight = vec![9];
            packed.encode_postcard(&mut straight);
            proptest::prop_assert_eq!(&straight[1..], &postcard::to_allocvec(&packed).unwrap()[..]);
            proptest::prop_assert_eq!(&straight[1..], &postcard::to_allocvec(&b).unwrap()[..]);
        }
    }

    proptest::proptest! {
        /// `changes_since` against a plain answer: every month of either, compared as owned
        /// buckets. Both sides share a prefix of months as often as not (a batch's change
        /// to a household), and the prefix of words they share may end inside a bucket.
        #[test]
        fn changes_since_matches_comparing_every_month(
            base in proptest::collection::btree_map(0u32..30, (-3i64..3, 0usize..3), 0..14),
            edits in proptest::collection::vec(
                (0u32..32, proptest::option::of((-3i64..3, 0usize..3))),
                0..4,
            ),
        ) {
            let old = Months::from_buckets(&base.iter().map(|(k, b)| sized(*k, *b)).collect::<Vec<_>>());
            let mut new = old.clone();
            for (k, b) in &edits {
                new.set(m(*k), b.map(|b| sized(*k, b)).as_ref());
            }
            let (changed, gone) = new.changes_since(&old);
            let olds: BTreeMap<Month, MonthBucket> =
                old.iter().map(|b| (b.month(), b.to_bucket())).collect();
            let news: BTreeMap<Month, MonthBucket> =
                new.iter().map(|b| (b.month(), b.to_bucket())).collect();
            let want_changed: Vec<MonthBucket> = news
                .iter()
                .filter(|(k, b)| olds.get(k) != Some(b))
                .map(|(_, b)| b.clone())
                .collect();
            let want_gone: Vec<Month> = olds.keys().filter(|k| !news.contains_key(k)).copied().collect();
            let changed: Vec<MonthBucket> = changed.iter().map(Bucket::to_bucket).collect();
            proptest::prop_assert_eq!(changed, want_changed);
            proptest::prop_assert_eq!(gone, want_gone);
        }
    }
}
