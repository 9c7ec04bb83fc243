//! One map: an owned fd plus the kernel's description of it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use baton_ebpf::{MapPod, MapSpec};

use super::Journal;
use crate::sys::{self, MapInfo, SysError};

/// Errors using a map.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// A syscall on the map failed.
    #[error("map {map}: {source}")]
    Sys {
        /// Map name.
        map: String,
        /// Cause.
        source: SysError,
    },
    /// The kernel map does not have the layout this build expects.
    #[error("map {map}: kernel has {found}, this build expects {expected}")]
    Layout {
        /// Map name.
        map: String,
        /// What the kernel reports.
        found: String,
        /// What this build wants.
        expected: String,
    },
}

/// A map fd with its name and kernel info.
#[derive(Debug)]
pub struct MapHandle {
    name: &'static str,
    fd: OwnedFd,
    info: MapInfo,
    journal: Arc<Journal>,
}

fn describe(t: u32, k: u32, v: u32, n: u32) -> String {
    format!("type {t} key {k}B value {v}B max_entries {n}")
}

impl MapHandle {
    /// Wraps `fd`, checking the kernel map matches `spec` (type, key and value size).
    pub fn open(spec: &MapSpec, fd: OwnedFd) -> Result<Self, MapError> {
        let info = sys::map_info(fd.as_fd()).map_err(|source| MapError::Sys {
            map: spec.name.into(),
            source,
        })?;
        if info.map_type != spec.kind as u32
            || info.key_size != spec.key_size
            || info.value_size != spec.value_size
        {
            return Err(MapError::Layout {
                map: spec.name.into(),
                found: describe(
                    info.map_type,
                    info.key_size,
                    info.value_size,
                    info.max_entries,
                ),
                expected: describe(
                    spec.kind as u32,
                    spec.key_size,
                    spec.value_size,
                    spec.max_entries,
                ),
            });
        }
        Ok(Self {
            name: spec.name,
            fd,
            info,
            journal: Arc::default(),
        })
    }

    /// Map name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Kernel info captured when opened.
    pub fn info(&self) -> &MapInfo {
        &self.info
    }

    /// Capacity.
    pub fn max_entries(&self) -> u32 {
        self.info.max_entries
    }

    /// The raw descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn err(&self, source: SysError) -> MapError {
        MapError::Sys {
            map: self.name.into(),
            source,
        }
    }

    /// Reads one value.
    pub fn get<K: MapPod, V: MapPod>(&self, key: &K) -> Result<Option<V>, MapError> {
        let mut v = V::default();
        match sys::map_lookup(self.fd(), key.as_bytes(), v.as_bytes_mut()) {
            Ok(true) => Ok(Some(v)),
            Ok(false) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Shares `journal` with this handle (every write is recorded while it is on).
    pub fn set_journal(&mut self, journal: Arc<Journal>) {
        self.journal = journal;
    }

    /// Writes one value (create or overwrite).
    pub fn put<K: MapPod, V: MapPod>(&self, key: &K, value: &V) -> Result<(), MapError> {
        // Recorded before the write: a key in the journal is re-read by the
        // successor, so recording one that then fails to change costs nothing.
        self.journal.record(self.name, key.as_bytes());
        sys::map_update(self.fd(), key.as_bytes(), value.as_bytes(), sys::BPF_ANY)
            .map_err(|e| self.err(e))
    }

    /// Deletes one key; `false` when it was absent.
    pub fn delete<K: MapPod>(&self, key: &K) -> Result<bool, MapError> {
        self.journal.record(self.name, key.as_bytes());
        sys::map_delete(self.fd(), key.as_bytes()).map_err(|e| self.err(e))
    }

    /// All keys. A hash map being written concurrently may skip or repeat keys.
    pub fn keys<K: MapPod>(&self) -> Result<Vec<K>, MapError> {
        let mut out = Vec::new();
        let mut cur: Option<K> = None;
        loop {
            let mut next = K::default();
            let found = sys::map_next_key(
                self.fd(),
                cur.as_ref().map(|k| k.as_bytes()),
                next.as_bytes_mut(),
            )
            .map_err(|e| self.err(e))?;
            if !found {
                return Ok(out);
            }
            out.push(next);
            cur = Some(next);
        }
    }

    /// All entries. Read with `BPF_MAP_LOOKUP_BATCH` where the kernel has it
    /// (one syscall per 8 192 entries instead of two per entry: at 220 000
    /// entries that is the difference between milliseconds and most of a
    /// second), per element otherwise. Of a hash map written concurrently,
    /// every key not written meanwhile is read exactly once: the kernel reads
    /// whole buckets and resumes at the next bucket, and a key never moves to
    /// another bucket.
    pub fn entries<K: MapPod, V: MapPod>(&self) -> Result<Vec<(K, V)>, MapError> {
        match self.entries_batch::<K, V>() {
            Ok(Some(out)) => Ok(out),
            Ok(None) => self.entries_each(),
            Err(e) => Err(self.err(e)),
        }
    }

    /// [`Self::entries`] through the batch syscall; `None` when the kernel
    /// has no batch lookup for this map.
    fn entries_batch<K: MapPod, V: MapPod>(&self) -> Result<Option<Vec<(K, V)>>, SysError> {
        let (kl, vl) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
        let mut chunk: u32 = 8192;
        let tok = sys::batch_token_len(kl);
        let (mut tin, mut tout) = (vec![0u8; tok], vec![0u8; tok]);
        let mut keys = vec![0u8; chunk as usize * kl];
        let mut values = vec![0u8; chunk as usize * vl];
        let mut out = Vec::new();
        let mut started = false;
        loop {
            let r = sys::map_lookup_batch(
                self.fd(),
                started.then_some(tin.as_slice()),
                &mut tout,
                &mut keys,
                kl,
                &mut values,
                vl,
                chunk,
            );
            let r = match r {
                Ok(r) => r,
                Err(e) if !started && sys::batch_unsupported(&e) => return Ok(None),
                // One hash bucket holds more entries than a chunk.
                Err(e) if e.errno == nix::errno::Errno::ENOSPC && chunk < 1 << 20 => {
                    chunk *= 2;
                    keys.resize(chunk as usize * kl, 0);
                    values.resize(chunk as usize * vl, 0);
                    continue;
                }
                Err(e) => return Err(e),
            };
            started = true;
            std::mem::swap(&mut tin, &mut tout);
            for i in 0..r.count as usize {
                let (mut k, mut v) = (K::default(), V::default());
                k.as_bytes_mut()
                    .copy_from_slice(&keys[i * kl..(i + 1) * kl]);
                v.as_bytes_mut()
                    .copy_from_slice(&values[i * vl..(i + 1) * vl]);
                out.push((k, v));
            }
            if r.done {
                return Ok(Some(out));
            }
        }
    }

    /// [`Self::entries`] per element (keys then values; entries deleted in
    /// between are skipped).
    fn entries_each<K: MapPod, V: MapPod>(&self) -> Result<Vec<(K, V)>, MapError> {
        let keys = self.keys::<K>()?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = self.get::<K, V>(&k)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// Sum over CPUs of a per-CPU u64 slot.
    pub fn percpu_sum(&self, slot: u32, cpus: usize) -> Result<u64, MapError> {
        let mut buf = vec![0u8; 8 * cpus];
        sys::map_lookup(self.fd(), &slot.to_ne_bytes(), &mut buf).map_err(|e| self.err(e))?;
        Ok(buf
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .sum())
    }
}
