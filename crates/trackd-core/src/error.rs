//! Domain errors carry a kind, never an HTTP status: the server maps kinds to statuses in
//! one place.

use std::fmt;

/// A field of a request that is missing or invalid: `<field path>: <what is wrong>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// Dotted path of the field (`identity.email`).
    pub field: String,
    /// What is wrong, lowercase, no trailing period.
    pub problem: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl From<crate::json::JsonError> for FieldError {
    fn from(e: crate::json::JsonError) -> Self {
        FieldError {
            field: e.path,
            problem: e.problem,
        }
    }
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write queue is full: retry later.
    #[error("write queue full")]
    Overloaded,
    /// The store cannot commit (disk full, I/O error, database down): retry later.
    #[error("storage unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A named thing (project, credential) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0} already exists")]
    Conflict(String),
    /// The write would break a bound on what is stored (a profile past its limits).
    #[error("{0}")]
    Invalid(FieldError),
}

impl StoreError {
    /// Wraps a backend error as [`StoreError::Unavailable`].
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable(Box::new(e))
    }
}

/// A plain-text cause, for failures that have no error value of their own.
#[derive(Debug)]
pub struct Cause(pub &'static str);

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Cause {}
