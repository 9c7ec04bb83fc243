//! Item-by-item parsing of the services list. serde_yaml buffers every event
//! of a document before deserializing (about 20× the text: 80 MiB peak for a
//! 4 MiB file of 10 000 services), so the common block-style file is cut into
//! its top-level `services:` items and each item is parsed alone. Anything
//! unusual (anchors, tags, several documents, other top-level keys, flow
//! style at the top) returns `None` and the caller parses the whole document;
//! so does any item that fails, so error messages are always the full
//! parser's, with the right line and field path.

use serde::de::DeserializeOwned;

/// The items of the top-level `services:` block sequence, each parsed as `T`;
/// `None` when the text is not the plain shape this handles or an item fails.
pub fn parse_items<T: DeserializeOwned>(text: &str) -> Option<Vec<T>> {
    let chunks = split(text)?;
    let mut out = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        out.push(serde_yaml::from_str(&chunk).ok()?);
    }
    Some(out)
}

/// Cuts the sequence into item texts, the `- ` marker blanked so each item is
/// a plain mapping at its original indentation.
fn split(text: &str) -> Option<Vec<String>> {
    if text.contains(['&', '*', '!']) {
        // Anchors, aliases and tags can reach across items.
        return None;
    }
    let mut lines = text.lines().peekable();
    // Everything before `services:` must be blank, comments or a `---` start.
    loop {
        let l = lines.next()?;
        let t = strip_comment(l).trim_end();
        if t.is_empty() || t == "---" {
            continue;
        }
        if t == "services:" {
            break;
        }
        return None;
    }
    let mut items: Vec<String> = Vec::new();
    let mut indent: Option<usize> = None;
    for l in lines {
        let t = strip_comment(l);
        if t.trim().is_empty() {
            // Kept verbatim: a comment-looking line may sit inside a quoted scalar.
            if let Some(cur) = items.last_mut() {
                cur.push_str(l);
                cur.push('\n');
            }
            continue;
        }
        let ind = l.len() - l.trim_start().len();
        let rest = &l[ind..];
        let starts_item = rest.starts_with("- ") || rest == "-";
        let seq = *indent.get_or_insert(ind);
        if !starts_item && indent.is_some() && items.is_empty() {
            return None;
        }
        if ind < seq || (ind == seq && !starts_item) {
            // Another top-level key, `...` or `---`: not the simple shape.
            return None;
        }
        if ind == seq {
            let mut item = String::with_capacity(256);
            item.push_str(&l[..ind]);
            item.push_str("  ");
            item.push_str(rest.get(2..).unwrap_or(""));
            item.push('\n');
            items.push(item);
        } else {
            let cur = items.last_mut()?;
            cur.push_str(l);
            cur.push('\n');
        }
    }
    if items.is_empty() {
        return None;
    }
    Some(items)
}

/// The line without a trailing `# comment` (a `#` after whitespace or at the
/// start; quoted `#` is left to the full parser by bailing on quotes).
fn strip_comment(l: &str) -> &str {
    let b = l.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'#' && (i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t') {
            return &l[..i];
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Item {
        name: String,
        #[serde(default)]
        ports: Vec<u16>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Doc {
        services: Vec<Item>,
    }

    fn both(text: &str) -> (Option<Vec<Item>>, Vec<Item>) {
        let whole: Doc = serde_yaml::from_str(text).expect("valid test yaml");
        (parse_items(text), whole.services)
    }

    #[test]
    fn block_and_flow_items_match_the_full_parser() {
        let text = "# header\nservices:\n  - name: a\n    ports: [1, 2]\n\n  # between\n  - {name: b,\n     ports: [3]}\n  -\n    name: c\n";
        let (items, whole) = both(text);
        assert_eq!(items.as_deref(), Some(whole.as_slice()));
        assert_eq!(whole.len(), 3);
    }

    #[test]
    fn zero_indent_sequence() {
        let (items, whole) = both("services:\n- name: a\n- name: b # trailing\n");
        assert_eq!(items.as_deref(), Some(whole.as_slice()));
    }

    #[test]
    fn unusual_shapes_fall_back() {
        for text in [
            "services: []\n",
            "services:\n  - &x {name: a}\n  - *x\n",
            "other: 1\nservices:\n  - name: a\n",
            "services:\n  - name: a\nother: 1\n",
            "services:\n  - name: a\n---\nservices: []\n",
            "services:\n    name: a\n",
        ] {
            assert!(parse_items::<Item>(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn a_bad_item_defers_to_the_full_parser() {
        assert!(parse_items::<Item>("services:\n  - name: a\n  - name: [x]\n").is_none());
    }
}
