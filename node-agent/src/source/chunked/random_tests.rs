//! Random files under random edits: the chunked parse equals the full parse
//! (state, or error with its line) at every step.

use std::collections::HashMap;

use super::*;

use crate::testing::Rng;

/// Service `k` with endpoint number `ep`, in one of several styles.
fn item(rng: &mut Rng, col: usize, k: usize, ep: usize) -> String {
    let i = " ".repeat(col);
    let (a, b) = (k / 250 % 250, k % 250);
    let (c, d) = (ep / 250 % 250, ep % 250);
    let vip = format!("10.96.{a}.{b}");
    match rng.below(7) {
        0 => block(col, k, ep),
        1 => format!(
            "{i}- {{name: s{k}, vips: [{vip}], ports: [{{port: 80}}], endpoints: [{{address: 10.1.{c}.{d}}}]}}\n"
        ),
        // As baton-bench writes it.
        2 => format!(
            "{i}- {{name: s{k}, vips: [{vip}], ports: [{{port: 80, targetPort: 8080}}], policy: random, endpoints: [\n\
             {i}    {{address: 10.1.{c}.{d}}},\n{i}    {{address: 10.2.{c}.{d}}}\n{i}  ]}}\n"
        ),
        3 => format!(
            "{i}-\n{i}  name: s{k}\n{i}  vips:\n{i}  - {vip}\n{i}  ports:\n{i}  - port: 443\n{i}  endpoints:\n{i}  - {{address: 10.1.{c}.{d}, port: 8443}}\n"
        ),
        4 => format!(
            "{i}- name: |-\n{i}    s{k}\n{i}  vips: [{vip}]\n{i}  ports: [{{port: 80}}]\n{i}  policy: {}\n",
            rng.pick(&["strict", "failover", "random"])
        ),
        5 => format!(
            "{i}- name: \"s\n{i}    {k}\"\n{i}  vips: [\"{vip}\"]  # quoted\n{i}  ports: [{{port: 80}}]\n"
        ),
        _ => format!("{i}- name: s{k}\n{i}    x\n{i}  vips: [{vip}]\n{i}  ports: [{{port: 0x50}}]\n"),
    }
}

/// Text breaking the syntax or layout (or not) somewhere in an item.
fn break_text(rng: &mut Rng, text: &mut String) {
    let bad = [
        "\"",
        "'",
        "[",
        "]",
        "{",
        "}",
        "\t",
        ":",
        ": ",
        "- ",
        "-",
        "#",
        " #",
        "&a ",
        "*a",
        "!t ",
        "\n",
        "\n---\n",
        "\n...\n",
        "\nx: 1\n",
        "\n  x: 1\n",
        "\n- ",
        "\n  - ",
        "\n    - ",
        " ",
        "|\n",
        ">+\n",
        "\n\n",
        "\r",
        "\u{1}",
        "?",
        "%",
        "@",
    ];
    let mut at = rng.below(text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    match rng.below(3) {
        0 => text.insert_str(at, rng.pick(&bad)),
        1 => {
            let end = (at + 1 + rng.below(4)).min(text.len());
            if let Some(cut) = (at..=end).rev().find(|&e| text.is_char_boundary(e)) {
                text.replace_range(at..cut, "");
            }
        }
        _ => {
            let from = rng.pick(&["80", "s", "vips", "port", ": ", "10.", "- ", "  "]);
            let to = rng.pick(&[
                "80000",
                "",
                "vip",
                "port: 1\n      port",
                ":",
                "::",
                "-",
                " ",
            ]);
            *text = text.replacen(from, to, 1);
        }
    }
}

struct Item {
    k: usize,
    ep: usize,
    text: String,
    /// Changed by `break_text` since it was last written whole.
    broken: bool,
}

/// Applies one random edit.
fn edit(
    rng: &mut Rng,
    col: &mut usize,
    header: &mut String,
    items: &mut Vec<Item>,
    next: &mut usize,
) {
    let n = items.len();
    let i = rng.below(n);
    match rng.below(14) {
        0 | 1 if n > 0 => {
            items[i].ep = rng.below(60_000);
            items[i].text = item(rng, *col, items[i].k, items[i].ep);
        }
        // Around 30 items mostly.
        2 | 3 if n < 35 => {
            // Sometimes an existing service's name and VIP again.
            let k = if n > 0 && rng.below(8) == 0 {
                items[rng.below(n)].k
            } else {
                *next += 1;
                *next
            };
            let ep = rng.below(60_000);
            let text = item(rng, *col, k, ep);
            let broken = false;
            items.insert(
                rng.below(n + 1),
                Item {
                    k,
                    ep,
                    text,
                    broken,
                },
            );
        }
        2..=4 if n > 0 => {
            items.remove(i);
        }
        5 if n > 0 => {
            let it = items.remove(i);
            items.insert(rng.below(n), it);
        }
        6 if n > 0 => {
            let indent = " ".repeat(rng.below(*col + 4));
            let line = rng.pick(&["# c", "#", "", "  # deeper", "#- x", "# services:"]);
            items[i].text.push_str(&format!("{indent}{line}\n"));
        }
        7 | 8 if n > 0 => {
            break_text(rng, &mut items[i].text);
            items[i].broken = true;
        }
        9 if n > 0 => {
            let bad = rng.pick(&["priority: 1", "address: 10.1.", "port: 80"]);
            let to = rng.pick(&["priority: 9", "address: 0.0.0.0, x: ", "port: 0"]);
            items[i].text = items[i].text.replacen(bad, to, 1);
        }
        10 => {
            *header = rng
                .pick(&[
                    "services:\n",
                    "# h\nservices:\n",
                    "services:  # c\n\n",
                    "\n  # x\nservices:\n  # first\n",
                    "services: # \u{e9}\n",
                    "---\nservices:\n",
                    "services: \n",
                ])
                .to_string();
        }
        11 => {
            *col = [0, 2, 4][rng.below(3)];
            for it in items.iter_mut() {
                it.text = item(rng, *col, it.k, it.ep);
            }
        }
        12 if rng.below(16) == 0 => {
            // A burst of new services, past the capacity (40) now and then.
            for _ in 0..12 {
                *next += 1;
                let (k, ep) = (*next, rng.below(60_000));
                let text = item(rng, *col, k, ep);
                let broken = false;
                items.insert(
                    rng.below(items.len() + 1),
                    Item {
                        k,
                        ep,
                        text,
                        broken,
                    },
                );
            }
        }
        _ => {}
    }
}

#[test]
fn random_edits_match_the_full_parse() {
    // Small enough that `TooMany` happens too.
    let cap = Capacity {
        services: 40,
        ..Capacity::default()
    };
    let mut outcomes: HashMap<Option<Full>, usize> = HashMap::new();
    let mut parsed = 0;
    for seed in 1..=6u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (mut col, mut header, mut next) = (2, "services:\n".to_string(), 0);
        let mut items: Vec<Item> = Vec::new();
        for _ in 0..20 {
            next += 1;
            let ep = rng.below(60_000);
            let text = item(&mut rng, col, next, ep);
            let broken = false;
            items.push(Item {
                k: next,
                ep,
                text,
                broken,
            });
        }
        let mut c = Chunked::new();
        for _ in 0..400 {
            let text = format!(
                "{header}{}",
                items.iter().map(|i| i.text.as_str()).collect::<String>()
            );
            let _ = check(&mut c, &text, &cap);
            *outcomes.entry(c.stats().full).or_default() += 1;
            parsed += c.stats().parsed;
            assert!(
                c.stats().cached <= 40,
                "the cache holds at most the capacity"
            );
            for _ in 0..1 + rng.below(3) {
                edit(&mut rng, &mut col, &mut header, &mut items, &mut next);
            }
            // Most breaks are repaired soon, as a person fixing a typo.
            if rng.below(3) > 0 {
                for it in items.iter_mut().filter(|it| it.broken) {
                    it.text = item(&mut rng, col, it.k, it.ep);
                    it.broken = false;
                }
            }
        }
    }
    // Every path was taken, and most steps reused items.
    let steps = 6 * 400;
    let n = |k| outcomes.get(&k).copied().unwrap_or(0);
    eprintln!("{outcomes:?}, {parsed} items parsed");
    assert!(n(None) > steps / 3, "{outcomes:?}");
    for why in [Full::Piece, Full::Layout, Full::TooMany] {
        assert!(n(Some(why)) > 0, "{outcomes:?}");
    }
    assert!(
        parsed < steps * 10,
        "{parsed} items parsed in {steps} steps"
    );
}
