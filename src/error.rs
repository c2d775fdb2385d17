//! The crate's top-level error: each module's thiserror enum folded into
//! one, so callers that span modules (the CLI) have one type to report.
//! Every variant's message already carries its context (file:line, path,
//! offset, operation, socket).

use crate::config::ConfigError;
use crate::control::client::ClientError;
use crate::daemon::DaemonError;
use crate::transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Control(#[from] ClientError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An IO error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
