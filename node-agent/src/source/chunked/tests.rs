use super::*;
use crate::source::file::FileSource;

const F: &str = "svc.yaml";

/// Service `k` as a block-style item at column `col` (every field written).
fn block(col: usize, k: usize, ep: usize) -> String {
    let i = " ".repeat(col);
    let (a, b) = (k / 250, k % 250);
    format!(
        "{i}- name: s{k}\n{i}  vips: [10.96.{a}.{b}]\n{i}  ports:\n{i}    - port: 80\n\
         {i}      targetPort: 8080\n{i}  policy: random\n{i}  endpoints:\n\
         {i}    - address: 10.1.{a}.{b}\n{i}    - address: 10.2.{}.{}\n{i}      priority: 1\n",
        ep / 250,
        ep % 250
    )
}

fn file(items: &[String]) -> String {
    format!("services:\n{}", items.concat())
}

/// Parses with `c` and checks the result against the full parse: the
/// same state, or the same error (every field, so the same lines).
fn check(c: &mut Chunked, text: &str, cap: &Capacity) -> Result<DesiredState, String> {
    let got = c.parse(F, text, cap).map_err(|e| format!("{e:?}"));
    let want = file::parse(F, text, cap).map_err(|e| format!("{e:?}"));
    assert_eq!(got, want, "chunked != full for\n{text}");
    got
}

fn cap() -> Capacity {
    Capacity::default()
}

#[test]
fn one_edited_service_of_1000_parses_one_item() {
    let mut items: Vec<String> = (0..1000).map(|k| block(2, k, k)).collect();
    let mut c = Chunked::new();
    check(&mut c, &file(&items), &cap()).expect("valid");
    assert_eq!(
        c.stats(),
        Stats {
            items: 1000,
            parsed: 1000,
            full: None,
            cached: 1000
        }
    );
    items[617] = block(2, 617, 9999);
    let s = check(&mut c, &file(&items), &cap()).expect("valid");
    assert_eq!(
        c.stats(),
        Stats {
            items: 1000,
            parsed: 1,
            full: None,
            cached: 1000
        }
    );
    assert_eq!(
        s.services[617].endpoints[1].address.to_string(),
        "10.2.39.249"
    );
    check(&mut c, &file(&items), &cap()).expect("valid");
    assert_eq!(c.stats().parsed, 0, "nothing changed");
}

#[test]
fn inserted_deleted_and_moved_items_are_reused() {
    let mut items: Vec<String> = (0..50).map(|k| block(2, k, k)).collect();
    let mut c = Chunked::new();
    check(&mut c, &file(&items), &cap()).expect("valid");
    items.insert(20, block(2, 100, 100));
    check(&mut c, &file(&items), &cap()).expect("valid");
    assert_eq!(c.stats().parsed, 1, "insert");
    items.remove(3);
    items.remove(40);
    check(&mut c, &file(&items), &cap()).expect("valid");
    assert_eq!(c.stats().parsed, 0, "delete");
    items.swap(0, 47);
    let moved = items.remove(10);
    items.push(moved);
    let s = check(&mut c, &file(&items), &cap()).expect("valid");
    assert_eq!(c.stats().parsed, 0, "move");
    assert_eq!((s.services[0].name.as_str(), s.services.len()), ("s48", 49));
    // Deleted items were evicted: bringing one back parses it again.
    items.push(block(2, 3, 3));
    check(&mut c, &file(&items), &cap()).expect("valid");
    assert_eq!(c.stats().parsed, 1, "evicted");
    assert_eq!(c.stats().cached, items.len());
}

#[test]
fn comments_and_blank_lines_between_items() {
    let mut items: Vec<String> = (0..6).map(|k| block(2, k, k)).collect();
    items[1].push_str("\n  # between\n\n# at column 0\n    # deeper\n   \n");
    items[5].push_str("# trailing\n");
    let text = format!(
        "# header\n\n  # indented\nservices:   # the list\n  # before\n{}",
        items.concat()
    );
    let mut c = Chunked::new();
    check(&mut c, &text, &cap()).expect("valid");
    assert_eq!(c.stats().full, None);
    // A comment belongs to the item before it: changing it parses that one.
    let text = text.replace("# between", "# changed");
    check(&mut c, &text, &cap()).expect("valid");
    assert_eq!(c.stats().parsed, 1);
    // A header change parses no item.
    let text = text.replace("# header", "# other header");
    check(&mut c, &text, &cap()).expect("valid");
    assert_eq!(
        (c.stats().parsed, c.stats().full),
        (0, None),
        "header change"
    );
}

#[test]
fn block_scalars_and_multi_line_values() {
    let items = [
        "  - name: |-\n      s0\n    vips: [10.96.0.0]\n    ports: [{port: 1}]\n",
        // Keeps its trailing blank lines, which follow it in the file.
        "  - name: |+\n      s1\n\n\n    # not content\n\n",
        "    vips: [10.96.0.1]\n    ports: [{port: 1}]\n",
        "  - name: >\n      s\n      2\n\n    vips: [10.96.0.2]\n    ports: [{port: 1}]\n",
        "  - name: \"s3\n      x\"\n    vips: [10.96.0.3]\n    ports: [{port: 1}]\n",
        "  - name: s4\n      continued\n    vips: [10.96.0.4]\n    ports: [{port: 1}]\n",
        "  -\n    name: s5\n    vips:\n    - 10.96.0.5\n    ports: [{port: 1}]\n",
        "  - {name: s6, vips: [10.96.0.6],\n     ports: [{port: 1}],\n     endpoints: [{address: 10.1.0.6},\n      {address: 10.1.0.7}]}\n",
        "  - name: '#s7'  # comment\n    vips: [10.96.0.7]\n    ports: [{port: 1}]\n\n",
    ];
    let text = format!("services:\n{}", items.concat());
    let mut c = Chunked::new();
    let s = check(&mut c, &text, &cap()).expect("valid");
    assert_eq!(c.stats().full, None);
    assert_eq!(c.stats().items, 8);
    let names: Vec<&str> = s.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "s0",
            "s1\n\n\n",
            "s 2\n",
            "s3 x",
            "s4 continued",
            "s5",
            "s6",
            "#s7"
        ]
    );
    // Without the newline at the end of the file.
    check(&mut c, text.trim_end(), &cap()).expect("valid");
    assert_eq!(c.stats().full, None);
}

#[test]
fn indentation_0_2_and_4() {
    for col in [0, 2, 4] {
        let items: Vec<String> = (0..5).map(|k| block(col, k, k)).collect();
        let mut c = Chunked::new();
        let s = check(&mut c, &file(&items), &cap()).expect("valid");
        assert_eq!((s.services.len(), c.stats().full), (5, None), "{col}");
    }
    // Items at two columns are not the simple layout (and not YAML).
    let mixed = [block(4, 0, 0), block(2, 1, 1)];
    let mut c = Chunked::new();
    check(&mut c, &file(&mixed), &cap()).expect_err("bad indentation");
    assert_eq!(c.stats().full, Some(Full::Layout));
}

#[test]
fn unusual_layouts_are_parsed_whole() {
    let good = file(&[block(2, 0, 0), block(2, 1, 1)]);
    for text in [
        "services: [{name: a, vips: [10.96.0.1], ports: [{port: 1}]}]\n".to_string(),
        "{services: []}\n".into(),
        "services: []\n".into(),
        "services:\n".into(),
        "services:\n# nothing\n".into(),
        "".into(),
        format!("---\n{good}"),
        format!("{good}---\nservices: []\n"),
        format!("{good}...\n"),
        format!("%YAML 1.1\n---\n{good}"),
        format!("{good}other: 1\n"),
        format!("other: 1\n{good}"),
        format!(" {good}"),
        good.replacen("  - name: s1", "\t- name: s1", 1),
        good.replacen("  - name: s1", "  \t- name: s1", 1),
        good.replace("services:", "services:#x"),
        good.replace("services:", "services: &a"),
        good.replace("- name: s1", "-\tname: s1"),
        good.replace("    vips: [10.96.0.1]", " vips: [10.96.0.1]"),
        good.replace("    vips: [10.96.0.1]", "  vips: [10.96.0.1]"),
    ] {
        let mut c = Chunked::new();
        let _ = check(&mut c, &text, &cap());
        assert_eq!(c.stats().full, Some(Full::Layout), "{text:?}");
    }
}

#[test]
fn odd_characters_are_parsed_whole() {
    let good = file(&[block(2, 0, 0), block(2, 1, 1)]);
    for (text, why) in [
        (good.replace('\n', "\r\n"), Full::Layout),
        (format!("\u{feff}{good}"), Full::Layout),
        (good.replace("s1\n", "s1 # \u{2028} x\n"), Full::Piece),
        (good.replace("s1\n", "s1 # \u{85} x\n"), Full::Piece),
        (good.replace("s1\n", "s1 # \u{feff} x\n"), Full::Piece),
        (good.replace("s1\n", "s1 # \r x\n"), Full::Piece),
        (good.replace("s1\n", "s1 # \u{1} x\n"), Full::Piece),
        (good.replace("services:", "# \u{7}\nservices:"), Full::Piece),
        (
            good.replace("services:", "# \u{2029}\nservices:"),
            Full::Piece,
        ),
    ] {
        let mut c = Chunked::new();
        let _ = check(&mut c, &text, &cap());
        assert_eq!(c.stats().full, Some(why), "{text:?}");
    }
}

#[test]
fn a_broken_item_gives_the_full_parse_error_and_line() {
    let mut items: Vec<String> = (0..20).map(|k| block(2, k, k)).collect();
    let mut c = Chunked::new();
    check(&mut c, &file(&items), &cap()).expect("valid");
    for (from, to, line) in [
        ("name: s7", "name: \"s7", 0),
        ("[10.96.0.7]", "[10.96.0.7", 0),
        ("    ports:", "   ports:", 0),
        ("port: 80", "port: 80000", 75),
        ("policy: random", "policy: rr", 77),
        ("name: s7", "name: s7\n    name: again", 73),
        ("- address: 10.1.0.7", "- address: &x 10.1.0.7", 79),
    ] {
        let mut broken = items.clone();
        broken[7] = broken[7].replace(from, to);
        let e = check(&mut c, &file(&broken), &cap()).expect_err(to);
        assert_eq!(c.stats().full, Some(Full::Piece), "{to}");
        if line > 0 {
            assert!(e.contains(&format!("line: {line},")), "{to}: {e}");
        }
    }
    // Fixed again: only the item that failed alone is parsed.
    items[7] = block(2, 7, 77);
    check(&mut c, &file(&items), &cap()).expect("valid");
    assert_eq!((c.stats().parsed, c.stats().full), (1, None));
}

/// A line `- ` at the items' column inside a quoted scalar starts no
/// service: the run reads as fewer services than items, and the file is
/// parsed whole (here it is valid: one service named `a - b`).
#[test]
fn a_dash_line_inside_a_quoted_scalar_starts_no_item() {
    let text = "services:\n  - name: \"a\n  - b\"\n    vips: [10.96.0.1]\n    ports: [{port: 1}]\n";
    for warm in [false, true] {
        let mut c = Chunked::new();
        if warm {
            check(&mut c, &file(&[block(2, 0, 0), block(2, 1, 1)]), &cap()).expect("valid");
        }
        let s = check(&mut c, text, &cap()).expect("valid");
        assert_eq!(s.services[0].name, "a - b");
        assert_eq!(c.stats().full, Some(Full::Piece));
    }
}

#[test]
fn more_items_than_the_service_map_holds() {
    let cap = Capacity {
        services: 3,
        ..Capacity::default()
    };
    let items: Vec<String> = (0..5).map(|k| block(2, k, k)).collect();
    let mut c = Chunked::new();
    let e = check(&mut c, &file(&items), &cap).expect_err("too many");
    assert!(e.contains("TooManyServices"), "{e}");
    assert_eq!(c.stats().full, Some(Full::TooMany));
    check(&mut c, &file(&items[..3]), &cap).expect("at capacity");
    assert_eq!(c.stats().full, None);
}

/// A validation problem in an item reused from the cache is placed where
/// the item is now, not where it was parsed.
#[test]
fn validation_problems_name_the_line_where_the_item_moved() {
    let mut items: Vec<String> = (0..10).map(|k| block(2, k, k)).collect();
    items[8] = items[8].replace("priority: 1", "priority: 9");
    let mut c = Chunked::new();
    let e = check(&mut c, &file(&items), &cap()).expect_err("priority");
    assert!(e.contains("line: 91,"), "{e}");
    items.insert(0, block(2, 50, 50));
    items.remove(4);
    items[0].push_str("# two\n# comments\n");
    let e = check(&mut c, &file(&items), &cap()).expect_err("priority");
    assert_eq!(c.stats().parsed, 1);
    assert!(e.contains("line: 93,"), "{e}");
    // A duplicate: the second use is the problem, and the same text twice
    // is parsed once.
    items.push(items[1].clone());
    let e = check(&mut c, &file(&items), &cap()).expect_err("duplicate");
    assert_eq!(c.stats().parsed, 0);
    assert!(e.contains("line: 104, path: \"services[10].name\""), "{e}");
}

#[test]
fn the_source_reuses_items_across_polls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("svc.yaml");
    let mut items: Vec<String> = (0..100).map(|k| block(2, k, k)).collect();
    std::fs::write(&path, file(&items)).expect("write");
    let mut src = FileSource::new(path.clone()).with_settle(std::time::Duration::ZERO);
    let first = loop {
        if let Some(r) = src.poll(&cap()) {
            break r;
        }
    };
    assert_eq!(first.expect("valid").services.len(), 100);
    assert_eq!(src.parse_stats().parsed, 100);
    items[42] = block(2, 42, 4242);
    let tmp = dir.path().join("svc.yaml.tmp");
    std::fs::write(&tmp, file(&items)).expect("write tmp");
    std::fs::rename(&tmp, &path).expect("rename");
    let got = src.poll(&cap()).expect("renamed: at once").expect("valid");
    assert_eq!(got, file::parse(F, &file(&items), &cap()).expect("valid"));
    assert_eq!(src.parse_stats().parsed, 1);
}

#[path = "random_tests.rs"]
mod random;
