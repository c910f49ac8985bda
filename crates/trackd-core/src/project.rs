//! Projects and their credentials: tracking tokens (write only, public) and secret keys
//! (read and admin), stored and looked up by SHA-256 hash.

use rand::distributions::{Alphanumeric, DistString};
use sha2::{Digest, Sha256};

use crate::error::FieldError;

/// A project's id in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectId(i64);

impl ProjectId {
    /// Wraps a stored id.
    pub const fn new(id: i64) -> Self {
        ProjectId(id)
    }

    /// The stored id.
    pub const fn get(self) -> i64 {
        self.0
    }
}

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// Write only, safe in browser JavaScript, accepted on the Vero routes.
    Tracking,
    /// Read and admin, never from a query string, never with CORS.
    Secret,
}

impl CredentialKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Tracking => "tracking",
            CredentialKind::Secret => "secret",
        }
    }

    /// The kind named `s` in the database.
    pub fn from_stored(s: &str) -> Option<Self> {
        match s {
            "tracking" => Some(CredentialKind::Tracking),
            "secret" => Some(CredentialKind::Secret),
            _ => None,
        }
    }
}

/// A credential as presented by a client or printed once at creation. Its `Debug` shows
/// only the fingerprint, so it cannot leak through a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.hash().fingerprint())
    }
}

/// The longest imported token.
pub const MAX_TOKEN_CHARS: usize = 254;

/// What every secret key starts with (keys are only ever generated, never imported).
pub const SECRET_KEY_PREFIX: &str = "sk_";

/// Letters and digits after a generated token's prefix.
const RANDOM_CHARS: usize = 32;

/// Whether `text` holds something shaped like a secret key: `sk_` and 32 letters and
/// digits, not inside a longer word (`task_…` is not one). A shape check, no lookup: used
/// to refuse secret keys in query strings, whether or not they are valid.
pub fn contains_secret_key(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find(SECRET_KEY_PREFIX) {
        let start = from + at;
        let body = start + SECRET_KEY_PREFIX.len();
        let word_before =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let run = bytes[body..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if !word_before && run == RANDOM_CHARS {
            return true;
        }
        // The prefix is ASCII: one byte on is still a character boundary.
        from = start + 1;
    }
    false
}

impl Token {
    /// A new random credential: `tk_` or `sk_` and 32 letters and digits (190 bits).
    pub fn generate(kind: CredentialKind) -> Self {
        let prefix = match kind {
            CredentialKind::Tracking => "tk_",
            CredentialKind::Secret => SECRET_KEY_PREFIX,
        };
        let random = Alphanumeric.sample_string(&mut rand::thread_rng(), RANDOM_CHARS);
        Token(format!("{prefix}{random}"))
    }

    /// An existing token string (an old Vero token, for example), kept as is: 1 to 254
    /// printable characters, no spaces.
    pub fn import(value: &str) -> Result<Self, FieldError> {
        if value.is_empty() || value.chars().count() > MAX_TOKEN_CHARS {
            return Err(FieldError::new(
                "token",
                format!("must be 1 to {MAX_TOKEN_CHARS} characters"),
            ));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(FieldError::new(
                "token",
                "must be printable characters without spaces",
            ));
        }
        // A tracking token travels in query strings, where anything shaped like a secret
        // key is refused on sight: such a token could never be used there.
        if contains_secret_key(value) {
            return Err(FieldError::new(
                "token",
                "holds the shape of a secret key (sk_ and 32 letters and digits), which \
                 query strings refuse",
            ));
        }
        Ok(Token(value.to_owned()))
    }

    /// A token as presented by a client (no validation: it is only hashed and looked up).
    pub fn presented(value: &str) -> Self {
        Token(value.to_owned())
    }

    /// The secret text, for printing once to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash it is stored and looked up by.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

/// SHA-256 of a token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Wraps stored hash bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TokenHash(bytes)
    }

    /// The hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short, non-secret name for logs: the first 8 hex digits of the hash.
    pub fn fingerprint(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({})", self.fingerprint())
    }
}

/// An active credential as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The hash it is looked up by.
    pub hash: TokenHash,
    /// The project it belongs to.
    pub project: ProjectId,
    /// What it may do.
    pub kind: CredentialKind,
}

impl Credential {
    /// A credential as stored (hash bytes, project id, kind name); `None` for a row that
    /// is not one (a malformed hash or an unknown kind is skipped, never trusted).
    pub fn from_stored(hash: &[u8], project: i64, kind: &str) -> Option<Self> {
        Some(Credential {
            hash: TokenHash::from_bytes(<[u8; 32]>::try_from(hash).ok()?),
            project: ProjectId::new(project),
            kind: CredentialKind::from_stored(kind)?,
        })
    }
}

/// A project as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// Its id.
    pub id: ProjectId,
    /// Its unique name.
    pub name: String,
    /// How long its events are kept, in microseconds of receive time (`None`: for ever).
    pub retention: Option<i64>,
}

/// Checks a project name: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn validate_project_name(name: &str) -> Result<(), FieldError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "name",
            "must be 1 to 64 letters, digits, '-', '_' or '.'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_url_safe_and_prefixed() {
        let t = Token::generate(CredentialKind::Secret);
        assert!(t.expose().starts_with("sk_"));
        assert_eq!(t.expose().len(), 35);
        assert!(t
            .expose()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        assert_ne!(t, Token::generate(CredentialKind::Secret));
        assert!(Token::generate(CredentialKind::Tracking)
            .expose()
            .starts_with("tk_"));
    }

    #[test]
    fn secret_keys_are_found_by_their_shape() {
        let key = Token::generate(CredentialKind::Secret);
        let k = key.expose();
        for text in [
            k.to_owned(),
            format!("Bearer {k}"),
            format!("https://x.example/?key={k}&y=1"),
            format!("{k},{k}"),
            format!("é{k}"),
        ] {
            assert!(contains_secret_key(&text), "{text}");
        }
        let tracking = Token::generate(CredentialKind::Tracking);
        for text in [
            "",
            "sk_",
            "sk_short",
            tracking.expose(),
            &format!("task_{}", &k[3..]),
            &format!("{k}x"),
            &k[..34],
            &format!("sk-{}", &k[3..]),
        ] {
            assert!(!contains_secret_key(text), "{text}");
        }
    }

    #[test]
    fn imported_tokens_are_kept_as_is_within_bounds() {
        assert_eq!(
            Token::import("TOKEN_abc123").expect("ok").expose(),
            "TOKEN_abc123"
        );
        assert!(Token::import(&"x".repeat(254)).is_ok());
        assert!(Token::import(&"x".repeat(255)).is_err());
        assert!(Token::import("").is_err());
        assert!(Token::import("a b").is_err());
        assert!(Token::import("a\u{7}").is_err());
        let shaped = format!("sk_{}", "a".repeat(32));
        assert_eq!(
            Token::import(&shaped).expect_err("refused").to_string(),
            "token: holds the shape of a secret key (sk_ and 32 letters and digits), which \
             query strings refuse"
        );
        assert!(Token::import(&format!("task_{}", "a".repeat(32))).is_ok());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = Token::import("TOKEN_abc123").expect("ok");
        let shown = format!("{t:?}");
        assert!(!shown.contains("abc123"));
        assert_eq!(shown, format!("Token({})", t.hash().fingerprint()));
    }
}
