//! Label matchers in Alertmanager's syntax: `label=value`, `label!=value`, `label=~regex`,
//! `label!~regex`; values may be double-quoted; regexes match the whole value.

use std::collections::BTreeMap;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    #[error("matcher {0:?} is not label=value, label!=value, label=~regex or label!~regex")]
    Syntax(String),
    #[error("matcher {0:?}: invalid regex: {1}")]
    Regex(String, String),
}

#[derive(Debug, Clone)]
pub enum Matcher {
    Eq(String, String),
    Ne(String, String),
    Re(String, regex::Regex, String),
    NotRe(String, regex::Regex, String),
}

impl Matcher {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or("");
        match self {
            Self::Eq(k, v) => get(k) == v,
            Self::Ne(k, v) => get(k) != v,
            Self::Re(k, re, _) => re.is_match(get(k)),
            Self::NotRe(k, re, _) => !re.is_match(get(k)),
        }
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Eq(k, v) => write!(f, "{k}={v:?}"),
            Self::Ne(k, v) => write!(f, "{k}!={v:?}"),
            Self::Re(k, _, s) => write!(f, "{k}=~{s:?}"),
            Self::NotRe(k, _, s) => write!(f, "{k}!~{s:?}"),
        }
    }
}

impl FromStr for Matcher {
    type Err = MatcherError;
    fn from_str(s: &str) -> Result<Self, MatcherError> {
        let t = s.trim();
        let pos = t
            .find(['=', '!'])
            .ok_or_else(|| MatcherError::Syntax(s.into()))?;
        let (label, rest) = t.split_at(pos);
        let label = label.trim();
        if label.is_empty()
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(MatcherError::Syntax(s.into()));
        }
        let (op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v.trim())))
            .ok_or_else(|| MatcherError::Syntax(s.into()))?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value)
            .to_string();
        let re = || {
            regex::Regex::new(&format!("^(?:{value})$"))
                .map_err(|e| MatcherError::Regex(s.into(), e.to_string()))
        };
        Ok(match op {
            "=" => Self::Eq(label.into(), value),
            "!=" => Self::Ne(label.into(), value),
            "=~" => Self::Re(label.into(), re()?, value),
            _ => Self::NotRe(label.into(), re()?, value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let l: BTreeMap<String, String> = [("county".to_string(), "632522".to_string())].into();
        assert!("county=632522".parse::<Matcher>().unwrap().matches(&l));
        assert!(
            "county = \"632522\""
                .parse::<Matcher>()
                .unwrap()
                .matches(&l)
        );
        assert!("county=~6325.*".parse::<Matcher>().unwrap().matches(&l));
        assert!(
            !"county=~6325".parse::<Matcher>().unwrap().matches(&l),
            "regexes match the whole value"
        );
        assert!("county!~6301.*".parse::<Matcher>().unwrap().matches(&l));
        assert!(
            "severity!=critical".parse::<Matcher>().unwrap().matches(&l),
            "a missing label is empty"
        );
        assert!("county=~(".parse::<Matcher>().is_err());
        assert!("county".parse::<Matcher>().is_err());
    }
}
