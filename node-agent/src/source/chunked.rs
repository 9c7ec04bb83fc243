//! Incremental parsing of the services file. A writer that changes one
//! service rewrites the whole file, and a full parse of 10 000 services of
//! 10 endpoints (4 MB) costs 120-150 ms of CPU, in every agent polling it.
//! So the common layout, a top-level `services:` block sequence, is cut
//! into its items at line boundaries, each item's text is looked up in a
//! cache of the items parsed before, and only new or changed items are
//! parsed: each run of them as the document `services:\n` + their text.
//!
//! The result must be exactly the full parse's, errors included. So the cut
//! is made only where the layout leaves no doubt about where items start
//! ([`layout::split`]), and anything else is parsed whole: another layout,
//! more items than the service map holds, a header or a run of items that
//! does not read as one service per item (every error message and line is
//! then the full parser's). Why a run reads as the same services as in the
//! file: each entry of the top-level sequence starts a line at column I
//! with `- `, so when a run of k such lines reads as k services, each of
//! them starts an entry (not, say, a line inside a quoted scalar), the
//! parser is in the same state at each (a block sequence at column I,
//! expecting an entry: the item before ended, all of it indented deeper
//! than I), and each service comes from its own item's lines. The blank
//! and comment lines between items stay with the item before them, so a
//! block scalar that keeps its trailing blank lines (`|+`) sees the same
//! lines. The assembled state is validated whole, by a `Validator` that
//! checks each service's own rules once per `Arc` (an unchanged item is
//! the same `Arc`) and the rules across services every time, so its
//! problems are the full parse's; a problem's line comes from its item
//! read alone again, shifted to where the item is.

mod cache;
mod layout;

use std::ops::Range;
use std::sync::Arc;

use super::file::{self, SourceError};
use super::reader::{self, ServiceLines};
use crate::model::{Capacity, DesiredState, ServiceSpec, Validator};

/// Why a file was parsed whole instead of item by item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Full {
    /// Not the simple block layout (flow style, other keys, tabs, …).
    Layout,
    /// More items than the service map holds.
    TooMany,
    /// The header, or a run of new items, did not read as one service
    /// per item (the file has an error, or an odd shape).
    Piece,
}

/// What the last [`Chunked::parse`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Items the file was cut into.
    pub items: usize,
    /// Items parsed (not found in the cache).
    pub parsed: usize,
    /// Why the whole file was parsed, when it was.
    pub full: Option<Full>,
    /// Items kept for the next parse (at most the file's items).
    pub cached: usize,
}

/// A services-file parser that reuses the items unchanged since its last
/// parse; its results equal [`file::parse`]'s.
#[derive(Debug)]
pub struct Chunked {
    /// Items of the last parse (at most as many as the last file had).
    cache: cache::Cache,
    /// The last header that parsed alone and its `services` key's line.
    header: Option<(Box<str>, usize)>,
    /// Checks a service's own rules once per `Arc`: the unchanged services
    /// are the same `Arc`s, so only the changed ones and the rules across
    /// services (names, VIPs, capacities) cost anything.
    validator: Validator,
    stats: Stats,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            cache: cache::Cache::default(),
            header: None,
            validator: Validator::new(),
            stats: Stats::default(),
        }
    }
}

/// The prefix that makes an item a document of its own.
const ITEM_DOC: &str = "services:\n";

/// Characters the cut could count lines differently from libyaml (other
/// line breaks) or that only mean something at the stream's start (BOM).
const ODD: [char; 5] = ['\r', '\u{85}', '\u{2028}', '\u{2029}', '\u{feff}'];

impl Chunked {
    /// A parser with nothing cached.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the last parse did.
    pub fn stats(&self) -> Stats {
        Stats {
            cached: self.cache.len(),
            ..self.stats
        }
    }

    /// [`file::parse_bytes`], reusing the items parsed before.
    pub fn parse_bytes(
        &mut self,
        file: &str,
        bytes: &[u8],
        cap: &Capacity,
    ) -> Result<DesiredState, SourceError> {
        let text = file::utf8(file, bytes);
        self.parse(file, text?, cap)
    }

    /// [`file::parse`], reusing the items parsed before.
    pub fn parse(
        &mut self,
        file: &str,
        text: &str,
        cap: &Capacity,
    ) -> Result<DesiredState, SourceError> {
        let max = usize::try_from(cap.services).unwrap_or(usize::MAX);
        self.stats = Stats::default();
        let pieces = match layout::split(text, max) {
            Ok(p) => p,
            Err(why) => {
                if why == Full::Layout {
                    // Another layout: keep no memory for one that may not
                    // come back.
                    self.cache.clear();
                }
                return self.full(why, file, text, cap);
            }
        };
        self.stats.items = pieces.items.len();
        let Some(key) = self.header(&text[..pieces.header]) else {
            return self.full(Full::Piece, file, text, cap);
        };
        let Some(state) = self.assemble(text, &pieces.items) else {
            return self.full(Full::Piece, file, text, cap);
        };
        file::validated(file, state, cap, &mut self.validator, |path| {
            reader::line_of(path, key, |i| {
                // Read again for its lines (it was read alone before, so it
                // is again): only for the few problems listed.
                let (at, first) = pieces.items.get(i)?;
                let lines = item_lines(text.get(at.clone())?)?;
                // The item's document starts it on line 2 (index 1).
                Some((lines, first.checked_sub(1)?))
            })
        })
    }

    fn full(
        &mut self,
        why: Full,
        file: &str,
        text: &str,
        cap: &Capacity,
    ) -> Result<DesiredState, SourceError> {
        self.stats.full = Some(why);
        file::parse(file, text, cap)
    }

    /// The `services` key's line when the header is valid: parsed with an
    /// empty list after it, so what it holds (comments) is checked by the
    /// parser itself (a control character is an error anywhere).
    fn header(&mut self, header: &str) -> Option<usize> {
        if let Some((h, line)) = &self.header {
            if **h == *header {
                return Some(*line);
            }
        }
        if header.contains(ODD) {
            return None;
        }
        let (state, lines) = reader::read(&format!("{header}  []\n"), 0).ok()?;
        if !state.services.is_empty() {
            return None;
        }
        let line = lines.services_key();
        self.header = Some((header.into(), line));
        Some(line)
    }

    /// The state from the cached and newly parsed items; `None` when the
    /// new items do not read as one service each. Entries of items no
    /// longer in the file are evicted either way.
    fn assemble(&mut self, text: &str, items: &[(Range<usize>, usize)]) -> Option<DesiredState> {
        self.cache.begin();
        // Each item's entry, or the hash to store it under once parsed.
        let found: Vec<Result<usize, u64>> = items
            .iter()
            .map(|(at, _)| self.cache.get(text, at.clone()))
            .collect();
        self.cache
            .reserve(found.iter().filter(|f| f.is_err()).count());
        let mut ids = Vec::with_capacity(items.len());
        let mut ok = true;
        let mut k = 0;
        while ok && k < items.len() {
            if let Ok(id) = found[k] {
                ids.push(id);
                k += 1;
                continue;
            }
            // A run of new items is read as one document: one parser for
            // all the items of a first parse, not one per item.
            let end = (k..items.len())
                .find(|&j| found[j].is_ok())
                .unwrap_or(items.len());
            let run = items[k].0.start..items[end - 1].0.end;
            match parse_run(&text[run], end - k) {
                Some(specs) => {
                    self.stats.parsed += specs.len();
                    for (j, spec) in (k..end).zip(specs) {
                        let hash = found[j].err().unwrap_or_default();
                        ids.push(self.cache.insert(items[j].0.clone(), hash, spec));
                    }
                }
                None => ok = false,
            }
            k = end;
        }
        self.cache.end(text);
        if !ok {
            return None;
        }
        let services = ids
            .iter()
            .map(|&id| Some(self.cache.entry(id)?.spec.clone()));
        Some(DesiredState {
            services: services.collect::<Option<_>>()?,
        })
    }
}

/// A run of items read as the document `services:\n` + their text: their
/// services, or `None` unless there is exactly one per item (a line `- ` at
/// column I inside a quoted scalar starts no service: the count tells).
fn parse_run(run: &str, items: usize) -> Option<Vec<Arc<ServiceSpec>>> {
    if run.contains(ODD) {
        return None;
    }
    let mut doc = String::with_capacity(ITEM_DOC.len() + run.len());
    doc.push_str(ITEM_DOC);
    doc.push_str(run);
    let (state, _) = reader::read(&doc, items).ok()?;
    (state.services.len() == items).then_some(state.services)
}

/// An item's lines, read alone (its document starts it on line 2).
fn item_lines(item: &str) -> Option<ServiceLines> {
    let (_, lines) = reader::read(&format!("{ITEM_DOC}{item}"), 1).ok()?;
    let mut lines = lines.into_services();
    let one = lines.pop();
    one.filter(|_| lines.is_empty())
}

#[cfg(test)]
mod tests;
