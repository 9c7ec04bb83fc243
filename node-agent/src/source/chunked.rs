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
//! [`split`]), and anything else falls back to the full parse: another
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

use std::collections::HashMap;

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
}

/// A parsed item and the last parse that saw it.
#[derive(Debug)]
struct Entry {
    spec: ServiceSpec,
    /// Lines in the item's own document (the item starts on line 2).
    lines: ServiceLines,
    seen: u64,
}

/// A services-file parser that reuses the items unchanged since its last
/// parse; its results equal [`file::parse`]'s.
#[derive(Debug, Default)]
pub struct Chunked {
    /// Items of the last parse by text (hashed with foldhash, confirmed by
    /// comparing the text): at most the items of the last file cut.
    cache: HashMap<Box<str>, Entry, foldhash::fast::RandomState>,
    /// The last header that parsed alone and its `services` key's line.
    header: Option<(Box<str>, usize)>,
    /// Number of the current parse, to evict entries it did not see.
    generation: u64,
    stats: Stats,
}

/// The prefix that makes an item a document of its own.
const ITEM_DOC: &str = "services:\n";

/// Characters the cut could count lines differently from libyaml (other
/// line breaks) or that only mean something at the stream's start (BOM).
const ODD: [char; 5] = ['\r', '\u{85}', '\u{2028}', '\u{2029}', '\u{feff}'];

/// The simple block layout cut into pieces.
#[derive(Debug)]
struct Pieces<'t> {
    /// Everything before the first item (blank and comment lines,
    /// `services:`).
    header: &'t str,
    /// Each item's text (its lines from the `-` one to the next item) and
    /// its first line (0-based).
    items: Vec<(&'t str, usize)>,
}

/// Cuts `text` into its header and items when the layout is the simple one:
/// blank and comment lines, then `services:` at column 0 (maybe a comment
/// after it), then only blank lines, comment lines, item starts (`-` then a
/// space or the end of the line) all at one column I, and lines indented
/// deeper than I. At most `max` items.
fn split(text: &str, max: usize) -> Result<Pieces<'_>, Full> {
    let mut header = None;
    let mut key = false;
    let mut column = None;
    let mut items = Vec::new();
    let (mut pos, mut line) = (0, 0);
    while pos < text.len() {
        let end = text[pos..].find('\n').map_or(text.len(), |i| pos + i + 1);
        let body = &text.as_bytes()[pos..end];
        let indent = body.iter().take_while(|&&b| b == b' ').count();
        let rest = &body[indent..];
        let deeper = column.is_some_and(|c| indent > c);
        let blank = matches!(rest, [] | [b'\n', ..] | [b'#', ..]);
        if !deeper && !blank {
            if rest.first() == Some(&b'\t') {
                return Err(Full::Layout);
            }
            if !key {
                if indent != 0 || !services_key(rest) {
                    return Err(Full::Layout);
                }
                key = true;
            } else if item_start(rest) && column.is_none_or(|c| c == indent) {
                if items.len() >= max {
                    return Err(Full::TooMany);
                }
                column = Some(indent);
                header.get_or_insert(pos);
                items.push((pos, line));
            } else {
                return Err(Full::Layout);
            }
        }
        pos = end;
        line += 1;
    }
    let Some(header) = header else {
        return Err(Full::Layout);
    };
    let ends = items.iter().skip(1).map(|&(p, _)| p).chain([text.len()]);
    let items = items
        .iter()
        .zip(ends)
        .map(|(&(start, line), end)| (&text[start..end], line))
        .collect();
    Ok(Pieces {
        header: &text[..header],
        items,
    })
}

/// `services:`, then nothing, spaces, or spaces and a comment.
fn services_key(line: &[u8]) -> bool {
    let Some(after) = line.strip_prefix(b"services:") else {
        return false;
    };
    let after = after.strip_suffix(b"\n").unwrap_or(after);
    let spaces = after.iter().take_while(|&&b| b == b' ').count();
    spaces == after.len() || (spaces > 0 && after[spaces] == b'#')
}

/// `-` then a space or the end of the line.
fn item_start(rest: &[u8]) -> bool {
    matches!(rest, [b'-'] | [b'-', b' ' | b'\n', ..])
}

impl Chunked {
    /// A parser with nothing cached.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the last parse did.
    pub fn stats(&self) -> Stats {
        self.stats
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
        let pieces = match split(text, max) {
            Ok(p) => p,
            Err(why) => {
                if why == Full::Layout {
                    // Another layout: keep no memory for one that may not
                    // come back.
                    self.cache = HashMap::default();
                }
                return self.full(why, file, text, cap);
            }
        };
        self.stats.items = pieces.items.len();
        let Some(key) = self.header(pieces.header) else {
            return self.full(Full::Piece, file, text, cap);
        };
        let Some(state) = self.assemble(&pieces.items) else {
            return self.full(Full::Piece, file, text, cap);
        };
        let cache = &self.cache;
        file::validated(file, state, cap, |path| {
            reader::line_of(path, key, |i| {
                let &(item, first) = pieces.items.get(i)?;
                // The item's document starts it on line 2 (index 1).
                Some((&cache.get(item)?.lines, first.checked_sub(1)?))
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

    /// The state from the cached and newly parsed items; `None` when an
    /// item does not parse alone. Entries of items no longer in the file
    /// are evicted either way.
    fn assemble(&mut self, items: &[(&str, usize)]) -> Option<DesiredState> {
        self.generation += 1;
        let generation = self.generation;
        let mut services = Vec::with_capacity(items.len());
        let mut failed = false;
        for &(item, _) in items {
            if let Some(e) = self.cache.get_mut(item) {
                e.seen = generation;
                if !failed {
                    services.push(e.spec.clone());
                }
                continue;
            }
            // After a failure the file is parsed whole anyway: the items
            // left are not parsed now, the next parse will.
            if failed {
                continue;
            }
            match parse_item(item) {
                Some((spec, lines)) => {
                    services.push(spec.clone());
                    self.stats.parsed += 1;
                    let seen = generation;
                    self.cache.insert(item.into(), Entry { spec, lines, seen });
                }
                None => failed = true,
            }
        }
        self.cache.retain(|_, e| e.seen == generation);
        (!failed).then_some(DesiredState { services })
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
#[path = "chunked_tests.rs"]
mod tests;
