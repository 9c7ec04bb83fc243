//! Issue 9 on the real agent: no services file, however bad, costs a
//! service, memory or the watcher. For each bad input the agent reports the
//! error, keeps its previous state (no sync, same dump) and the datapath
//! keeps serving real connects through every VIP; after a FIFO, a later
//! good file is still applied; an in-place rewrite is never applied half
//! written.

use std::time::{Duration, Instant};

use baton_api::admin::Dump;
use baton_e2e::kit::process::proc_status_kib;
use baton_e2e::kit::{Agent, Fixture, Host, Opts};

/// One agent serving `Fixture::at(0)` and what it showed before the bad input.
struct Bed {
    ctx: Host,
    fixture: Fixture,
    agent: Agent,
    syncs: u64,
    dump: Dump,
}

impl Bed {
    fn new(name: &str, args: &[&str]) -> Self {
        let fixture = Fixture::at(0);
        let ctx = Host::with_fixture(name, &fixture).unwrap();
        let agent = ctx
            .start(baton_ebpf::LAYOUT_VERSION, &Opts::default().with_args(args))
            .unwrap();
        let st = ctx
            .wait_status("the fixture applied", |s| {
                s.services == fixture.services.len() as u64 && s.source_error.is_none()
            })
            .unwrap();
        let dump = ctx.dump().expect("dump");
        assert_eq!(fixture.dump_diff(&dump), Vec::<String>::new());
        Self {
            syncs: st.syncs,
            ctx,
            fixture,
            agent,
            dump,
        }
    }

    /// Waits for a source error containing `needle` (within `within`, a hang
    /// guard), then checks that nothing was applied and traffic is served.
    fn assert_rejected(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let msg = loop {
            let st = self.ctx.status().expect("the agent answers status");
            if let Some(m) = st.source_error.as_ref().filter(|m| m.contains(needle)) {
                break m.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no error containing {needle:?} within {within:?}; status: {st:?}; log:\n{}",
                self.agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.assert_unchanged_and_serving();
        msg
    }

    fn assert_unchanged_and_serving(&self) {
        let st = self.ctx.status().expect("status");
        assert_eq!(st.syncs, self.syncs, "nothing applied: {st:?}");
        let dump = self.ctx.dump().expect("dump");
        assert_eq!(dump, self.dump, "the programmed services did not change");
        self.assert_serving(&self.fixture);
        assert!(self.agent.alive(), "agent alive: {}", self.agent.log_text());
    }

    /// Real connects from the test cgroup reach `fixture`'s backends only.
    fn assert_serving(&self, fixture: &Fixture) {
        let t = self
            .ctx
            .traffic(fixture, 300.0, 0, Duration::from_secs(20))
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let r = t.report(Duration::from_secs(30)).unwrap();
        assert!(r.totals.ok > 0, "{:?}", r.totals);
        assert_eq!(fixture.traffic_problems(&r), Vec::<String>::new());
    }

    /// Writes the services file in place (truncate, then write).
    fn write(&self, text: impl AsRef<[u8]>) {
        std::fs::write(&self.ctx.services, text).expect("write services file");
    }

    /// Peak resident memory of the agent, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.agent.pid(), "VmHWM").expect("VmHWM of the agent")
    }
}

const GUARD: Duration = Duration::from_secs(10);

#[test]
fn zero_byte_file_is_not_no_services() {
    let b = Bed::new("bad-empty", &[]);
    b.write("");
    b.assert_rejected("no document", GUARD);
}

#[test]
fn comment_only_file_is_not_no_services() {
    let b = Bed::new("bad-comments", &[]);
    b.write("# services moved elsewhere\n\n   # nothing here\n");
    b.assert_rejected("no document", GUARD);
}

#[test]
fn services_without_a_value_is_not_no_services() {
    let b = Bed::new("bad-null", &[]);
    b.write("services:\n");
    let msg = b.assert_rejected("services: no value", GUARD);
    assert!(msg.contains("services.yaml:1:"), "{msg}");
}

/// A slow in-place rewrite (truncate, then a line every 20 ms): every
/// prefix the agent can read is empty or cut at a line boundary (valid
/// YAML, fewer services or endpoints). None is applied or reported; the
/// complete file is applied once, by a single sync.
#[test]
fn in_place_rewrite_is_applied_only_when_complete() {
    let b = Bed::new("bad-rewrite", &[]);
    let next = Fixture::at(1);
    let text = next.yaml();
    let writer = {
        let path = b.ctx.services.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&path).expect("truncate");
            for line in text.split_inclusive('\n') {
                f.write_all(line.as_bytes()).expect("write");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    while !writer.is_finished() {
        let st = b.ctx.status().expect("status");
        assert_eq!(st.syncs, b.syncs, "applied mid-write: {st:?}");
        assert!(st.source_error.is_none(), "reported mid-write: {st:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    writer.join().expect("writer");
    // Nothing was applied while the file was incomplete: the old state served.
    b.assert_serving(&b.fixture);
    let st = b
        .ctx
        .wait_status("the new file applied", |s| s.syncs > b.syncs)
        .unwrap();
    assert_eq!(st.syncs, b.syncs + 1, "{st:?}");
    let dump = b.ctx.dump().expect("dump");
    assert_eq!(next.dump_diff(&dump), Vec::<String>::new());
    b.assert_serving(&next);
}

#[test]
fn symlink_to_dev_zero_is_refused_without_reading() {
    let b = Bed::new("bad-zero", &[]);
    std::fs::remove_file(&b.ctx.services).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", &b.ctx.services).expect("symlink");
    b.assert_rejected("not a regular file (a character device)", GUARD);
    // Reading /dev/zero without a limit took 3 GiB in 14 s.
    std::thread::sleep(Duration::from_secs(1));
    let kib = b.peak_rss_kib();
    assert!(kib < 256 * 1024, "agent peak RSS {kib} KiB");
}

#[test]
fn fifo_does_not_block_and_a_later_good_file_is_applied() {
    let b = Bed::new("bad-fifo", &[]);
    std::fs::remove_file(&b.ctx.services).expect("rm");
    nix::unistd::mkfifo(
        &b.ctx.services,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    b.assert_rejected("not a regular file (a FIFO)", GUARD);
    // The watcher is not stuck: a good file replacing the FIFO is applied.
    let next = Fixture::at(1);
    b.ctx.write_fixture(&next).unwrap();
    b.ctx
        .wait_status("the good file applied", |s| {
            s.syncs > b.syncs && s.source_error.is_none()
        })
        .unwrap();
    let dump = b.ctx.dump().expect("dump");
    assert_eq!(next.dump_diff(&dump), Vec::<String>::new());
    b.assert_serving(&next);
}

#[test]
fn oversize_file_is_refused() {
    let b = Bed::new("bad-big", &["--max-services-bytes", "65536"]);
    // A valid document over the limit (padding in a comment).
    let text = format!("{}# {}\n", b.fixture.yaml(), "x".repeat(70_000));
    b.write(text);
    b.assert_rejected("over the limit of 65536 bytes", GUARD);
}

/// `n` copies of the fixture's first service (same name, same VIP).
fn duplicates(f: &Fixture, n: usize) -> String {
    let one = f.yaml();
    let first: String = one
        .lines()
        .skip(1)
        .take_while({
            let mut seen = false;
            move |l| {
                let start = l.starts_with("  - ");
                let keep = !(start && seen);
                seen |= start;
                keep
            }
        })
        .map(|l| format!("{l}\n"))
        .collect();
    format!("services:\n{}", first.repeat(n))
}

#[test]
fn sixteen_thousand_duplicates_are_rejected_quickly_with_capped_errors() {
    let b = Bed::new("bad-dups", &[]);
    let text = duplicates(&b.fixture, 16_000);
    assert!(text.len() > 1_000_000, "{} bytes", text.len());
    b.write(text);
    let msg = b.assert_rejected("more problems", GUARD);
    assert!(msg.contains("duplicate service name"), "{msg}");
    assert_eq!(msg.lines().count(), 21, "20 problems and a count: {msg}");
}

#[test]
fn alias_bomb_is_refused() {
    let b = Bed::new("bad-alias", &[]);
    let mut text = String::from(
        "services:\n  - &s {name: a, vips: [10.96.9.1], ports: [{port: 80}], endpoints: [{address: 127.0.0.1}]}\n",
    );
    for _ in 0..50_000 {
        text.push_str("  - *s\n");
    }
    b.write(text);
    let msg = b.assert_rejected("anchors, aliases and tags are not supported", GUARD);
    assert!(msg.contains("services.yaml:2:"), "{msg}");
}

#[test]
fn deep_nesting_is_refused() {
    let b = Bed::new("bad-deep", &[]);
    let n = 100_000;
    b.write(format!("services: {}{}\n", "[".repeat(n), "]".repeat(n)));
    b.assert_rejected("services[0]: expected a mapping, found a sequence", GUARD);
}
