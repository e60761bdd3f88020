//! Finding a JSON page's list of records without parsing it, so that shares of the records
//! parse on every core ([`super::decode`]).
//!
//! A bulk poll's pages are JSON documents of about a megabyte, nearly all of it the list of
//! records. Parsing a document is one pass on one thread; the poll's thread did it for every
//! page while the records before were applied, and was the slowest stage of an ingest. A scan
//! of the bytes that only counts brackets and skips strings is several times faster than
//! parsing and tells where each record starts and ends.
//!
//! The scan trusts nothing: it answers `None` where the text is not plainly a document with a
//! list at the path (an escaped key on the path, a list index in the path, unbalanced
//! brackets), and the caller then parses the whole document as before. What it finds is
//! checked by parsing: each record on its own, and the document with the list left empty.

use std::ops::Range;

/// How deep serde_json lets a document nest.
const SERDE_DEPTH: usize = 128;
/// The scan gives up on values nested deeper than this: parsed alone, a record of the list
/// could pass serde_json's limit that the whole document fails.
const MAX_NESTING: usize = 64;

/// Where the list at a path lies in a document's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSpans {
    /// From its `[` to its `]`, both included.
    pub list: Range<usize>,
    /// Each element, without the white space around it.
    pub items: Vec<Range<usize>>,
}

/// Finds the list at the dotted `path` of object keys (empty: the document itself) in
/// `text`. Where a key is repeated, its last member counts, as [`super::json::Json`] reads
/// it. `None` where the scan cannot tell for sure (see the module's documentation).
///
/// One pass over the text: the list's elements are delimited as the list is passed over.
/// Only the brackets' nesting is counted, not their kinds: whatever the scan delimits is
/// parsed afterwards, and a text that is not JSON fails that parse.
pub fn find_list(text: &str, path: &str) -> Option<ListSpans> {
    let bytes = text.as_bytes();
    let segments: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('.').collect()
    };
    // A record parsed alone sits that many levels higher than in the document, and
    // serde_json refuses a document nested deeper than `SERDE_DEPTH`.
    if segments.len() + 1 + MAX_NESTING > SERDE_DEPTH {
        return None;
    }
    let start = skip_ws(bytes, 0);
    let (end, found) = find_in(bytes, start, &segments)?;
    // Nothing but white space may follow the document.
    if skip_ws(bytes, end) != bytes.len() {
        return None;
    }
    found
}

/// Passes over the value at `at`, finding the list at `segments` inside it: where the value
/// ends, and the list if found.
fn find_in(bytes: &[u8], at: usize, segments: &[&str]) -> Option<(usize, Option<ListSpans>)> {
    let Some((key, rest)) = segments.split_first() else {
        let spans = list_items(bytes, at)?;
        return Some((spans.list.end, Some(spans)));
    };
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    let mut found = None;
    let mut at = skip_ws(bytes, at + 1);
    if bytes.get(at) == Some(&b'}') {
        return None;
    }
    loop {
        if bytes.get(at) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(bytes, at)?;
        let raw = &bytes[at + 1..key_end - 1];
        // A key written with escapes may or may not be the one sought: parse instead.
        if raw.contains(&b'\\') {
            return None;
        }
        at = skip_ws(bytes, key_end);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(bytes, at + 1);
        let end = if raw == key.as_bytes() {
            // The last member of the key counts, whatever it holds.
            let (end, inner) = find_in(bytes, at, rest)?;
            found = inner;
            end
        } else {
            skip_value(bytes, at)?
        };
        at = skip_ws(bytes, end);
        match bytes.get(at) {
            Some(b',') => at = skip_ws(bytes, at + 1),
            Some(b'}') => return Some((at + 1, found)),
            _ => return None,
        }
    }
}

/// The list that starts at `at` and its elements.
fn list_items(bytes: &[u8], start: usize) -> Option<ListSpans> {
    if bytes.get(start) != Some(&b'[') {
        return None;
    }
    let mut items = Vec::new();
    let mut at = skip_ws(bytes, start + 1);
    if bytes.get(at) != Some(&b']') {
        loop {
            let end = skip_value(bytes, at)?;
            items.push(at..end);
            at = skip_ws(bytes, end);
            match bytes.get(at) {
                Some(b',') => at = skip_ws(bytes, at + 1),
                Some(b']') => break,
                _ => return None,
            }
        }
    }
    Some(ListSpans {
        list: start..at + 1,
        items,
    })
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// Past the string that starts at `at` (its opening quote).
fn skip_string(bytes: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        if bytes[i] == b'"' {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// Past the value that starts at `at`: a string, an object or a list with everything in it,
/// or a number or word up to the next delimiter.
fn skip_value(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at)? {
        b'"' => skip_string(bytes, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while let Some(&c) = bytes.get(i) {
                match c {
                    b'"' => {
                        i = skip_string(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => {
                        depth += 1;
                        if depth > MAX_NESTING {
                            return None;
                        }
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        b',' | b':' | b'}' | b']' => None,
        _ => {
            let mut i = at;
            while let Some(c) = bytes.get(i) {
                if matches!(
                    c,
                    b',' | b'}' | b']' | b':' | b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'{' | b'['
                ) {
                    break;
                }
                i += 1;
            }
            Some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items<'t>(text: &'t str, path: &str) -> Option<Vec<&'t str>> {
        let spans = find_list(text, path)?;
        assert_eq!(text.as_bytes()[spans.list.start], b'[');
        assert_eq!(text.as_bytes()[spans.list.end - 1], b']');
        Some(spans.items.into_iter().map(|r| &text[r]).collect())
    }

    #[test]
    fn finds_the_records_of_a_page_at_a_path() {
        let page = r#" {"next": "c2", "records": [ {"a": "x]}\"{["} , [1, {"b": []}], "s,\\", 12.5e3, null ,true],
            "total": {"n": 3}} "#;
        assert_eq!(
            items(page, "records").unwrap(),
            vec![
                r#"{"a": "x]}\"{["}"#,
                r#"[1, {"b": []}]"#,
                r#""s,\\""#,
                "12.5e3",
                "null",
                "true"
            ]
        );
        let nested = r#"{"data": {"items": [], "next": null}, "data2": 1}"#;
        assert_eq!(items(nested, "data.items").unwrap(), Vec::<&str>::new());
        assert_eq!(items("[ 1 ,2 ]\n", "").unwrap(), vec!["1", "2"]);
    }

    #[test]
    fn a_repeated_key_counts_by_its_last_member() {
        let page = r#"{"records": [1], "other": [], "records": [2, 3]}"#;
        assert_eq!(items(page, "records").unwrap(), vec!["2", "3"]);
    }

    #[test]
    fn answers_none_where_it_cannot_be_sure() {
        for (text, path) in [
            (r#"{"records": {"a": 1}}"#, "records"),
            (r#"{"rec\u006frds": [1]}"#, "records"),
            (r#"{"records": [1]}"#, "records.0"),
            (r#"{"records": [1}"#, "records"),
            (r#"{"records": [1]"#, "records"),
            (r#"{"records": [1]} trailing"#, "records"),
            (r#"{"records": [1,]}"#, "records"),
            (r#"{"records": ["unterminated]}"#, "records"),
            (r#"{"x": 1}"#, "records"),
            ("{}", "records"),
            ("", ""),
            (r#"[1 2]"#, ""),
        ] {
            assert_eq!(find_list(text, path), None, "{text} at {path:?}");
        }
        // Nested deeper than the scan follows, or a path too deep for it.
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_NESTING + 1),
            "]".repeat(MAX_NESTING + 1)
        );
        let shallow = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert_eq!(find_list(&format!("[{deep}]"), ""), None);
        assert_eq!(
            find_list(&format!("[{shallow}]"), "").unwrap().items.len(),
            1
        );
        let at_depth = |n: usize| {
            let text = format!("{}[1]{}", r#"{"a":"#.repeat(n), "}".repeat(n));
            find_list(&text, &vec!["a"; n].join("."))
        };
        assert!(at_depth(SERDE_DEPTH - MAX_NESTING - 1).is_some());
        assert_eq!(at_depth(SERDE_DEPTH - MAX_NESTING), None);
    }
}
