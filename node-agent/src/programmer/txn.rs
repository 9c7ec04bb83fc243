//! A map transaction: every write records how to undo it, from the agent's own
//! view of the maps (no extra lookups), so a failure half way is rolled back
//! in reverse order, passing through the same invariant-keeping states.

use baton_ebpf::MapPod;
use nix::errno::Errno;

use crate::maps::{MapError, MapHandle};
use crate::sys::SysError;

/// Test hook: fail the n-th map write of the next transactions with an errno.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultPlan {
    /// 0-based index of the write to fail, counted across transactions.
    pub fail_write: Option<u64>,
    /// errno to report.
    pub errno: Option<Errno>,
    writes: u64,
}

impl FaultPlan {
    /// Fails write number `n` (0-based) with `errno`.
    pub fn fail_at(n: u64, errno: Errno) -> Self {
        Self {
            fail_write: Some(n),
            errno: Some(errno),
            writes: 0,
        }
    }

    /// Writes attempted so far under this plan.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    fn check(&mut self, map: &MapHandle, op: &'static str) -> Result<(), MapError> {
        let n = self.writes;
        self.writes += 1;
        if self.fail_write == Some(n) {
            let errno = self.errno.unwrap_or(Errno::ENOMEM);
            return Err(MapError::Sys {
                map: map.name().into(),
                source: SysError { op, errno },
            });
        }
        Ok(())
    }
}

enum Undo<'m> {
    /// Restore `prev` (or delete when `None`).
    Restore {
        map: &'m MapHandle,
        key: Vec<u8>,
        prev: Option<Vec<u8>>,
    },
}

/// An open transaction over the datapath maps.
pub struct Txn<'m, 'f> {
    undo: Vec<Undo<'m>>,
    faults: &'f mut FaultPlan,
    writes: usize,
}

impl<'m, 'f> Txn<'m, 'f> {
    /// Starts a transaction.
    pub fn new(faults: &'f mut FaultPlan) -> Self {
        Self {
            undo: Vec::new(),
            faults,
            writes: 0,
        }
    }

    /// Writes `key` → `value`; `prev` is what the agent knows is there now.
    pub fn put<K: MapPod, V: MapPod>(
        &mut self,
        map: &'m MapHandle,
        key: &K,
        value: &V,
        prev: Option<&V>,
    ) -> Result<(), MapError> {
        self.faults.check(map, "map_update_elem")?;
        map.put(key, value)?;
        self.writes += 1;
        self.undo.push(Undo::Restore {
            map,
            key: key.as_bytes().to_vec(),
            prev: prev.map(|p| p.as_bytes().to_vec()),
        });
        Ok(())
    }

    /// Deletes `key`, whose current value is `prev`.
    pub fn delete<K: MapPod, V: MapPod>(
        &mut self,
        map: &'m MapHandle,
        key: &K,
        prev: &V,
    ) -> Result<(), MapError> {
        self.faults.check(map, "map_delete_elem")?;
        map.delete(key)?;
        self.writes += 1;
        self.undo.push(Undo::Restore {
            map,
            key: key.as_bytes().to_vec(),
            prev: Some(prev.as_bytes().to_vec()),
        });
        Ok(())
    }

    /// Map writes done so far.
    pub fn writes(&self) -> usize {
        self.writes
    }

    /// Keeps every write.
    pub fn commit(self) -> usize {
        self.writes
    }

    /// Undoes every write in reverse order. Returns the first undo failure;
    /// the caller must then treat its view of the maps as unknown.
    pub fn rollback(self) -> Result<usize, MapError> {
        let n = self.undo.len();
        let mut first_err = None;
        for u in self.undo.into_iter().rev() {
            let Undo::Restore { map, key, prev } = u;
            let r = match prev {
                Some(v) => {
                    crate::sys::map_update(map.fd(), &key, &v, crate::sys::BPF_ANY).map(|_| ())
                }
                None => crate::sys::map_delete(map.fd(), &key).map(|_| ()),
            };
            if let Err(source) = r {
                first_err.get_or_insert(MapError::Sys {
                    map: map.name().into(),
                    source,
                });
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }
}
