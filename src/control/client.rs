//! The control socket client (blocking; used by the CLI).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::proto::{Command, Response, MAX_REPLY};

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the control socket {path}: {source} (is `umpath daemon` running? pick the socket with --control-socket)")]
    Connect { path: String, source: io::Error },
    #[error("control socket {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("control socket {path}: bad answer from the daemon: {detail}")]
    BadAnswer { path: String, detail: String },
}

/// Sends one command and waits for the answer.
pub fn request(socket: &Path, cmd: &Command, timeout: Duration) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    let io_err = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    s.set_read_timeout(Some(timeout)).map_err(io_err)?;
    s.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut line = cmd.to_line();
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io_err)?;
    let mut buf = Vec::new();
    s.take(MAX_REPLY as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io_err)?;
    serde_json::from_slice(&buf).map_err(|e| ClientError::BadAnswer {
        path: path.clone(),
        detail: e.to_string(),
    })
}
