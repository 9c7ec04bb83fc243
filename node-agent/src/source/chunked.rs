//! Incremental parsing of the services file. A writer that changes one
//! service rewrites the whole file, and a full parse of 10 000 services of
//! 10 endpoints (4 MB) costs ~150 ms of CPU, once per agent polling it. So
//! the common layout, a top-level `services:` block sequence, is cut into its
//! items at line boundaries, each item's text is looked up in a cache of
//! items already parsed, and only the new or changed ones go through the
//! parser, each alone as the document `services:\n` + item.
//!
//! The result must be exactly the full parse's, errors included, so the
//! cut is made only when the layout leaves no doubt where items start (see
//! [`layout::split`]), and anything else falls back to the full parse: another
//! layout, more items than the service map holds, an item or the header
//! that does not parse alone (every error message and line is then the
//! full parser's). Why an item parses alone as it does in the file: a line
//! `- ` at the sequence's column I ends every block node and plain scalar
//! of the item before it (all indented deeper than I), and what can run on
//! past it, a quoted scalar or a flow collection, would be unterminated in
//! that item's own document, which then fails. The lines between items
//! (blank, comments) stay with the item before them, so a block scalar that
//! keeps its trailing blank lines (`|+`) sees the same lines alone.
//! Validation runs on the assembled state as in the full parse, its
//! problems placed with each item's lines shifted to where the item is.

mod cache;
mod layout;

use std::ops::Range;

use super::file::{self, SourceError};
use super::reader::{self, ServiceLines};
use crate::model::{Capacity, DesiredState, ServiceSpec};

/// Why a file was parsed whole instead of item by item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Full {
    /// Not the simple block layout (flow style, other keys, tabs, …).
    Layout,
    /// More items than the service map holds.
    TooMany,
    /// The header or an item did not parse alone (the file has an error).
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
#[derive(Debug, Default)]
pub struct Chunked {
    /// Items of the last parse (at most as many as the last file had).
    cache: cache::Cache,
    /// The last header that parsed alone and its `services` key's line.
    header: Option<(Box<str>, usize)>,
    stats: Stats,
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
        let Some((state, ids)) = self.assemble(text, &pieces.items) else {
            return self.full(Full::Piece, file, text, cap);
        };
        let cache = &self.cache;
        file::validated(file, state, cap, |path| {
            reader::line_of(path, key, |i| {
                let lines = &cache.entry(*ids.get(i)?)?.lines;
                // The item's document starts it on line 2 (index 1).
                Some((lines, pieces.items.get(i)?.1.checked_sub(1)?))
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

    /// The state from the cached and newly parsed items, and each item's
    /// cache entry; `None` when an item does not parse alone. Entries of
    /// items no longer in the file are evicted either way.
    fn assemble(
        &mut self,
        text: &str,
        items: &[(Range<usize>, usize)],
    ) -> Option<(DesiredState, Vec<usize>)> {
        self.cache.begin();
        let mut services = Vec::with_capacity(items.len());
        let mut ids = Vec::with_capacity(items.len());
        let mut failed = false;
        for (at, _) in items {
            let id = match self.cache.get(text, at.clone()) {
                Ok(id) => id,
                // After a failure the file is parsed whole anyway: the
                // items left are not parsed now (the next parse will), only
                // kept in the cache when they are there.
                Err(_) if failed => continue,
                Err(hash) => match parse_item(&text[at.clone()]) {
                    Some((spec, lines)) => {
                        self.stats.parsed += 1;
                        self.cache.insert(at.clone(), hash, spec, lines)
                    }
                    None => {
                        failed = true;
                        continue;
                    }
                },
            };
            match self.cache.entry(id) {
                Some(e) if !failed => services.push(e.spec.clone()),
                Some(_) => {}
                None => failed = true,
            }
            ids.push(id);
        }
        self.cache.end(text);
        (!failed).then_some((DesiredState { services }, ids))
    }
}

/// One item parsed alone: exactly one service, or `None`.
fn parse_item(item: &str) -> Option<(ServiceSpec, ServiceLines)> {
    if item.contains(ODD) {
        return None;
    }
    let mut doc = String::with_capacity(ITEM_DOC.len() + item.len());
    doc.push_str(ITEM_DOC);
    doc.push_str(item);
    let (state, lines) = reader::read(&doc, 1).ok()?;
    let mut services = state.services;
    let mut lines = lines.into_services();
    match (services.pop(), lines.pop()) {
        (Some(spec), Some(lines)) if services.is_empty() => Some((spec, lines)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
