//! What the usual bpftrace script reports, computed from the same events (`--naive`), so the
//! README's comparison is reproducible without bpftrace:
//!
//! ```text
//! kprobe:down_read_trylock /arg0 == kaddr("shrinker_rwsem")/ { @start[tid] = nsecs; }
//! kretprobe:up_read /@start[tid]/ {
//!     @hold_us = hist((nsecs - @start[tid]) / 1000); @holders[kstack] = count();
//!     delete(@start[tid]);
//! }
//! ```
//!
//! Its three faults: an interval starts at a *failed* trylock too (it fails because a writer —
//! the mount — waits), it ends at the task's next `up_read` of *any* rwsem (the stack there is
//! e.g. `rmap_walk_file ← folio_referenced ← shrink_folio_list`, which never holds this lock),
//! and so real holds are cut short at the first unrelated `up_read` inside a shrinker.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::analyze::{Event, Kind};
use crate::report::Wait;

#[derive(Debug, Clone)]
struct Interval {
    start: u64,
    end: u64,
    failed: bool,
    other_lock: bool,
    stack: usize,
}

/// Folds `NaiveTry`/`NaiveUp` events into the script's intervals.
#[derive(Debug, Default)]
pub struct Naive {
    lock: Option<u64>,
    open: HashMap<u32, (u64, bool)>,
    intervals: Vec<Interval>,
    stacks: Vec<String>,
    stack_ids: HashMap<String, usize>,
    t0: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NaiveStack {
    /// Where the interval ended: the `up_read` caller, innermost first.
    pub stack: String,
    pub n: u64,
    pub ms: f64,
}

/// The naive script's view of the slowest strata-listed wait.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NaiveWait {
    pub waiter_comm: String,
    pub wait_ms: f64,
    /// The part of the wait its intervals cover (strata: `attributed_ms`).
    pub covered_ms: f64,
    /// Its longest interval overlapping the wait.
    pub longest_ms: f64,
    pub intervals: u64,
    pub top_stacks: Vec<NaiveStack>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NaiveReport {
    pub method: String,
    /// Intervals the script records ("holds").
    pub intervals: u64,
    /// …of which began with a failed trylock (no hold at all).
    pub failed_trylocks: u64,
    /// …and were ended by the `up_read` of another rwsem.
    pub ended_by_other_lock: u64,
    pub p50_ms: f64,
    pub max_ms: f64,
    /// Its `@holders[kstack]`: stacks where intervals ended, most time first.
    pub top_stacks: Vec<NaiveStack>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest_wait: Option<NaiveWait>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Naive {
    /// The trace's time zero, as the analyzer's (`Wait::t_s` is relative to it).
    pub fn start_at(&mut self, ts_ns: u64) {
        self.t0 = Some(ts_ns);
    }

    pub fn push(&mut self, e: &Event) {
        self.t0.get_or_insert(e.ts_ns);
        match &e.kind {
            Kind::NaiveTry { ok } => {
                // @start[tid] = nsecs (a second trylock before any up_read overwrites it).
                self.open.insert(e.tid, (e.ts_ns, !ok));
            }
            Kind::ReadAcquired { lock, .. } => {
                self.lock = Some(*lock);
            }
            Kind::NaiveUp { lock, stack } => {
                let Some((start, failed)) = self.open.remove(&e.tid) else {
                    return;
                };
                // The script's kstack at up_read: drop up_read itself, keep three callers.
                let key = stack
                    .iter()
                    .skip_while(|f| f.as_str() == "up_read")
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ← ");
                let n = self.stack_ids.len();
                let id = *self.stack_ids.entry(key.clone()).or_insert(n);
                if id == self.stacks.len() {
                    self.stacks.push(key);
                }
                self.intervals.push(Interval {
                    start,
                    end: e.ts_ns,
                    failed,
                    other_lock: self.lock.is_some_and(|l| l != *lock),
                    stack: id,
                });
            }
            _ => {}
        }
    }

    fn top(&self, it: &[&Interval]) -> Vec<NaiveStack> {
        let mut by: BTreeMap<usize, NaiveStack> = BTreeMap::new();
        for i in it {
            let s = by.entry(i.stack).or_insert_with(|| NaiveStack {
                stack: self.stacks[i.stack].clone(),
                ..Default::default()
            });
            s.n += 1;
            s.ms += ms(i.end - i.start);
        }
        let mut v: Vec<NaiveStack> = by.into_values().collect();
        v.sort_by(|a, b| b.ms.total_cmp(&a.ms).then(b.n.cmp(&a.n)));
        v.truncate(5);
        v
    }

    /// The script's report, and its view of the slowest of strata's `waits`.
    pub fn finish(&self, waits: &[Wait]) -> NaiveReport {
        let all: Vec<&Interval> = self.intervals.iter().collect();
        let mut d: Vec<u64> = all.iter().map(|i| i.end - i.start).collect();
        d.sort_unstable();
        let pick = |q: f64| d.get(((d.len() as f64 * q) as usize).min(d.len().saturating_sub(1)));
        let slowest_wait = waits.first().map(|w| {
            let ws = self.t0.unwrap_or(0) + (w.t_s * 1e9) as u64;
            let we = ws + (w.wait_ms * 1e6) as u64;
            let over: Vec<&Interval> = self
                .intervals
                .iter()
                .filter(|i| i.end > ws && i.start < we)
                .collect();
            let mut spans: Vec<(u64, u64)> = over
                .iter()
                .map(|i| (i.start.max(ws), i.end.min(we)))
                .collect();
            spans.sort_unstable();
            let (mut covered, mut cur) = (0u64, None::<(u64, u64)>);
            for (s, e) in spans {
                match cur {
                    Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
                    _ => {
                        if let Some((cs, ce)) = cur {
                            covered += ce - cs;
                        }
                        cur = Some((s, e));
                    }
                }
            }
            if let Some((cs, ce)) = cur {
                covered += ce - cs;
            }
            NaiveWait {
                waiter_comm: w.waiter_comm.clone(),
                wait_ms: w.wait_ms,
                covered_ms: ms(covered),
                longest_ms: over.iter().map(|i| ms(i.end - i.start)).fold(0.0, f64::max),
                intervals: over.len() as u64,
                top_stacks: self.top(&over),
            }
        });
        NaiveReport {
            method: "kprobe:down_read_trylock /arg0 == shrinker_rwsem/ → kretprobe:up_read \
                     (any rwsem), stack at up_read"
                .into(),
            intervals: all.len() as u64,
            failed_trylocks: all.iter().filter(|i| i.failed).count() as u64,
            ended_by_other_lock: all.iter().filter(|i| i.other_lock).count() as u64,
            p50_ms: pick(0.5).map_or(0.0, |&v| ms(v)),
            max_ms: d.last().map_or(0.0, |&v| ms(v)),
            top_stacks: self.top(&all),
            slowest_wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: u64 = 0xffffffff82b5f8a0;

    fn ev(ms_: u64, tid: u32, kind: Kind) -> Event {
        Event {
            ts_ns: ms_ * 1_000_000,
            tid,
            kind,
        }
    }

    #[test]
    fn the_naive_script_cuts_holds_at_any_up_read_and_counts_failed_trylocks() {
        let up = |lock, stack: &[&str]| Kind::NaiveUp {
            lock,
            stack: stack.iter().map(|s| s.to_string()).collect(),
        };
        let evs = vec![
            // sh holds the lock 0..3000 ms in super_cache_scan; the naive interval ends at 2 ms
            // at an up_read of another rwsem.
            ev(0, 5, Kind::NaiveTry { ok: true }),
            ev(
                0,
                5,
                Kind::ReadAcquired {
                    lock: LOCK,
                    pid: 5,
                    comm: "sh".into(),
                },
            ),
            ev(
                2,
                5,
                up(
                    0x1000,
                    &[
                        "up_read",
                        "rmap_walk_file",
                        "folio_referenced",
                        "shrink_folio_list",
                        "x",
                    ],
                ),
            ),
            // kswapd's trylock fails (the mount waits): still an interval for the script.
            ev(100, 6, Kind::NaiveTry { ok: false }),
            ev(
                150,
                6,
                up(0x2000, &["up_read", "rmap_walk_anon", "folio_referenced"]),
            ),
        ];
        let mut n = Naive::default();
        for e in &evs {
            n.push(e);
        }
        let wait = Wait {
            waiter_comm: "strata".into(),
            waiter_pid: 9,
            waiter_tid: 9,
            t_s: 0.001,
            wait_ms: 2999.0,
            in_mount: None,
            stack: vec![],
            attributed_ms: 2999.0,
            holders: vec![],
        };
        let r = n.finish(&[wait]);
        assert_eq!(
            (r.intervals, r.failed_trylocks, r.ended_by_other_lock),
            (2, 1, 2)
        );
        assert!((r.max_ms - 50.0).abs() < 1e-9);
        assert_eq!(r.top_stacks[0].stack, "rmap_walk_anon ← folio_referenced");
        let w = r.slowest_wait.unwrap();
        // 1 ms of sh's interval (from 1 to 2 ms) + kswapd's failed trylock, 50 ms.
        assert!((w.covered_ms - 51.0).abs() < 1e-6, "{}", w.covered_ms);
        assert_eq!(w.intervals, 2);
    }
}
