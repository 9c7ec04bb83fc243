//! Moving entries: the bulk pre-copy ([`copy_all`]), the journal tail
//! ([`replay`]) and reading a whole map ([`dump`], [`live_entries`]).

use std::collections::hash_map::{Entry, HashMap};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::convert::{Converter, Outcome};
use super::layout::MapLayout;
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

/// What a copy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries written (replay: keys written or deleted).
    pub entries: usize,
    /// Every read and write went through the batch syscalls.
    pub batch: bool,
    /// Wall time.
    pub duration: Duration,
}

/// Reads a map chunk by chunk, batched when possible.
struct Reader<'a> {
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
    fn new(
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

    /// The next chunk's entry count (0 at the end); entries sit in
    /// `self.keys` / `self.values`.
    fn next(&mut self) -> Result<usize, MigrateError> {
        if self.done {
            return Ok(0);
        }
        if self.batch {
            match self.next_batch() {
                Ok(n) => return Ok(n),
                Err(e) if !self.started && sys::batch_unsupported(&e) => {
                    tracing::debug!(map = self.map, error = %e, "no batch lookup; reading per element");
                    self.batch = false;
                }
                Err(e) => return Err(self.err("lookup batch")(e)),
            }
        }
        self.next_each()
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
struct Writer<'a> {
    fd: BorrowedFd<'a>,
    map: &'a str,
    batch: bool,
    wrote_batch: bool,
    max_entries: u32,
}

impl Writer<'_> {
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

    fn write(
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

/// Copies every entry of `old` into `new` through `conv`, batched where the
/// kernel allows ([`CopyOptions::default`]).
pub fn copy_all(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    conv: &Converter,
) -> Result<CopyStats, MigrateError> {
    copy_all_with(old, new, conv, &CopyOptions::default())
}

/// [`copy_all`] with explicit options.
pub fn copy_all_with(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    conv: &Converter,
    opts: &CopyOptions,
) -> Result<CopyStats, MigrateError> {
    let t0 = Instant::now();
    let map = conv.map();
    let info = sys::map_info(new).map_err(|source| MigrateError::Sys {
        map: map.into(),
        what: "map info",
        source,
    })?;
    let is_array = matches!(
        info.map_type,
        super::layout::MAP_ARRAY | super::layout::MAP_PERCPU_ARRAY
    );
    let (okl, ovl, nkl, nvl) = (
        conv.old_key_len(),
        conv.old_value_len(),
        conv.new_key_len(),
        conv.new_value_len(),
    );
    let mut reader = Reader::new(old, map, okl, ovl, opts);
    let mut writer = Writer {
        fd: new,
        map,
        batch: opts.batch == BatchMode::Auto,
        wrote_batch: false,
        max_entries: info.max_entries,
    };
    // Dropped key members could merge two entries: refuse instead. Batch
    // writes take no BPF_NOEXIST (EINVAL), so collisions are caught here, by
    // new key holding its old key (an old key read twice is no collision).
    let mut seen: Option<HashMap<Vec<u8>, Vec<u8>>> =
        (conv.lossy_key() && !is_array).then(HashMap::new);
    let mut nk = Vec::new();
    let mut nv = Vec::new();
    let mut entries = 0;
    loop {
        let n = reader.next()?;
        if n == 0 && reader.done {
            break;
        }
        nk.clear();
        nk.resize(n * nkl, 0);
        nv.clear();
        nv.resize(n * nvl, 0);
        let mut m = 0;
        for i in 0..n {
            let (k, v) = (
                &mut nk[m * nkl..(m + 1) * nkl],
                &mut nv[m * nvl..(m + 1) * nvl],
            );
            let ok = &reader.keys[i * okl..(i + 1) * okl];
            match conv.entry(ok, &reader.values[i * ovl..(i + 1) * ovl], k, v)? {
                Outcome::Write => {
                    if let Some(seen) = seen.as_mut() {
                        match seen.entry(k.to_vec()) {
                            Entry::Occupied(o) if o.get() != ok => {
                                return Err(MigrateError::KeyCollision { map: map.into() });
                            }
                            Entry::Occupied(_) => {}
                            Entry::Vacant(e) => {
                                e.insert(ok.to_vec());
                            }
                        }
                    }
                    m += 1;
                }
                Outcome::Skip => {
                    k.fill(0);
                    v.fill(0);
                }
            }
        }
        writer.write(&nk, nkl, &nv, nvl, m, entries)?;
        entries += m;
    }
    let stats = CopyStats {
        entries,
        batch: reader.batch && (writer.batch || entries == 0),
        duration: t0.elapsed(),
    };
    tracing::info!(
        map,
        entries,
        batch = stats.batch,
        ms = stats.duration.as_millis() as u64,
        "map copied"
    );
    Ok(stats)
}

/// Applies the journal tail: for every old-layout key written since the
/// pre-copy began, copies the old map's current entry into `new`, or deletes
/// the converted key from `new` when the old map no longer has it.
pub fn replay(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    conv: &Converter,
    old_keys: &[Vec<u8>],
) -> Result<CopyStats, MigrateError> {
    let t0 = Instant::now();
    let map = conv.map();
    let sys_err = |what: &'static str| {
        move |source| MigrateError::Sys {
            map: map.into(),
            what,
            source,
        }
    };
    let mut ov = vec![0u8; conv.old_value_len()];
    let mut nk = vec![0u8; conv.new_key_len()];
    let mut nv = vec![0u8; conv.new_value_len()];
    for key in old_keys {
        if key.len() != conv.old_key_len() {
            return Err(MigrateError::SizeMismatch {
                map: map.into(),
                detail: format!(
                    "journal key of {}B, the old map's keys are {}B",
                    key.len(),
                    conv.old_key_len()
                ),
            });
        }
        if sys::map_lookup(old, key, &mut ov).map_err(sys_err("lookup"))? {
            nk.fill(0);
            nv.fill(0);
            if conv.entry(key, &ov, &mut nk, &mut nv)? == Outcome::Write {
                sys::map_update(new, &nk, &nv, sys::BPF_ANY).map_err(sys_err("update"))?;
            }
        } else if conv.convert_key(key, &mut nk).is_ok() {
            // A key that does not convert was never copied: nothing to delete.
            sys::map_delete(new, &nk).map_err(sys_err("delete"))?;
        }
    }
    let stats = CopyStats {
        entries: old_keys.len(),
        batch: false,
        duration: t0.elapsed(),
    };
    tracing::info!(
        map,
        keys = old_keys.len(),
        us = stats.duration.as_micros() as u64,
        "journal replayed"
    );
    Ok(stats)
}

/// One entry as (key, value) bytes.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// Every entry of a map as (key, value) bytes (per-CPU values: all CPUs).
pub fn dump(fd: BorrowedFd<'_>, layout: &MapLayout) -> Result<Vec<RawEntry>, MigrateError> {
    dump_with(fd, layout, &CopyOptions::default())
}

/// [`dump`] with explicit options.
pub fn dump_with(
    fd: BorrowedFd<'_>,
    layout: &MapLayout,
    opts: &CopyOptions,
) -> Result<Vec<RawEntry>, MigrateError> {
    let (kl, vl) = (
        layout.key_size as usize,
        layout.value_stride(sys::possible_cpus()),
    );
    let mut reader = Reader::new(fd, &layout.name, kl, vl, opts);
    let mut out = Vec::new();
    loop {
        let n = reader.next()?;
        if n == 0 && reader.done {
            return Ok(out);
        }
        for i in 0..n {
            out.push((
                reader.keys[i * kl..(i + 1) * kl].to_vec(),
                reader.values[i * vl..(i + 1) * vl].to_vec(),
            ));
        }
    }
}

/// How many entries a new map needs room for: the key count of a hash map;
/// for an array, the highest non-zero slot + 1 (all-zero slots past a
/// smaller capacity lose nothing).
pub fn live_entries(fd: BorrowedFd<'_>, layout: &MapLayout) -> Result<usize, MigrateError> {
    let (kl, vl) = (
        layout.key_size as usize,
        layout.value_stride(sys::possible_cpus()),
    );
    let mut reader = Reader::new(fd, &layout.name, kl, vl, &CopyOptions::default());
    let mut live = 0;
    loop {
        let n = reader.next()?;
        if n == 0 && reader.done {
            return Ok(live);
        }
        if !layout.is_array() {
            live += n;
            continue;
        }
        for i in 0..n {
            if reader.values[i * vl..(i + 1) * vl].iter().any(|&b| b != 0) {
                let idx = match reader.keys[i * kl..(i + 1) * kl] {
                    [a, b, c, d] => u32::from_ne_bytes([a, b, c, d]),
                    _ => {
                        return Err(MigrateError::SizeMismatch {
                            map: layout.name.clone(),
                            detail: format!("array key of {kl}B"),
                        })
                    }
                };
                live = live.max(idx as usize + 1);
            }
        }
    }
}
