//! Services-file parse cost at 10 000 services x 10 endpoints (the file
//! baton-bench's edit stream writes, ~4 MB): the full parse against the
//! file source's chunked parse of the same file with 1 and with 20 services
//! edited, and the per-poll content hash (FNV-1a before, foldhash now).
//!
//! `cargo bench -p baton-agent --bench parse` (no root needed).
//! `BATON_BENCH_ROUNDS=N` sets the edits measured (default 30).
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failed step panics

use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::time::Duration;

use baton_agent::model::Capacity;
use baton_agent::source::chunked::Chunked;
use baton_agent::source::file::parse_bytes;

/// Counts the bytes allocated and not yet freed, to tell what the chunked
/// parser keeps between parses.
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { std::alloc::System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_mib() -> f64 {
    LIVE.load(std::sync::atomic::Ordering::Relaxed) as f64 / f64::from(1 << 20)
}

const SERVICES: usize = 10_000;
const EPS: usize = 10;

/// Service `i` as baton-bench writes it (`e2e/src/bin/baton-bench/common.rs`).
fn item(i: usize, eps: &[u32]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  - {{name: svc-{i}, vips: [10.96.{}.{}], ports: [{{port: 80, targetPort: 8080}}], policy: random, endpoints: [",
        i / 250,
        i % 250
    );
    for (j, &k) in eps.iter().enumerate() {
        let k = k + 65_536;
        let sep = if j + 1 < eps.len() { "," } else { "" };
        let _ = writeln!(
            s,
            "      {{address: 127.{}.{}.{}}}{sep}",
            k >> 16,
            (k >> 8) & 255,
            k & 255
        );
    }
    s.push_str("    ]}\n");
    s
}

fn text(items: &[String]) -> Vec<u8> {
    let mut t = String::from("services:\n");
    items.iter().for_each(|i| t.push_str(i));
    t.into_bytes()
}

/// This thread's CPU time: the machine is shared, and wall time would count
/// the time other processes ran.
fn cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the struct passed; the clock always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f`, returning its result and the CPU time it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = cpu();
    let r = f();
    (r, cpu() - t)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x100000001b3)
    })
}

fn main() {
    let rounds: usize = std::env::var("BATON_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let cap = Capacity::default();
    let mut eps: Vec<Vec<u32>> = (0..SERVICES)
        .map(|i| (0..EPS).map(|j| (i * EPS + j) as u32).collect())
        .collect();
    let mut items: Vec<String> = eps.iter().enumerate().map(|(i, e)| item(i, e)).collect();
    let first = text(&items);
    println!(
        "file: {SERVICES} services x {EPS} endpoints, {} bytes",
        first.len()
    );

    let before = live_mib();
    let mut chunked = Chunked::new();
    let (state, took) = timed(|| chunked.parse_bytes("f", &first, &cap).expect("valid"));
    println!(
        "CPU time; chunked, first parse (empty cache): {} ({} items parsed)",
        ms(took),
        chunked.stats().parsed
    );
    assert_eq!(state.services.len(), SERVICES);
    drop(state);
    let kept = live_mib() - before;
    let base = live_mib();
    let full_state = parse_bytes("f", &first, &cap).expect("valid");
    let full_state_mib = live_mib() - base;
    drop(full_state);
    println!(
        "memory: the chunked parser keeps {kept:.1} MiB between parses, the services it shares \
         with the states it returns included; a full parse's state alone is {full_state_mib:.1} MiB"
    );

    // Per round, `per` services get one endpoint replaced, as baton-bench's
    // edit stream does (20 per edit there); xorshift picks which.
    let mut rng = 0x5851_F42D_4C95_7F2Du64;
    let mut next = (SERVICES * EPS) as u32;
    for per in [1, 20] {
        let (mut full, mut inc, mut fnv, mut fold) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            let mut edited = std::collections::HashSet::new();
            while edited.len() < per {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = (rng % SERVICES as u64) as usize;
                eps[i][(rng >> 32) as usize % EPS] = next;
                next += 1;
                items[i] = item(i, &eps[i]);
                edited.insert(i);
            }
            let bytes = text(&items);

            let (got, took) = timed(|| chunked.parse_bytes("f", &bytes, &cap).expect("valid"));
            inc.push(took);
            let stats = chunked.stats();
            assert_eq!((stats.parsed, stats.full), (per, None), "items parsed");

            let (want, took) = timed(|| parse_bytes("f", &bytes, &cap).expect("valid"));
            full.push(took);
            assert_eq!(got, want, "chunked == full");

            fnv.push(timed(|| std::hint::black_box(fnv1a(&bytes))).1);
            let fixed = foldhash::fast::FixedState::with_seed(0);
            fold.push(timed(|| std::hint::black_box(fixed.hash_one(&bytes[..]))).1);
        }
        let (full, inc) = (median(full), median(inc));
        println!("{rounds} rounds, {per} service(s) edited each, medians of CPU time:");
        println!("  full parse:    {}", ms(full));
        println!("  chunked parse: {}", ms(inc));
        println!(
            "  ratio: {:.1}x less CPU per edit",
            full.as_secs_f64() / inc.as_secs_f64()
        );
        if per == 1 {
            println!(
                "  content hash per poll: FNV-1a {}, foldhash {}",
                ms(median(fnv)),
                ms(median(fold))
            );
        }
    }
}
