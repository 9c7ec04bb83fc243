//! Where the items of a services file in the simple block layout are: the
//! only layout the chunked parse cuts, because in it a line tells by its
//! first bytes whether it starts an item.

use super::Full;

/// A services file cut into its header and items.
#[derive(Debug)]
pub(super) struct Pieces {
    /// Where the header ends: everything before the first item (blank and
    /// comment lines, `services:`).
    pub header: usize,
    /// Each item's bytes (its lines from the `-` one to the next item's,
    /// blank and comment lines included) and its first line (0-based).
    pub items: Vec<(std::ops::Range<usize>, usize)>,
}

/// Cuts `text` into its header and items when the layout is the simple one:
/// blank and comment lines, then `services:` at column 0 (maybe a comment
/// after it), then only blank lines, comment lines, item starts (`-` then a
/// space or the end of the line) all at one column I, and lines indented
/// deeper than I. At most `max` items.
pub(super) fn split(text: &str, max: usize) -> Result<Pieces, Full> {
    let bytes = text.as_bytes();
    let mut header = None;
    let mut key = false;
    let mut column = None;
    let mut starts = Vec::new();
    // Found 16-32 bytes at a time: line by line, `find` spent 2 ms on 4 MB.
    let lines = std::iter::once(0).chain(memchr::memchr_iter(b'\n', bytes).map(|p| p + 1));
    for (line, pos) in lines.enumerate() {
        // The text from the line's start: only its first bytes are looked
        // at, but for `services:`.
        let Some(from) = bytes.get(pos..).filter(|r| !r.is_empty()) else {
            break;
        };
        let indent = from.iter().take_while(|&&b| b == b' ').count();
        let rest = &from[indent..];
        let deeper = column.is_some_and(|c| indent > c);
        let blank = matches!(rest, [] | [b'\n', ..] | [b'#', ..]);
        if deeper || blank {
            continue;
        }
        if rest.first() == Some(&b'\t') {
            return Err(Full::Layout);
        }
        if !key {
            let eol = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            if indent != 0 || !services_key(&rest[..eol]) {
                return Err(Full::Layout);
            }
            key = true;
        } else if item_start(rest) && column.is_none_or(|c| c == indent) {
            if starts.len() >= max {
                return Err(Full::TooMany);
            }
            column = Some(indent);
            header.get_or_insert(pos);
            starts.push((pos, line));
        } else {
            return Err(Full::Layout);
        }
    }
    let Some(header) = header else {
        return Err(Full::Layout);
    };
    let ends = starts.iter().skip(1).map(|&(p, _)| p).chain([text.len()]);
    let items = starts
        .iter()
        .zip(ends)
        .map(|(&(start, line), end)| (start..end, line))
        .collect();
    Ok(Pieces { header, items })
}

/// `services:`, then nothing, spaces, or spaces and a comment.
fn services_key(line: &[u8]) -> bool {
    let Some(after) = line.strip_prefix(b"services:") else {
        return false;
    };
    let spaces = after.iter().take_while(|&&b| b == b' ').count();
    spaces == after.len() || (spaces > 0 && after[spaces] == b'#')
}

/// `-` then a space or the end of the line (`rest`: the text from the `-`).
fn item_start(rest: &[u8]) -> bool {
    matches!(rest, [b'-'] | [b'-', b' ' | b'\n', ..])
}
