//! The control socket server (tokio, Unix socket).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::proto::{Command, Response, MAX_REQUEST};

/// What answers control commands (the daemon).
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, cmd: Command) -> impl Future<Output = Response> + Send;
}

/// Binds the control socket: a stale socket file is replaced, a live one
/// (another daemon) is an error.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    crate::unixsock::prepare_socket_path(path)?;
    UnixListener::bind(path)
}

/// Serves until `shutdown` turns true.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    path: PathBuf,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let h = handler.clone();
                    tokio::spawn(async move {
                        if let Err(e) = one(stream, h).await {
                            debug!("control connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("control socket accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn one<H: Handler>(stream: UnixStream, handler: Arc<H>) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(rd.take(MAX_REQUEST as u64)).read_line(&mut line),
    )
    .await;
    let resp = match read {
        Err(_) => Response::error("timed out waiting for a command"),
        Ok(Err(e)) => Response::error(format!("cannot read the command: {e}")),
        Ok(Ok(_)) if !line.ends_with('\n') && line.len() >= MAX_REQUEST => {
            Response::error(format!("command longer than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) => match Command::parse(&line) {
            Ok(cmd) => handler.handle(cmd).await,
            Err(e) => Response::error(e),
        },
    };
    let mut out = serde_json::to_vec(&resp).map_err(io::Error::other)?;
    out.push(b'\n');
    wr.write_all(&out).await?;
    wr.shutdown().await
}
