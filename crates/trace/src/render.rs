//! The human report: summary first (how much of mount time was lock wait, top holders, top
//! shrinkers), then mounts per filesystem type, then each listed wait with its holders and the
//! reclaim around it.

use std::fmt::Write;

use crate::check::ShrinkerLock;
use crate::report::{Holder, Mode, Report, Role, VmstatSample};

/// How many waits are shown in detail (all are in the JSON).
const SHOW_WAITS: usize = 10;

fn pct(part: f64, whole: f64) -> String {
    if whole <= 0.0 {
        "–".into()
    } else {
        format!("{:.1} %", 100.0 * part / whole)
    }
}

fn dur(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

/// Large counts in k/M.
fn count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.0}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// The whole report: header, summary, mounts, waits (and the naive script's answer).
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    header(&mut s, r);
    summary(&mut s, r);
    mounts(&mut s, r);
    waits(&mut s, r);
    if let Some(n) = &r.naive {
        render_naive(&mut s, n);
    }
    s
}

/// What was traced, how, and what could not be.
fn header(s: &mut String, r: &Report) {
    let lock = match r.kernel.shrinker_lock {
        ShrinkerLock::Rwsem => "shrinker_rwsem (exposed: mounts wait behind reclaim)",
        ShrinkerLock::Lockless => "lockless (mounts do not wait for reclaim)",
        ShrinkerLock::Unknown => "unknown",
    };
    let _ = writeln!(
        s,
        "strata trace: {:.1} s on {}, shrinker lock: {lock}",
        r.duration_s, r.kernel.release
    );
    let _ = writeln!(
        s,
        "events from {} ({} mode); waits listed from {} ms",
        r.source,
        r.mode.name(),
        r.min_wait_ms
    );
    for m in &r.missing {
        let _ = writeln!(s, "missing: {m}");
    }
}

/// Share of mount time spent waiting, the slowest mount, waits, top holders and shrinkers.
fn summary(s: &mut String, r: &Report) {
    let sm = &r.summary;
    let _ = writeln!(s, "\nSummary");
    // The default mode times the calls that create superblocks, not umount2.
    let what = match r.mode {
        Mode::Default => "mounts",
        Mode::Detail => "mounts+umounts",
    };
    let _ = writeln!(
        s,
        "  {what}: {}, {} in total; {} ({}) of it waiting for the shrinker lock",
        sm.mounts,
        dur(sm.mount_ms),
        dur(sm.mount_lock_wait_ms),
        pct(sm.mount_lock_wait_ms, sm.mount_ms)
    );
    if let Some(m) = r.slowest_mounts.first() {
        let _ = writeln!(
            s,
            "  slowest: {} {} by {} (pid {}) at {:.1} s: {}, {} ({}) lock wait",
            m.fstype,
            m.op.name(),
            m.comm,
            m.pid,
            m.t_s,
            dur(m.total_ms),
            dur(m.lock_wait_ms),
            pct(m.lock_wait_ms, m.total_ms)
        );
    }
    let _ = writeln!(
        s,
        "  lock waits: {} in all ({}); {} of ≥ {} ms ({}), {} of that attributed to holders",
        sm.all_waits,
        dur(sm.all_wait_ms),
        sm.waits,
        r.min_wait_ms,
        dur(sm.wait_ms),
        pct(sm.attributed_ms, sm.wait_ms)
    );
    if !sm.top_holders.is_empty() {
        let list: Vec<String> = sm
            .top_holders
            .iter()
            .map(|h| format!("{} {} ({} waits)", h.comm, dur(h.hold_ms), h.waits))
            .collect();
        let _ = writeln!(s, "  top holders:   {}", list.join(", "));
    }
    if !sm.top_shrinkers.is_empty() {
        let list: Vec<String> = sm
            .top_shrinkers
            .iter()
            .map(|t| format!("{} {} ({} calls)", t.name, dur(t.ms), t.calls))
            .collect();
        let _ = writeln!(s, "  top shrinkers: {}", list.join(", "));
    }
}

/// Mounts per operation and filesystem type, with where their time went.
fn mounts(s: &mut String, r: &Report) {
    match r.mode {
        Mode::Default => mounts_default(s, r),
        Mode::Detail => mounts_detail(s, r),
    }
}

/// Default mode: every mount counted, the ones of at least `--min-wait` per type (no phases).
fn mounts_default(s: &mut String, r: &Report) {
    let totals: Vec<_> = r.mount_totals.iter().filter(|t| t.n > 0).collect();
    if !totals.is_empty() {
        let _ = writeln!(s, "\nMounts traced (umount2 is not timed in this mode)");
    }
    for t in totals {
        let _ = writeln!(
            s,
            "  {:<9} {:>7} in {}, {} ({}) waiting for the lock",
            t.op.name(),
            t.n,
            dur(t.total_ms),
            dur(t.lock_wait_ms),
            pct(t.lock_wait_ms, t.total_ms)
        );
    }
    if r.mounts.is_empty() {
        return;
    }
    let _ = writeln!(s, "\nMounts of ≥ {} ms (ms)", r.min_wait_ms);
    let _ = writeln!(
        s,
        "  {:<20} {:>6} {:>8} {:>8} {:>9} {:>9}",
        "op fstype", "n", "p50", "p99", "max", "lock wait"
    );
    for m in &r.mounts {
        let _ = writeln!(
            s,
            "  {:<20} {:>6} {:>8.2} {:>8.2} {:>9.2} {:>9}",
            format!("{} {}", m.op.name(), m.fstype),
            m.n,
            m.p50_ms,
            m.p99_ms,
            m.max_ms,
            pct(m.lock_wait_ms, m.total_ms),
        );
    }
}

/// Detail mode: every mount and umount per type, with its phases.
fn mounts_detail(s: &mut String, r: &Report) {
    if r.mounts.is_empty() {
        return;
    }
    let _ = writeln!(s, "\nMounts (ms)");
    let _ = writeln!(
        s,
        "  {:<20} {:>6} {:>8} {:>8} {:>9} {:>11} {:>9} {:>10} {:>9}",
        "op fstype", "n", "p50", "p99", "max", "alloc_super", "register", "unregister", "lock wait"
    );
    for m in &r.mounts {
        let _ = writeln!(
            s,
            "  {:<20} {:>6} {:>8.2} {:>8.2} {:>9.2} {:>11} {:>9} {:>10} {:>9}",
            format!("{} {}", m.op.name(), m.fstype),
            m.n,
            m.p50_ms,
            m.p99_ms,
            m.max_ms,
            pct(m.alloc_super_ms, m.total_ms),
            pct(m.shrinker_register_ms, m.total_ms),
            pct(m.shrinker_unregister_ms, m.total_ms),
            pct(m.lock_wait_ms, m.total_ms),
        );
    }
}

/// The slowest waits, each with its holders, the reclaim that second and the waiter's stack.
fn waits(s: &mut String, r: &Report) {
    if r.waits.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nWaits for the shrinker lock (slowest first{})",
        if r.waits.len() > SHOW_WAITS {
            format!(", {SHOW_WAITS} of {}", r.waits.len())
        } else {
            String::new()
        }
    );
    for w in r.waits.iter().take(SHOW_WAITS) {
        let _ = writeln!(
            s,
            "  {:>7.2} s  {} (pid {}) waited {}{}; holders cover {}",
            w.t_s,
            w.waiter_comm,
            w.waiter_pid,
            dur(w.wait_ms),
            w.in_mount
                .as_ref()
                .map(|m| format!(" in {m}"))
                .unwrap_or_default(),
            pct(w.attributed_ms, w.wait_ms)
        );
        for h in &w.holders {
            let _ = writeln!(s, "{}", holder_line(h));
        }
        if w.holders.is_empty() {
            let _ = writeln!(
                s,
                "             no holder seen (held since before the trace started?)"
            );
        }
        if let Some(line) = r.vmstat_at(w.t_s).map(reclaim_line) {
            let _ = writeln!(s, "{line}");
        }
        if !w.stack.is_empty() {
            let _ = writeln!(s, "             stack: {}", w.stack.join(" ← "));
        }
    }
}

/// One holder of a wait: who, how, how long, on which shrinkers.
fn holder_line(h: &Holder) -> String {
    let role = match (h.role, h.approximate) {
        (Role::Reader, false) => "reader",
        (Role::Reader, true) => "reader, inferred from its shrinker calls: at least",
        (Role::Writer, _) => "writer",
    };
    let mut line = format!(
        "             {} (pid {}, {role}) held {}",
        h.comm,
        h.pid,
        dur(h.hold_ms)
    );
    if !h.cpu_unknown {
        line += &format!(" (on-CPU {}, off {})", dur(h.on_cpu_ms), dur(h.off_cpu_ms));
    }
    if !h.shrinkers.is_empty() {
        let list: Vec<String> = h
            .shrinkers
            .iter()
            .take(3)
            .map(|t| {
                format!(
                    "{} {} ({} calls, {} to scan, {} freed)",
                    t.name,
                    dur(t.ms),
                    t.calls,
                    count(t.to_scan.max(0) as u64),
                    count(t.freed.max(0) as u64)
                )
            })
            .collect();
        line += &format!(": {}", list.join(", "));
    }
    line
}

/// The reclaim counters of the second a wait began.
fn reclaim_line(v: &VmstatSample) -> String {
    let psi = v
        .psi_some_avg10
        .map(|p| format!(", PSI some avg10 {p:.1} %"))
        .unwrap_or_default();
    format!(
        "             reclaim that second: pgscan kswapd {} direct {}, slabs_scanned {}, allocstall {}{psi}",
        count(v.pgscan_kswapd),
        count(v.pgscan_direct),
        count(v.slabs_scanned),
        v.allocstall
    )
}

/// The naive script's answer, next to strata's.
fn render_naive(s: &mut String, n: &crate::naive::NaiveReport) {
    let _ = writeln!(s, "\nWhat the naive bpftrace script reports ({})", n.method);
    let _ = writeln!(
        s,
        "  intervals: {} ({} began with a failed trylock, {} ended by another rwsem's up_read); \
         p50 {}, max {}",
        n.intervals,
        n.failed_trylocks,
        n.ended_by_other_lock,
        dur(n.p50_ms),
        dur(n.max_ms)
    );
    for t in &n.top_stacks {
        let _ = writeln!(s, "  {:>9} {:>6}×  {}", dur(t.ms), t.n, t.stack);
    }
    if let Some(w) = &n.slowest_wait {
        let _ = writeln!(
            s,
            "  during the slowest wait ({} waited {}): {} intervals cover {} ({}), longest {}{}",
            w.waiter_comm,
            dur(w.wait_ms),
            w.intervals,
            dur(w.covered_ms),
            pct(w.covered_ms, w.wait_ms),
            dur(w.longest_ms),
            w.top_stacks
                .first()
                .map(|t| format!(", top stack {}", t.stack))
                .unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::tests::{stall_events, LOCK};
    use crate::analyze::Analyzer;
    use crate::check::{decide, Inputs};
    use crate::kallsyms::Kallsyms;
    use crate::report::VmstatSample;

    fn report() -> Report {
        let mut a = Analyzer::new(LOCK, 10.0);
        for e in stall_events() {
            a.push(e);
        }
        let kernel = decide(&Inputs {
            release: "6.1.0-56-cloud-amd64".into(),
            root: true,
            kallsyms: Ok(Kallsyms::scan(
                "ffffffff82a0c1c0 D init_task\nffffffff82b5f8a0 D shrinker_rwsem\n",
                crate::check::WANTED,
            )),
            btf: Err("none".into()),
        });
        let vmstat = vec![
            VmstatSample {
                t_s: 1.0,
                interval_s: 1.0,
                pgscan_kswapd: 52_000,
                slabs_scanned: 2_400_000,
                psi_some_avg10: Some(12.5),
                ..Default::default()
            },
            VmstatSample {
                t_s: 2.0,
                interval_s: 1.0,
                ..Default::default()
            },
        ];
        let ctx = crate::report::Context {
            kernel,
            source: "synthetic",
            mode: crate::report::Mode::Detail,
            duration_s: 2.0,
            min_wait_ms: 10.0,
            missing: vec![],
        };
        Report::assemble(ctx, a.finish(), vmstat)
    }

    #[test]
    fn summary_first_then_mounts_then_waits() {
        let text = render(&report());
        let summary = text.find("Summary").unwrap();
        let mounts = text.find("Mounts (ms)").unwrap();
        let waits = text.find("Waits for the shrinker lock").unwrap();
        assert!(summary < mounts && mounts < waits, "{text}");
        assert!(
            text.contains("shrinker lock: shrinker_rwsem (exposed"),
            "{text}"
        );
        assert!(text.contains("98.5 %) of it waiting"), "{text}");
        assert!(
            text.contains("top holders:   kswapd0 1.30 s (1 waits)"),
            "{text}"
        );
        assert!(
            text.contains("top shrinkers: super_cache_scan 1.29 s"),
            "{text}"
        );
        assert!(
            text.contains("slowest: overlay mount by strata (pid 311)"),
            "{text}"
        );
        assert!(
            text.contains("kswapd0 (pid 45, reader) held 1.30 s (on-CPU 1.20 s, off 100.0 ms)"),
            "{text}"
        );
        assert!(
            text.contains("super_cache_scan 1.29 s (1 calls, 2.5M to scan, 2.4M freed)"),
            "{text}"
        );
        assert!(text.contains("slabs_scanned 2.4M"), "{text}");
        assert!(text.contains("PSI some avg10 12.5 %"), "{text}");
        assert!(
            text.contains("stack: down_write ← prealloc_shrinker ← alloc_super"),
            "{text}"
        );
    }

    #[test]
    fn the_default_mode_reads_the_same_and_says_what_it_counted() {
        let kernel = report().kernel;
        let ctx = crate::report::Context {
            kernel,
            source: "synthetic",
            mode: Mode::Default,
            duration_s: 2.0,
            min_wait_ms: 10.0,
            missing: vec![],
        };
        let f = crate::analyze::tests::default_mode_stall().finish();
        let text = render(&Report::assemble(ctx, f, vec![]));
        for want in [
            "events from synthetic (default mode)",
            "  mounts: 3, 1.33 s in total; 1.30 s (98.1 %) of it waiting",
            "slowest: overlay mount by strata (pid 311) at 0.2 s: 1.32 s, 1.30 s (98.6 %) lock wait",
            "Mounts traced (umount2 is not timed in this mode)",
            "Mounts of ≥ 10 ms (ms)",
            "strata (pid 311) waited 1.30 s in overlay mount; holders cover 100.0 %",
            "kswapd0 (pid 45, reader) held 1.30 s (on-CPU 650.5 ms, off 650.5 ms): super_cache_scan",
            "stack: down_write ← prealloc_shrinker",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        assert!(
            !text.contains("alloc_super"),
            "no phases in the default mode:\n{text}"
        );
    }

    #[test]
    fn json_has_the_contract_fields() {
        let v = serde_json::to_value(report()).unwrap();
        assert_eq!(v["kernel"]["shrinker_lock"], "rwsem");
        let w = &v["waits"][0];
        assert_eq!(w["waiter_comm"], "strata");
        assert!(w["wait_ms"].as_f64().unwrap() > 1300.0);
        let h = &w["holders"][0];
        assert_eq!(h["comm"], "kswapd0");
        assert_eq!(h["pid"], 45);
        assert!(h["hold_ms"].as_f64().unwrap() > 1299.0);
        assert_eq!(h["shrinker"], "super_cache_scan");
        assert!(v["mounts"].as_array().unwrap().len() == 2);
        assert_eq!(v["vmstat"][0]["slabs_scanned"], 2_400_000);
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back.waits.len(), 1);
    }
}
