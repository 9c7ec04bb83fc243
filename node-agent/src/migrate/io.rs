//! Reading and writing whole maps chunk by chunk: the batch syscalls where
//! the kernel has them, get_next_key + lookup / update per element otherwise.

use std::os::fd::BorrowedFd;

use nix::errno::Errno;

use super::MigrateError;
use crate::sys::{self, SysError};

/// Environment variable that forces the per-element path (`off`).
pub const BATCH_ENV: &str = "BATON_MIGRATE_BATCH";

/// Whether to try the batch syscalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchMode {
    /// Batch where the kernel supports it, per element otherwise.
    Auto,
    /// Per element only (get_next_key + lookup, update).
    Off,
}

/// How to copy.
#[derive(Clone, Copy, Debug)]
pub struct CopyOptions {
    /// Batch or not.
    pub batch: BatchMode,
    /// Entries per batch call.
    pub chunk: u32,
}

impl Default for CopyOptions {
    /// Batch (unless `BATON_MIGRATE_BATCH=off`), 8192 entries per call.
    fn default() -> Self {
        let off = std::env::var(BATCH_ENV).is_ok_and(|v| v == "off" || v == "0");
        Self {
            batch: if off { BatchMode::Off } else { BatchMode::Auto },
            chunk: 8192,
        }
    }
}

/// Reads a map chunk by chunk, batched when possible.
pub(super) struct Reader<'a> {
    fd: BorrowedFd<'a>,
    map: &'a str,
    key_len: usize,
    value_len: usize,
    chunk: u32,
    batch: bool,
    started: bool,
    done: bool,
    token_in: Vec<u8>,
    token_out: Vec<u8>,
    /// Per-element cursor.
    last: Option<Vec<u8>>,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl<'a> Reader<'a> {
    /// A reader of `fd` whose values are `value_len` bytes as copied out.
    pub(super) fn new(
        fd: BorrowedFd<'a>,
        map: &'a str,
        key_len: usize,
        value_len: usize,
        opts: &CopyOptions,
    ) -> Self {
        let chunk = opts.chunk.max(1);
        let tok = sys::batch_token_len(key_len);
        Self {
            fd,
            map,
            key_len,
            value_len,
            chunk,
            batch: opts.batch == BatchMode::Auto,
            started: false,
            done: false,
            token_in: vec![0; tok],
            token_out: vec![0; tok],
            last: None,
            keys: vec![0; chunk as usize * key_len],
            values: vec![0; chunk as usize * value_len],
        }
    }

    fn err(&self, what: &'static str) -> impl FnOnce(SysError) -> MigrateError + '_ {
        move |source| MigrateError::Sys {
            map: self.map.into(),
            what,
            source,
        }
    }

    fn grow(&mut self) {
        self.chunk *= 2;
        self.keys.resize(self.chunk as usize * self.key_len, 0);
        self.values.resize(self.chunk as usize * self.value_len, 0);
    }

    /// Reads the next chunk and returns its entry count, `None` at the end.
    pub(super) fn next(&mut self) -> Result<Option<usize>, MigrateError> {
        while !self.done {
            let n = if self.batch {
                match self.next_batch() {
                    Ok(n) => n,
                    Err(e) if !self.started && sys::batch_unsupported(&e) => {
                        tracing::debug!(map = self.map, error = %e, "no batch lookup; reading per element");
                        self.batch = false;
                        continue;
                    }
                    Err(e) => return Err(self.err("lookup batch")(e)),
                }
            } else {
                self.next_each()?
            };
            if n > 0 {
                return Ok(Some(n));
            }
        }
        Ok(None)
    }

    /// Entry `i` of the current chunk.
    pub(super) fn entry(&self, i: usize) -> (&[u8], &[u8]) {
        let (kl, vl) = (self.key_len, self.value_len);
        (
            &self.keys[i * kl..(i + 1) * kl],
            &self.values[i * vl..(i + 1) * vl],
        )
    }

    /// Every chunk so far came from BPF_MAP_LOOKUP_BATCH.
    pub(super) fn used_batch(&self) -> bool {
        self.batch
    }

    fn next_batch(&mut self) -> Result<usize, SysError> {
        loop {
            let r = sys::map_lookup_batch(
                self.fd,
                self.started.then_some(self.token_in.as_slice()),
                &mut self.token_out,
                &mut self.keys,
                self.key_len,
                &mut self.values,
                self.value_len,
                self.chunk,
            );
            match r {
                Ok(r) => {
                    self.started = true;
                    self.done = r.done;
                    std::mem::swap(&mut self.token_in, &mut self.token_out);
                    if r.count > 0 || r.done {
                        return Ok(r.count as usize);
                    }
                }
                // One hash bucket holds more entries than a chunk.
                Err(e) if e.errno == Errno::ENOSPC && self.chunk < 1 << 20 => self.grow(),
                Err(e) => return Err(e),
            }
        }
    }

    fn next_each(&mut self) -> Result<usize, MigrateError> {
        let (kl, vl) = (self.key_len, self.value_len);
        let mut n = 0;
        let mut next = vec![0u8; kl];
        while n < self.chunk as usize {
            let more = sys::map_next_key(self.fd, self.last.as_deref(), &mut next)
                .map_err(self.err("get next key"))?;
            if !more {
                self.done = true;
                break;
            }
            let slot = &mut self.values[n * vl..(n + 1) * vl];
            // A key deleted since get_next_key is simply not copied.
            let found =
                sys::map_lookup(self.fd, &next, slot).map_err(|source| MigrateError::Sys {
                    map: self.map.into(),
                    what: "lookup",
                    source,
                })?;
            if found {
                self.keys[n * kl..(n + 1) * kl].copy_from_slice(&next);
                n += 1;
            }
            self.last = Some(next.clone());
        }
        Ok(n)
    }
}

/// Writes chunks, batched when possible.
pub(super) struct Writer<'a> {
    fd: BorrowedFd<'a>,
    map: &'a str,
    batch: bool,
    wrote_batch: bool,
    max_entries: u32,
}

impl<'a> Writer<'a> {
    /// A writer to `fd` (a map of `max_entries`), batched if `batch`.
    pub(super) fn new(fd: BorrowedFd<'a>, map: &'a str, batch: bool, max_entries: u32) -> Self {
        Self {
            fd,
            map,
            batch,
            wrote_batch: false,
            max_entries,
        }
    }

    /// Every chunk so far went through BPF_MAP_UPDATE_BATCH.
    pub(super) fn used_batch(&self) -> bool {
        self.batch
    }

    fn fail(&self, source: SysError, written: usize) -> MigrateError {
        match source.errno {
            // A hash map answers E2BIG when it is full.
            Errno::E2BIG => MigrateError::Full {
                map: self.map.into(),
                max_entries: self.max_entries,
                written,
            },
            Errno::EEXIST => MigrateError::KeyCollision {
                map: self.map.into(),
            },
            _ => MigrateError::Sys {
                map: self.map.into(),
                what: "update",
                source,
            },
        }
    }

    /// Writes `n` packed entries; `before` entries were written earlier
    /// (for the error report).
    pub(super) fn write(
        &mut self,
        keys: &[u8],
        kl: usize,
        values: &[u8],
        vl: usize,
        n: usize,
        before: usize,
    ) -> Result<(), MigrateError> {
        if self.batch && n > 0 {
            match sys::map_update_batch(self.fd, keys, kl, values, vl, n as u32, sys::BPF_ANY) {
                Ok(()) => {
                    self.wrote_batch = true;
                    return Ok(());
                }
                Err(e) if e.done == 0 && !self.wrote_batch && sys::batch_unsupported(&e.source) => {
                    tracing::debug!(map = self.map, error = %e, "no batch update; writing per element");
                    self.batch = false;
                }
                Err(e) => return Err(self.fail(e.source, before + e.done as usize)),
            }
        }
        for i in 0..n {
            sys::map_update(
                self.fd,
                &keys[i * kl..(i + 1) * kl],
                &values[i * vl..(i + 1) * vl],
                sys::BPF_ANY,
            )
            .map_err(|e| self.fail(e, before + i))?;
        }
        Ok(())
    }
}
