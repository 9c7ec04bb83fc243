//! What `baton-agent status|verify` answer when no agent does: the pinned
//! maps outlive the agent (SIGKILL, OOM kill), so the datapath can still be
//! described and checked from the pins. A stale `admin.sock` (refused), a
//! missing one, or an agent that does not answer in time all mean "no agent".

use std::io::ErrorKind;
use std::path::Path;

use baton_api::admin::{FromPins, PinStatus};
use serde::Serialize;
use serde_json::Value;

use super::client::{self, ClientError};
use super::Request;
use crate::maps::{MapError, MapSet};
use crate::verify;

/// Why neither the agent nor the pins could answer.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The agent answered with an error, or the socket failed otherwise.
    #[error(transparent)]
    Agent(#[from] ClientError),
    /// No agent answered and the pins could not be read.
    #[error("no agent answers ({agent}) and the pins under {pin_dir} cannot be read: {source}")]
    Pins {
        /// Why the agent did not answer.
        agent: String,
        /// The pin directory.
        pin_dir: String,
        /// Cause.
        source: MapError,
    },
    /// The answer from the pins could not be encoded.
    #[error("encoding the answer from the pins: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Who produced an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnsweredBy {
    /// The running agent, over its admin socket.
    Agent,
    /// The pinned maps; the agent did not answer for this reason.
    Pins(String),
}

/// Whether a failed admin request means that no agent is there to answer
/// (rather than an agent that answered badly).
pub fn no_agent(e: &ClientError) -> bool {
    match e {
        ClientError::Io { source, .. } => matches!(
            source.kind(),
            ErrorKind::NotFound
                | ErrorKind::ConnectionRefused
                | ErrorKind::TimedOut
                | ErrorKind::WouldBlock
                | ErrorKind::ConnectionReset
                | ErrorKind::BrokenPipe
        ),
        // The agent closed the connection without a line (it died or
        // retired mid-request).
        ClientError::Decode { source, .. } => source.is_eof(),
        ClientError::Agent { .. } => false,
    }
}

/// Sends `req` to the agent; when no agent answers, `from_pins` answers,
/// marked [`FromPins`]. The agent's answer is passed on as it came: it may
/// be of another version than this binary.
fn agent_or_pins<T: Serialize>(
    sock: &Path,
    pin_dir: &Path,
    req: Request,
    from_pins: impl FnOnce(&MapSet) -> Result<T, MapError>,
) -> Result<(Value, AnsweredBy), OfflineError> {
    let why = match client::request(sock, req) {
        Ok(v) => return Ok((v, AnsweredBy::Agent)),
        Err(e) if no_agent(&e) => e.to_string(),
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(reason = %why, "no agent answers; reading the pins");
    let pins = |source| OfflineError::Pins {
        agent: why.clone(),
        pin_dir: pin_dir.display().to_string(),
        source,
    };
    let maps = MapSet::open_pinned(pin_dir).map_err(pins)?;
    let answer = FromPins::new(from_pins(&maps).map_err(pins)?, why.clone());
    let v = serde_json::to_value(answer).map_err(OfflineError::Encode)?;
    Ok((v, AnsweredBy::Pins(why)))
}

/// `verify` through the agent, else over the pinned maps (the map
/// invariants only: there is no agent view to compare with).
pub fn verify(sock: &Path, pin_dir: &Path) -> Result<(Value, AnsweredBy), OfflineError> {
    agent_or_pins(sock, pin_dir, Request::Verify, |maps| {
        Ok(verify::check(&maps.snapshot()?))
    })
}

/// `status` from the agent, else what the pins tell ([`PinStatus`]):
/// generation, layout, entry counts and whether the maps' invariants hold.
pub fn status(sock: &Path, pin_dir: &Path) -> Result<(Value, AnsweredBy), OfflineError> {
    agent_or_pins(sock, pin_dir, Request::Status, |maps| {
        let meta = maps.meta()?;
        let counts = maps.entry_counts()?;
        let report = verify::check(&maps.snapshot()?);
        Ok(PinStatus {
            pid: None,
            pin_dir: pin_dir.display().to_string(),
            layout_version: meta.layout_version,
            generation: meta.generation,
            entries: counts
                .into_iter()
                .map(|(name, n)| (name.to_owned(), n as u64))
                .collect(),
            violations: report.violations.len() as u64,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: ErrorKind) -> ClientError {
        ClientError::Io {
            path: "admin.sock".into(),
            source: std::io::Error::from(kind),
        }
    }

    #[test]
    fn refused_missing_and_silent_sockets_mean_no_agent() {
        for k in [
            ErrorKind::NotFound,
            ErrorKind::ConnectionRefused,
            ErrorKind::TimedOut,
            ErrorKind::WouldBlock,
        ] {
            assert!(no_agent(&io(k)), "{k:?}");
        }
        assert!(!no_agent(&io(ErrorKind::PermissionDenied)));
        let eof = serde_json::from_str::<Value>("").expect_err("empty is not JSON");
        assert!(no_agent(&ClientError::Decode {
            path: "admin.sock".into(),
            source: eof,
        }));
    }

    #[test]
    fn a_stale_socket_file_falls_back_to_the_pins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("admin.sock");
        // Bound then dropped: the file stays, nobody listens (ECONNREFUSED),
        // exactly what a SIGKILLed agent leaves.
        drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
        let r = verify(&sock, &dir.path().join("no-pins"));
        match r {
            Err(OfflineError::Pins { agent, .. }) => {
                assert!(agent.contains("refused"), "{agent}")
            }
            other => panic!("expected the pins to be tried: {other:?}"),
        }
    }
}
