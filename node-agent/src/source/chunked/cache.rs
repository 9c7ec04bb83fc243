//! Parsed items by their text. An item is found by the foldhash of its text
//! and confirmed by comparing the text with where that item was: the last
//! file's text is kept whole (one buffer, read in order, instead of an
//! allocation per item read in hash order: at 10 000 items the lookups
//! went from ~2.5 ms to ~0.7 ms with cold caches). A pass over a new
//! file's items evicts what it did not see, so the cache never holds more
//! items than the last file had.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::Arc;

use crate::model::ServiceSpec;

/// One parsed item.
#[derive(Debug)]
pub(super) struct Entry {
    /// The service, shared with the states built from it (an unchanged
    /// service is the same `Arc`, which the validator and the programmer
    /// skip). Its lines are not kept (a third of the memory, for the rare
    /// invalid file): the item is read again to place a problem.
    pub spec: Arc<ServiceSpec>,
    /// Where the item's text is: in the pass's text once `seen` is the
    /// current pass, else in the last pass's.
    at: Range<usize>,
    hash: u64,
    seen: u64,
}

/// Parsed items, reused across passes over successive texts.
#[derive(Debug, Default)]
pub(super) struct Cache {
    /// The text of the last pass, where the entries' items are.
    text: String,
    /// Entries by id; `None`: free.
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    /// Entry id by the hash of its item's text.
    index: HashMap<u64, usize, foldhash::fast::RandomState>,
    hasher: foldhash::fast::RandomState,
    /// Number of the current pass.
    pass: u64,
}

impl Cache {
    /// Starts a pass over a new text's items.
    pub fn begin(&mut self) {
        self.pass += 1;
    }

    /// Makes room for `new` entries: exactly, so the slots are not doubled
    /// (a first parse of 10 000 items would keep room for 16 384).
    pub fn reserve(&mut self, new: usize) {
        self.entries
            .reserve_exact(new.saturating_sub(self.free.len()));
    }

    /// The entry of the item `text[at]`, or the hash to store it under.
    pub fn get(&mut self, text: &str, at: Range<usize>) -> Result<usize, u64> {
        let item = text.get(at.clone()).unwrap_or_default();
        let hash = self.hasher.hash_one(item);
        let Some(&id) = self.index.get(&hash) else {
            return Err(hash);
        };
        let Some(Some(e)) = self.entries.get_mut(id) else {
            return Err(hash);
        };
        let was = if e.seen == self.pass {
            text
        } else {
            &self.text
        };
        if was.get(e.at.clone()) != Some(item) {
            // Another text with the same hash.
            return Err(hash);
        }
        e.at = at;
        e.seen = self.pass;
        Ok(id)
    }

    /// Stores an item parsed in this pass, found at `text[at]`.
    pub fn insert(&mut self, at: Range<usize>, hash: u64, spec: Arc<ServiceSpec>) -> usize {
        let seen = self.pass;
        let e = Some(Entry {
            spec,
            at,
            hash,
            seen,
        });
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.entries.get_mut(id) {
                    *slot = e;
                }
                id
            }
            None => {
                self.entries.push(e);
                self.entries.len() - 1
            }
        };
        // Replaces an entry with the same hash and another text: that one
        // is evicted when a pass no longer sees it (it can't be found now).
        self.index.insert(hash, id);
        id
    }

    /// The entry `id`.
    pub fn entry(&self, id: usize) -> Option<&Entry> {
        self.entries.get(id)?.as_ref()
    }

    /// Ends the pass over `text`: what it did not see is evicted, and its
    /// text is where the entries are now.
    pub fn end(&mut self, text: &str) {
        for (id, slot) in self.entries.iter_mut().enumerate() {
            let Some(e) = slot.take_if(|e| e.seen != self.pass) else {
                continue;
            };
            if self.index.get(&e.hash) == Some(&id) {
                self.index.remove(&e.hash);
            }
            self.free.push(id);
        }
        self.text.clear();
        if self.text.capacity() < text.len() {
            // With 1/16 to spare, not doubled (a file one byte larger would
            // double a 4 MB copy) nor exact (every edit that adds a byte
            // would move it, and fault in fresh pages).
            self.text.reserve_exact(text.len() + text.len() / 16);
        }
        self.text.push_str(text);
    }

    /// Drops every entry and the text.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }
}
