//! Reading TOML files so that every error names the file, the line and the field.
//!
//! serde reports where parsing failed as a byte span; validation reports a field path such as
//! `feeds[2].schedule`. [`Source`] turns either into `file:line:column: field: message`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml_edit::{ImDocument, Item, Table};

/// One problem found in a configuration or rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, e.g. `feeds[1].schedule` (empty for syntax errors).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// All problems of a load, printed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A TOML file's text, kept to locate fields for error messages.
pub struct Source {
    pub path: PathBuf,
    text: String,
    doc: Option<ImDocument<String>>,
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A field path built by validation, e.g. `feeds[1].map.person`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, Problems> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Problems(vec![Problem {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                field: String::new(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        Ok(Self::from_text(path, text))
    }

    pub fn from_text(path: &Path, text: String) -> Self {
        let doc = ImDocument::parse(text.clone()).ok();
        Self {
            path: path.to_path_buf(),
            text,
            doc,
        }
    }

    /// Deserializes the file; unknown keys, wrong types and syntax errors come back located.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Problems> {
        toml::from_str::<T>(&self.text).map_err(|e| {
            let span = e.span();
            let (line, column) = span
                .as_ref()
                .map(|s| self.line_col(s.start))
                .unwrap_or((0, 0));
            let field = span
                .as_ref()
                .and_then(|s| self.path_at(s.start))
                .map(|p| p.to_string())
                .unwrap_or_default();
            Problems(vec![Problem {
                file: self.path.clone(),
                line,
                column,
                field,
                message: e.message().trim().to_string(),
            }])
        })
    }

    /// A problem located at the field `path` (or the nearest enclosing table that exists).
    pub fn problem(&self, path: &FieldPath, message: impl Into<String>) -> Problem {
        let (line, column) = self
            .span_of(path)
            .map(|s| self.line_col(s.start))
            .unwrap_or((1, 1));
        Problem {
            file: self.path.clone(),
            line,
            column,
            field: path.to_string(),
            message: message.into(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    /// The span of the deepest existing item along `path`.
    fn span_of(&self, path: &FieldPath) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut best = None;
        let mut item: &Item = doc.as_item();
        for seg in &path.0 {
            let next = match (seg, item) {
                (Seg::Key(k), Item::Table(t)) => key_and_item(t, k, &mut best),
                (Seg::Key(k), Item::Value(toml_edit::Value::InlineTable(t))) => {
                    if let Some((key, _)) = t.get_key_value(k) {
                        best = key.span().or(best);
                    }
                    None
                }
                (Seg::Index(i), Item::ArrayOfTables(a)) => {
                    if let Some(t) = a.get(*i) {
                        best = t.span().or(best);
                    }
                    item.get(*i)
                }
                (Seg::Index(i), Item::Value(toml_edit::Value::Array(a))) => {
                    if let Some(v) = a.get(*i) {
                        best = v.span().or(best);
                    }
                    None
                }
                _ => None,
            };
            match next {
                Some(n) => item = n,
                None => break,
            }
        }
        best
    }

    /// The field path of the key whose span contains `offset`, if any.
    fn path_at(&self, offset: usize) -> Option<FieldPath> {
        let doc = self.doc.as_ref()?;
        let mut found = None;
        walk_table(doc.as_table(), &FieldPath::root(), offset, &mut found);
        found
    }
}

fn key_and_item<'a>(t: &'a Table, k: &str, best: &mut Option<Range<usize>>) -> Option<&'a Item> {
    let (key, item) = t.get_key_value(k)?;
    if let Some(s) = key.span() {
        *best = Some(s);
    } else if let Some(s) = item.span() {
        *best = Some(s);
    }
    Some(item)
}

fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn walk_table(t: &Table, at: &FieldPath, offset: usize, found: &mut Option<FieldPath>) {
    for (k, item) in t.iter() {
        let here = at.key(k);
        if let Some((key, _)) = t.get_key_value(k)
            && contains(key.span(), offset)
        {
            *found = Some(here.clone());
            return;
        }
        match item {
            Item::Table(sub) => walk_table(sub, &here, offset, found),
            Item::ArrayOfTables(arr) => {
                for (i, sub) in arr.iter().enumerate() {
                    walk_table(sub, &here.index(i), offset, found);
                    if found.is_none() && contains(sub.span(), offset) {
                        // The table itself (e.g. a missing field): name the element.
                        *found = Some(here.index(i));
                    }
                    if found.is_some() {
                        return;
                    }
                }
            }
            Item::Value(v) => {
                if contains(v.span(), offset) {
                    *found = Some(here.clone());
                }
                if let toml_edit::Value::InlineTable(it) = v {
                    for (ik, iv) in it.iter() {
                        if contains(iv.span(), offset) {
                            *found = Some(here.key(ik));
                        }
                    }
                }
            }
            Item::None => {}
        }
        if found.is_some() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        feeds: Vec<Feed>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Feed {
        name: String,
        schedule: String,
    }

    const TEXT: &str = "# feeds\n[[feeds]]\nname = \"a\"\nschedule = \"* * * * * *\"\n\n[[feeds]]\nname = \"b\"\nshedule = \"x\"\n";

    #[test]
    fn unknown_key_is_located_with_its_path() {
        let src = Source::from_text(Path::new("g.toml"), TEXT.to_string());
        let err = src.parse::<Doc>().unwrap_err();
        let p = &err.0[0];
        assert_eq!((p.line, p.field.as_str()), (8, "feeds[1].shedule"), "{err}");
        assert!(p.message.contains("unknown field `shedule`"), "{err}");
        assert!(
            err.to_string()
                .starts_with("g.toml:8:1: feeds[1].shedule: ")
        );
    }

    #[test]
    fn a_missing_field_names_its_table() {
        let src = Source::from_text(Path::new("g.toml"), TEXT.replace("shedule = \"x\"\n", ""));
        let err = src.parse::<Doc>().unwrap_err();
        assert!(
            err.to_string()
                .contains("feeds[1]: missing field `schedule`"),
            "{err}"
        );
    }

    #[test]
    fn validation_path_is_located() {
        let src = Source::from_text(Path::new("g.toml"), TEXT.replace("shedule", "schedule"));
        let p = src.problem(
            &FieldPath::root().key("feeds").index(1).key("schedule"),
            "bad",
        );
        assert_eq!((p.line, p.field.as_str()), (8, "feeds[1].schedule"));
        let p = src.problem(
            &FieldPath::root().key("feeds").index(1).key("missing"),
            "bad",
        );
        assert_eq!(p.line, 6, "falls back to the enclosing table");
    }
}
