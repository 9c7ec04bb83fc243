//! Moving entries: the bulk pre-copy ([`copy_all`]), the journal tail
//! ([`replay`]) and reading a whole map ([`dump`], [`live_entries`]).

use std::collections::hash_map::{Entry, HashMap};
use std::os::fd::BorrowedFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::convert::{Converter, Outcome};
use super::io::{BatchMode, CopyOptions, Reader, Writer};
use super::layout::MapLayout;
use super::MigrateError;
use crate::sys;

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

/// Copies every entry of `old` into `new` through `conv`, batched where the
/// kernel allows ([`CopyOptions::default`]).
pub fn copy_all(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    conv: &Converter,
) -> Result<CopyStats, MigrateError> {
    copy_all_with(old, new, conv, &CopyOptions::default())
}

/// Converted entries on their way from the reading to the writing thread.
#[derive(Default)]
struct Chunk {
    keys: Vec<u8>,
    values: Vec<u8>,
    n: usize,
}

/// [`copy_all`] with explicit options. Reading + converting and writing run
/// on two threads (chunk by chunk, in order): the two kernel halves cost
/// about the same, so overlapping them nearly halves the copy.
pub fn copy_all_with(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    conv: &Converter,
    opts: &CopyOptions,
) -> Result<CopyStats, MigrateError> {
    copy_up_to(old, new, conv, opts, None)
}

/// Copies the first `limit` entries of `old` (in the kernel's iteration
/// order) into `new` exactly as [`copy_all`] would, in chunks of at most
/// `limit / 4`: a sample of the real copy, to measure its rate. `old` is
/// only read.
pub fn copy_sample(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    conv: &Converter,
    limit: usize,
) -> Result<CopyStats, MigrateError> {
    let defaults = CopyOptions::default();
    // Several chunks, so that reading and writing overlap as in a full copy.
    let chunk = u32::try_from(limit.div_ceil(4)).unwrap_or(u32::MAX);
    let opts = CopyOptions {
        chunk: chunk.clamp(1, defaults.chunk),
        ..defaults
    };
    copy_up_to(old, new, conv, &opts, Some(limit))
}

/// Reads and converts every entry of `old` as [`copy_all`] would (the same
/// checks: values that do not fit, colliding keys, array slots past the new
/// capacity) and writes nothing. `entries` is what a copy would write.
pub fn convert_all(old: BorrowedFd<'_>, conv: &Converter) -> Result<CopyStats, MigrateError> {
    let t0 = Instant::now();
    let opts = CopyOptions::default();
    let (entries, batch) = pump(old, conv, &opts, conv.is_array(), None, |_, _| Ok(()))?;
    Ok(CopyStats {
        entries,
        batch,
        duration: t0.elapsed(),
    })
}

fn copy_up_to(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    conv: &Converter,
    opts: &CopyOptions,
    limit: Option<usize>,
) -> Result<CopyStats, MigrateError> {
    let t0 = Instant::now();
    let map = conv.map();
    let info = sys::map_info(new).map_err(|source| MigrateError::Sys {
        map: map.into(),
        what: "map info",
        source,
    })?;
    let batch = opts.batch == BatchMode::Auto;
    let mut writer = Writer::new(new, map, batch, info.max_entries);
    let is_array = matches!(
        info.map_type,
        super::layout::MAP_ARRAY | super::layout::MAP_PERCPU_ARRAY
    );
    let (kl, vl) = (conv.new_key_len(), conv.new_value_len());
    let (entries, read_batch) = pump(old, conv, opts, is_array, limit, |c, written| {
        writer.write(&c.keys, kl, &c.values, vl, c.n, written)
    })?;
    let stats = CopyStats {
        entries,
        batch: read_batch && (writer.used_batch() || entries == 0),
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

/// Reads and converts `old` on one thread and hands each converted chunk to
/// `sink` on this one (with the entries sunk before it); stops after
/// `limit` entries if given. Returns the entries sunk and whether every read
/// was batched.
fn pump(
    old: BorrowedFd<'_>,
    conv: &Converter,
    opts: &CopyOptions,
    is_array: bool,
    limit: Option<usize>,
    mut sink: impl FnMut(&Chunk, usize) -> Result<(), MigrateError>,
) -> Result<(usize, bool), MigrateError> {
    let (full_tx, full_rx) = mpsc::sync_channel::<Chunk>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Chunk>();
    std::thread::scope(|s| {
        let producer =
            s.spawn(move || produce(old, conv, opts, is_array, limit, &full_tx, &empty_rx));
        let mut written = 0;
        let mut result = Ok(());
        for c in full_rx.iter() {
            if let Err(e) = sink(&c, written) {
                result = Err(e);
                break;
            }
            written += c.n;
            // The producer may be gone (it failed): then the buffer just drops.
            let _ = empty_tx.send(c);
        }
        // Dropping the receiver stops a producer blocked on a full channel.
        drop(full_rx);
        let read = match producer.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        // A read error explains a short write stream; report it first.
        let read_batch = read?;
        result.map(|()| (written, read_batch))
    })
}

/// Reads `old` and sends converted chunks until the end, `limit` entries
/// read, or the writer hanging up; returns whether every read was batched.
fn produce(
    old: BorrowedFd<'_>,
    conv: &Converter,
    opts: &CopyOptions,
    is_array: bool,
    limit: Option<usize>,
    full: &mpsc::SyncSender<Chunk>,
    empty: &mpsc::Receiver<Chunk>,
) -> Result<bool, MigrateError> {
    let map = conv.map();
    let (nkl, nvl) = (conv.new_key_len(), conv.new_value_len());
    let mut reader = Reader::new(old, map, conv.old_key_len(), conv.old_value_len(), opts);
    let mut left = limit.unwrap_or(usize::MAX);
    // Dropped key members could merge two entries: refuse instead. Batch
    // writes take no BPF_NOEXIST (EINVAL), so collisions are caught here, by
    // new key holding its old key (an old key read twice is no collision).
    let mut seen: Option<HashMap<Vec<u8>, Vec<u8>>> =
        (conv.lossy_key() && !is_array).then(HashMap::new);
    while left > 0 {
        let Some(n) = reader.next()? else {
            break;
        };
        let n = n.min(left);
        left -= n;
        let mut c = empty.try_recv().unwrap_or_default();
        c.keys.clear();
        c.keys.resize(n * nkl, 0);
        c.values.clear();
        c.values.resize(n * nvl, 0);
        let mut m = 0;
        for i in 0..n {
            let (ok, ov) = reader.entry(i);
            let k = &mut c.keys[m * nkl..(m + 1) * nkl];
            let v = &mut c.values[m * nvl..(m + 1) * nvl];
            match conv.entry(ok, ov, k, v)? {
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
        c.n = m;
        if full.send(c).is_err() {
            // The writer failed and reports why.
            break;
        }
    }
    Ok(reader.used_batch())
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
    let vl = layout.value_stride(sys::possible_cpus());
    let mut reader = Reader::new(fd, &layout.name, layout.key_size as usize, vl, opts);
    let mut out = Vec::new();
    while let Some(n) = reader.next()? {
        for i in 0..n {
            let (k, v) = reader.entry(i);
            out.push((k.to_vec(), v.to_vec()));
        }
    }
    Ok(out)
}

/// How many entries a new map needs room for: the key count of a hash map;
/// for an array, the highest non-zero slot + 1 (all-zero slots past a
/// smaller capacity lose nothing).
pub fn live_entries(fd: BorrowedFd<'_>, layout: &MapLayout) -> Result<usize, MigrateError> {
    let vl = layout.value_stride(sys::possible_cpus());
    let opts = CopyOptions::default();
    let mut reader = Reader::new(fd, &layout.name, layout.key_size as usize, vl, &opts);
    let mut live = 0;
    while let Some(n) = reader.next()? {
        if !layout.is_array() {
            live += n;
            continue;
        }
        for i in 0..n {
            let (k, v) = reader.entry(i);
            if v.iter().any(|&b| b != 0) {
                let idx = match *k {
                    [a, b, c, d] => u32::from_ne_bytes([a, b, c, d]),
                    _ => {
                        return Err(MigrateError::SizeMismatch {
                            map: layout.name.clone(),
                            detail: format!("array key of {}B", k.len()),
                        })
                    }
                };
                live = live.max(idx as usize + 1);
            }
        }
    }
    Ok(live)
}
