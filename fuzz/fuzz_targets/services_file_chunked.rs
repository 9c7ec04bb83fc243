//! The file source's chunked parse against the full parse: the input is two
//! texts (split at its first 0xFF byte, which UTF-8 never has; without one,
//! the same text twice), parsed in sequence by one `Chunked` and then the
//! first again, so items are cached, reused, moved and evicted. Every
//! result must equal `parse_bytes`'s: the same state, or the same error
//! with the same line.
#![no_main]

use baton_agent::model::Capacity;
use baton_agent::source::chunked::Chunked;
use baton_agent::source::file::parse_bytes;
use libfuzzer_sys::fuzz_target;

/// Small maps, so the item limit and capacity errors are reachable too.
const CAP: Capacity = Capacity {
    frontends: 64,
    services: 64,
    endpoints: 256,
    backends: 256,
};

fuzz_target!(|data: &[u8]| {
    let (a, b) = match data.iter().position(|&c| c == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let mut chunked = Chunked::new();
    for text in [a, b, a] {
        let got = chunked
            .parse_bytes("f.yaml", text, &CAP)
            .map_err(|e| format!("{e:?}"));
        let want = parse_bytes("f.yaml", text, &CAP).map_err(|e| format!("{e:?}"));
        assert_eq!(
            got,
            want,
            "chunked != full ({:?}) for\n{}",
            chunked.stats(),
            String::from_utf8_lossy(text)
        );
    }
});
