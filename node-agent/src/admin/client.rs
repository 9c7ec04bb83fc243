//! Client side of the admin socket: [`request`] returns the answer as raw
//! JSON (what the CLI prints, whatever the agent's version); [`status`],
//! [`dump`] and [`verify`] read it as `baton_api::admin`'s types.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use baton_api::admin::{Answer, Dump, Status, Verify};
use serde::de::DeserializeOwned;

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
    /// The response was not JSON, or not the requested answer.
    #[error("admin socket {path}: bad response: {source}")]
    Decode {
        /// Socket path.
        path: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// The agent answered with an error.
    #[error("admin socket {path}: the agent answered: {error}")]
    Agent {
        /// Socket path.
        path: String,
        /// The agent's error text.
        error: String,
    },
}

/// Sends one request and returns the response.
pub fn request(path: &Path, req: Request) -> Result<serde_json::Value, ClientError> {
    request_within(path, req, Duration::from_secs(30))
}

/// [`request`], giving up when a read or write waits longer than `timeout`.
pub fn request_within(
    path: &Path,
    req: Request,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let io = |source| ClientError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(io)?;
    let timeout = Some(timeout.max(Duration::from_millis(1)));
    s.set_read_timeout(timeout).map_err(io)?;
    s.set_write_timeout(timeout).map_err(io)?;
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

/// Sends `req` and reads the answer as `T`; an `{"error": ...}` answer is
/// [`ClientError::Agent`].
pub fn request_typed<T: DeserializeOwned>(path: &Path, req: Request) -> Result<T, ClientError> {
    let v = request(path, req)?;
    let answer = serde_json::from_value::<Answer<T>>(v).map_err(|source| ClientError::Decode {
        path: path.display().to_string(),
        source,
    })?;
    answer.into_result().map_err(|error| ClientError::Agent {
        path: path.display().to_string(),
        error,
    })
}

/// The running agent's status.
pub fn status(path: &Path) -> Result<Status, ClientError> {
    request_typed(path, Request::Status)
}

/// The services the running agent programmed.
pub fn dump(path: &Path) -> Result<Dump, ClientError> {
    request_typed(path, Request::Dump)
}

/// The running agent's verification of its maps against its view.
pub fn verify(path: &Path) -> Result<Verify, ClientError> {
    request_typed(path, Request::Verify)
}
