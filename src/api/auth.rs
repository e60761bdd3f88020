//! API tokens: a file holds only SHA-256 hashes of the tokens, each with a role and a county
//! scope.
//!
//! Invariant: a token sees and changes only alerts of its counties; anything else is
//! answered as if it did not exist (404), in lists too.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::model::CountyCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads alerts, silences and the notification log of its counties.
    Viewer,
    /// Also acknowledges alerts and creates or expires silences of its counties.
    Operator,
    /// Everything, including the audit log.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub name: String,
    /// Hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
    pub role: Role,
    /// County codes or prefixes (`6325` for a prefecture); empty: every county.
    #[serde(default)]
    pub counties: Vec<String>,
}

impl Token {
    /// Whether the token may see something of `county` (`None`: not of any county, such as
    /// a feed; only tokens for every county see those).
    pub fn covers(&self, county: Option<CountyCode>) -> bool {
        if self.counties.is_empty() {
            return true;
        }
        county.is_some_and(|c| {
            let code = c.to_string();
            self.counties.iter().any(|p| code.starts_with(p.as_str()))
        })
    }

    /// Whether a county code or prefix lies within the token's scope.
    pub fn covers_prefix(&self, prefix: &str) -> bool {
        self.counties.is_empty() || self.counties.iter().any(|p| prefix.starts_with(p.as_str()))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    #[serde(default)]
    pub tokens: Vec<Token>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("{0}")]
    Problems(crate::config::source::Problems),
    #[error(
        "{file}: token {name:?}: sha256 must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)"
    )]
    Hash { file: String, name: String },
}

pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let src = crate::config::source::Source::read(path).map_err(TokensError::Problems)?;
        let t: Tokens = src.parse().map_err(TokensError::Problems)?;
        for tok in &t.tokens {
            if tok.sha256.len() != 64 || !tok.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(TokensError::Hash {
                    file: path.display().to_string(),
                    name: tok.name.clone(),
                });
            }
        }
        Ok(t)
    }

    /// The token a bearer secret belongs to.
    pub fn find(&self, secret: &str) -> Option<&Token> {
        let h = hash(secret);
        self.tokens
            .iter()
            .find(|t| t.sha256.eq_ignore_ascii_case(&h))
    }
}
