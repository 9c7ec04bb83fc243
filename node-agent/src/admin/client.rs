//! Client side of the admin socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::Request;

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket I/O.
    #[error("admin socket {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The response was not JSON.
    #[error("admin socket {path}: bad response: {source}")]
    Decode {
        /// Socket path.
        path: String,
        /// Cause.
        source: serde_json::Error,
    },
}

/// Sends one request and returns the response.
pub fn request(path: &Path, req: Request) -> Result<serde_json::Value, ClientError> {
    let io = |source| ClientError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(&req).map_err(|source| ClientError::Decode {
        path: path.display().to_string(),
        source,
    })?;
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut resp = String::new();
    BufReader::new(&s).read_line(&mut resp).map_err(io)?;
    serde_json::from_str(&resp).map_err(|source| ClientError::Decode {
        path: path.display().to_string(),
        source,
    })
}
