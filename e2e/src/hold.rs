//! Held connections: opened before the load (round-robin over targets) and
//! echo-checked at the end, to prove that changes made meanwhile (map updates,
//! agent hot upgrades) did not drop established connections.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::client::{self, ConnectError, Connected, Stage, Timeouts};
use crate::report::{DeadConnection, ErrorCounts, HoldReport};

/// One held connection.
#[derive(Debug)]
pub struct HeldConnection {
    /// Target it was opened to.
    pub target: SocketAddr,
    /// Its identity line and stream.
    pub conn: Connected,
}

/// A set of held connections.
#[derive(Debug, Default)]
pub struct Hold {
    /// Connections that opened.
    pub conns: Vec<HeldConnection>,
    /// Connections requested.
    pub requested: u64,
    /// Open failures by kind.
    pub open_errors: ErrorCounts,
}

impl Hold {
    /// Opens `n` connections, round-robin over `targets`.
    pub fn open(targets: &[SocketAddr], n: u64, timeouts: Timeouts) -> Hold {
        let mut hold = Hold {
            requested: n,
            ..Hold::default()
        };
        if targets.is_empty() {
            return hold;
        }
        for i in 0..n {
            let target = targets[(i % targets.len() as u64) as usize];
            match client::connect(target, timeouts) {
                Ok(conn) => hold.conns.push(HeldConnection { target, conn }),
                Err(e) => hold.open_errors.add(e.kind),
            }
        }
        hold
    }

    /// Sends one line on every connection and checks that it is echoed back within `timeout`.
    pub fn check(mut self, timeout: Duration) -> HoldReport {
        let mut identities = BTreeMap::new();
        for h in &self.conns {
            *identities.entry(h.conn.identity.clone()).or_insert(0) += 1;
        }
        // Write everything first, then read with one shared deadline: a dead
        // connection costs at most `timeout` in total, not per connection.
        let mut results: Vec<Result<String, ConnectError>> = self
            .conns
            .iter_mut()
            .enumerate()
            .map(|(i, h)| {
                let line = format!("baton-hold {i} {}\n", h.conn.identity);
                h.conn
                    .stream
                    .write_all(line.as_bytes())
                    .map(|()| line)
                    .map_err(|e| ConnectError::new(h.target, Stage::Echo, e))
            })
            .collect();
        let deadline = Instant::now() + timeout;
        for (h, r) in self.conns.iter_mut().zip(results.iter_mut()) {
            if let Ok(sent) = r {
                let expected = sent.trim_end_matches('\n').to_owned();
                *r = match client::read_line(&mut h.conn.stream, deadline) {
                    Ok(got) if got == expected => Ok(got),
                    Ok(got) => Err(ConnectError::new(
                        h.target,
                        Stage::Echo,
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("echo mismatch: sent {expected:?}, got {got:?}"),
                        ),
                    )),
                    Err(e) => Err(ConnectError::new(h.target, Stage::Echo, e)),
                };
            }
        }
        let mut report = HoldReport {
            requested: self.requested,
            held: self.conns.len() as u64,
            open_failed: self.open_errors.total(),
            open_errors: self.open_errors,
            identities,
            ..HoldReport::default()
        };
        for (h, r) in self.conns.iter().zip(results) {
            match r {
                Ok(_) => report.alive += 1,
                Err(e) => report.dead.push(DeadConnection {
                    target: h.target.to_string(),
                    identity: h.conn.identity.clone(),
                    kind: e.kind,
                    error: e.to_string(),
                }),
            }
        }
        report.dead_count = report.dead.len() as u64;
        report
    }
}
