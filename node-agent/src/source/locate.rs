//! Maps a field path like `services[1].endpoints[0].address` to a line of a
//! block-style YAML document, for error messages. Best effort: falls back to
//! the closest enclosing item it can find.

fn indent(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

/// Splits `a[1].b` into [("a", Some(1)), ("b", None)].
fn segments(path: &str) -> Vec<(&str, Option<usize>)> {
    path.split('.')
        .map(|seg| match seg.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse().ok()),
            None => (seg, None),
        })
        .collect()
}

/// 1-based line of `path` in `text` (0 when not found).
pub fn line_of(text: &str, path: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    // The current search window: [lo, hi) and the minimum indentation of keys in it.
    let (mut lo, mut hi, mut min_indent) = (0usize, lines.len(), 0usize);
    let mut found = 0usize;
    for (key, index) in segments(path) {
        let Some(k) = (lo..hi).find(|&i| {
            let t = lines[i].trim_start().trim_start_matches("- ");
            indent(lines[i]) >= min_indent
                && (t.starts_with(&format!("{key}:")) || t.starts_with(&format!("\"{key}\":")))
        }) else {
            break;
        };
        found = k + 1;
        let key_indent = indent(lines[k]);
        // The key's block ends at the next line indented at or left of the key.
        let end = (k + 1..hi)
            .find(|&i| {
                !lines[i].trim().is_empty()
                    && indent(lines[i]) <= key_indent
                    && !lines[i].trim_start().starts_with("- ")
                    || (indent(lines[i]) < key_indent && !lines[i].trim().is_empty())
            })
            .unwrap_or(hi);
        let Some(idx) = index else {
            lo = k;
            hi = end;
            min_indent = key_indent;
            continue;
        };
        // Flow sequences (`key: [a, b]`) stay on the key's line.
        if lines[k].contains('[') {
            break;
        }
        let items: Vec<usize> = (k + 1..end)
            .filter(|&i| lines[i].trim_start().starts_with("- "))
            .collect();
        let item_indent = items.first().map(|&i| indent(lines[i]));
        let items: Vec<usize> = items
            .into_iter()
            .filter(|&i| Some(indent(lines[i])) == item_indent)
            .collect();
        let Some(&start) = items.get(idx) else { break };
        found = start + 1;
        lo = start;
        hi = items.get(idx + 1).copied().unwrap_or(end);
        min_indent = indent(lines[start]);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const DOC: &str = "\
services:
  - name: a
    vips: [10.0.0.1]
    ports:
      - port: 80
  - name: b
    endpoints:
      - address: 1.1.1.1
      - address: 2.2.2.2
        priority: 3
";

    #[test]
    fn finds_nested_fields() {
        assert_eq!(line_of(DOC, "services[0].name"), 2);
        assert_eq!(line_of(DOC, "services[0].vips[0]"), 3);
        assert_eq!(line_of(DOC, "services[0].ports[0].port"), 5);
        assert_eq!(line_of(DOC, "services[1].endpoints[1].priority"), 10);
        assert_eq!(line_of(DOC, "services[1].endpoints[1].address"), 9);
        assert_eq!(line_of(DOC, "services[1].endpoints[0]"), 8);
        assert_eq!(line_of(DOC, "services"), 1);
    }
}
