//! The agent a handover would take over from: its `status` on the admin
//! socket (read-only; the handover socket is not touched, since connecting
//! there opens a session), and whether its handover protocol versions meet
//! this build's.
//!
//! No agent answering is no failure: on a fresh node, or after the agent
//! died, a takeover starts from the pins (which [`plan`](super::plan)
//! covered).

use std::path::Path;

use baton_api::admin::{ErrorAnswer, ProtocolRange};
use baton_api::preflight::{HandoverCheck, Outcome, RunningAgent};
use serde::Deserialize;

use super::{outcome, protocol, PreflightError};
use crate::admin::{client, offline, Request};
use crate::agent::{admin_socket, handover_socket};

/// The part of the running agent's `status` preflight reads. Not
/// `baton_api::admin::Status` itself: the running agent may be an older
/// release whose answer lacks fields this build added, and only these
/// matter here.
#[derive(Debug, Deserialize)]
struct SeenStatus {
    version: String,
    layout_version: u32,
    pid: u32,
    generation: u64,
    pin_dir: String,
    #[serde(default)]
    frozen: bool,
    #[serde(default)]
    syncs: u64,
    #[serde(default)]
    handover_protocol: Option<ProtocolRange>,
}

/// Asks the agent on `run_dir` (if any) who it is.
pub fn check(run_dir: &Path, pin_dir: &Path) -> HandoverCheck {
    let sock = admin_socket(run_dir);
    let socket_present = handover_socket(run_dir).exists();
    let mut c = HandoverCheck {
        outcome: Outcome::Pass,
        summary: String::new(),
        agent: None,
        no_agent: None,
        socket_present,
        session_protocol: None,
    };
    let agent = match ask(&sock) {
        Ok(a) => a,
        Err(Asked::NoAgent(why)) => {
            c.summary = format!("no agent answers ({why}): a takeover would start from the pins");
            c.no_agent = Some(why);
            return c;
        }
        Err(Asked::Failed(e)) => {
            c.outcome = Outcome::Fail;
            c.summary = format!("{}: {e}", sock.display());
            return c;
        }
    };
    let ours = protocol();
    c.session_protocol = ours.common(agent.handover_protocol);
    let who = format!(
        "agent {} (pid {}, layout {})",
        agent.version, agent.pid, agent.layout_version
    );
    let theirs = if agent.protocol_assumed {
        format!(
            "{} (assumed: its status does not say)",
            agent.handover_protocol
        )
    } else {
        agent.handover_protocol.to_string()
    };
    let mut problems = Vec::new();
    if c.session_protocol.is_none() {
        problems.push(format!(
            "no handover protocol version in common: this build speaks {ours}, the running {who} \
             speaks {theirs}; upgrade through an intermediate release"
        ));
    }
    if !socket_present {
        problems.push(format!(
            "the running {who} has no handover socket at {}: a successor would not find it",
            handover_socket(run_dir).display()
        ));
    }
    if !same_dir(Path::new(&agent.pin_dir), pin_dir) {
        problems.push(format!(
            "the running {who} pins under {}, preflight read --bpffs {}: a handover stages in \
             --bpffs, so both must be the same directory",
            agent.pin_dir,
            pin_dir.display()
        ));
    }
    c.outcome = outcome(problems.is_empty());
    c.summary = if problems.is_empty() {
        format!(
            "{who} speaks handover protocol {theirs}, this build {ours}: a handover would run \
             protocol {}{}",
            c.session_protocol.unwrap_or_default(),
            if agent.frozen {
                " (it is frozen by a handover in progress right now: this one would queue)"
            } else {
                ""
            }
        )
    } else {
        problems.join("; ")
    };
    c.agent = Some(agent);
    c
}

/// Why no [`RunningAgent`] came back.
enum Asked {
    /// Nobody answers (refused, missing socket, silence): not a failure.
    NoAgent(String),
    /// An agent answered, badly.
    Failed(PreflightError),
}

fn ask(sock: &Path) -> Result<RunningAgent, Asked> {
    let v = match client::request(sock, Request::Status) {
        Ok(v) => v,
        Err(e) if offline::no_agent(&e) => return Err(Asked::NoAgent(e.to_string())),
        Err(e) => return Err(Asked::Failed(e.into())),
    };
    if let Ok(ErrorAnswer { error }) = serde_json::from_value::<ErrorAnswer>(v.clone()) {
        return Err(Asked::Failed(PreflightError::Agent(error)));
    }
    let s: SeenStatus =
        serde_json::from_value(v).map_err(|e| Asked::Failed(PreflightError::Status(e)))?;
    Ok(RunningAgent {
        version: s.version,
        layout_version: s.layout_version,
        pid: s.pid,
        generation: s.generation,
        pin_dir: s.pin_dir,
        protocol_assumed: s.handover_protocol.is_none(),
        handover_protocol: s
            .handover_protocol
            .unwrap_or(ProtocolRange::BEFORE_REPORTED),
        frozen: s.frozen,
        syncs: s.syncs,
    })
}

/// Whether two paths name the same directory (resolved when they exist).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
