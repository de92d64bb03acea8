//! The one error type of the library crates: every bad input ends here, never in a panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The io error is part of the message, not a `source`: error reporters that print the
    /// chain would otherwise say it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config.json: {0}")]
    Config(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("backend {backend}: {message}")]
    Backend { backend: String, message: String },
    #[error("cancelled")]
    Cancelled,
    /// A forward's output held NaN or inf: a weight or an activation is not finite
    /// ([`crate::weights::WeightStore::first_non_finite`] names the tensor where a weight is).
    #[error("the model's output is not finite at forward {forward} (NaN or inf{culprit})")]
    NonFinite { forward: usize, culprit: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }
    pub fn backend(backend: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Backend {
            backend: backend.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
