//! Section 2 (`--only programming`): a full sync of 10 000 services × 10 endpoints on a fresh
//! datapath, a re-sync, and endpoint churn.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use baton_agent::model::EndpointSpec;
use baton_agent::programmer::Programmer;

use crate::args::Args;
use crate::common::{backend_addr, big_state, datapath, sync, Rng, BIG, EPS_PER_SVC};

/// Runs section 2 and appends its report to `out`.
pub fn run(opts: &Args, bpffs: &Path, cgroup: &Path, out: &mut String) -> Result<()> {
    let _ = writeln!(out, "\n### 2. Map programming");
    let dp = datapath(bpffs.join("prog"), cgroup)?;
    let mut prog = Programmer::new();
    let mut st = big_state();
    eprintln!("programming: full sync of {BIG} × {EPS_PER_SVC}");
    let start = Instant::now();
    let r = sync(&mut prog, &dp, &st)?;
    let full = start.elapsed();
    let _ = writeln!(
        out,
        "\n- full sync of {BIG} services × {EPS_PER_SVC} endpoints (distinct backends): **{:.3} s** wall ({:.3} s reported), {} map writes, {} services created",
        full.as_secs_f64(),
        r.duration.as_secs_f64(),
        r.writes,
        r.created
    );
    let again = sync(&mut prog, &dp, &st)?;
    let _ = writeln!(
        out,
        "- re-sync of the unchanged state: {:.3} s, {} writes",
        again.duration.as_secs_f64(),
        again.writes
    );

    let secs = if opts.quick { 0.5 } else { 3.0 };
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut next = (BIG * EPS_PER_SVC) as u32;
    for batch in [100usize, 1_000] {
        let (mut changes, mut writes, mut syncs) = (0usize, 0usize, 0usize);
        eprintln!("programming: endpoint churn, batch {batch}, for {secs} s");
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            for _ in 0..batch {
                // A copy when the programmer still holds this spec: a new `Arc`, as a
                // source hands over a changed service.
                let s = std::sync::Arc::make_mut(&mut st.services[rng.below(BIG)]);
                let idx = rng.below(s.endpoints.len());
                s.endpoints.swap_remove(idx);
                s.endpoints.push(EndpointSpec {
                    address: IpAddr::V4(backend_addr(next)),
                    port: 0,
                    priority: 0,
                });
                next += 1;
                changes += 1;
            }
            let r = sync(&mut prog, &dp, &st)?;
            writes += r.writes;
            syncs += 1;
        }
        let el = start.elapsed().as_secs_f64();
        let _ = writeln!(
            out,
            "- endpoint churn, batches of {batch} replacements (remove one endpoint + add a new backend, random service), one sync per batch: {changes} replacements in {el:.2} s = **{:.0} replacements/s** ({:.0} endpoint add+remove events/s), {syncs} syncs ({:.1} ms each), {:.1} map writes per replacement",
            changes as f64 / el,
            2.0 * changes as f64 / el,
            el * 1000.0 / syncs.max(1) as f64,
            writes as f64 / changes.max(1) as f64
        );
    }
    dp.teardown().context("datapath teardown")?;
    Ok(())
}
