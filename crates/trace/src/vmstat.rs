//! Reclaim context: per-interval deltas of `/proc/vmstat` reclaim counters and
//! `/proc/pressure/memory` (PSI). Plain file reads: works on any kernel, no tracing needed.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::report::VmstatSample;

/// The counters kept from `/proc/vmstat`.
pub fn parse_vmstat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            let keep = matches!(
                k,
                "pgscan_kswapd"
                    | "pgscan_direct"
                    | "pgsteal_kswapd"
                    | "pgsteal_direct"
                    | "slabs_scanned"
            ) || k.starts_with("allocstall_");
            if !keep {
                return None;
            }
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// `/proc/pressure/memory`: (some avg10, full avg10, some total µs, full total µs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Psi {
    pub some_avg10: f64,
    pub full_avg10: f64,
    pub some_total_us: u64,
    pub full_total_us: u64,
}

pub fn parse_psi(text: &str) -> Option<Psi> {
    let mut psi = Psi::default();
    let mut seen = false;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(kind) = f.next() else { continue };
        let (mut avg10, mut total) = (None, None);
        for kv in f {
            match kv.split_once('=') {
                Some(("avg10", v)) => avg10 = v.parse().ok(),
                Some(("total", v)) => total = v.parse().ok(),
                _ => {}
            }
        }
        match kind {
            "some" => {
                psi.some_avg10 = avg10?;
                psi.some_total_us = total?;
                seen = true;
            }
            "full" => {
                psi.full_avg10 = avg10?;
                psi.full_total_us = total?;
            }
            _ => {}
        }
    }
    seen.then_some(psi)
}

/// One reading of both files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub counters: BTreeMap<String, u64>,
    pub psi: Option<Psi>,
}

impl Reading {
    pub fn read() -> Reading {
        Reading {
            counters: std::fs::read_to_string("/proc/vmstat")
                .map(|t| parse_vmstat(&t))
                .unwrap_or_default(),
            psi: std::fs::read_to_string("/proc/pressure/memory")
                .ok()
                .and_then(|t| parse_psi(&t)),
        }
    }
}

/// The delta between two readings `interval_s` apart, ending at `t_s`.
pub fn delta(prev: &Reading, cur: &Reading, t_s: f64, interval_s: f64) -> VmstatSample {
    let d = |k: &str| {
        cur.counters
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(prev.counters.get(k).copied().unwrap_or(0))
    };
    let allocstall = cur
        .counters
        .keys()
        .filter(|k| k.starts_with("allocstall_"))
        .map(|k| d(k))
        .sum();
    let (psi_p, psi_c) = (prev.psi, cur.psi);
    VmstatSample {
        t_s,
        interval_s,
        pgscan_kswapd: d("pgscan_kswapd"),
        pgscan_direct: d("pgscan_direct"),
        pgsteal_kswapd: d("pgsteal_kswapd"),
        pgsteal_direct: d("pgsteal_direct"),
        slabs_scanned: d("slabs_scanned"),
        allocstall,
        psi_some_avg10: psi_c.map(|p| p.some_avg10),
        psi_full_avg10: psi_c.map(|p| p.full_avg10),
        psi_some_us: psi_p
            .zip(psi_c)
            .map(|(a, b)| b.some_total_us.saturating_sub(a.some_total_us)),
        psi_full_us: psi_p
            .zip(psi_c)
            .map(|(a, b)| b.full_total_us.saturating_sub(a.full_total_us)),
    }
}

/// Samples `/proc` at the caller's pace (the tracer calls it once a second).
pub struct Sampler {
    start: Instant,
    last: (Instant, Reading),
    pub samples: Vec<VmstatSample>,
}

impl Sampler {
    pub fn new(start: Instant) -> Sampler {
        Sampler {
            start,
            last: (Instant::now(), Reading::read()),
            samples: Vec::new(),
        }
    }

    pub fn sample(&mut self) {
        let (now, cur) = (Instant::now(), Reading::read());
        let t_s = now.duration_since(self.start).as_secs_f64();
        let interval_s = now.duration_since(self.last.0).as_secs_f64();
        self.samples
            .push(delta(&self.last.1, &cur, t_s, interval_s));
        self.last = (now, cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "nr_free_pages 1000\npgscan_kswapd 10\npgscan_direct 5\npgsteal_kswapd 8\n\
pgsteal_direct 4\nslabs_scanned 100\nallocstall_dma 0\nallocstall_normal 2\nallocstall_movable 1\n";
    const V2: &str = "nr_free_pages 900\npgscan_kswapd 110\npgscan_direct 5\npgsteal_kswapd 58\n\
pgsteal_direct 4\nslabs_scanned 2100\nallocstall_dma 0\nallocstall_normal 5\nallocstall_movable 2\n";
    const P1: &str = "some avg10=1.00 avg60=0.50 avg300=0.10 total=1000\n\
full avg10=0.50 avg60=0.20 avg300=0.05 total=400\n";
    const P2: &str = "some avg10=12.50 avg60=3.00 avg300=0.70 total=251000\n\
full avg10=10.00 avg60=2.00 avg300=0.50 total=200400\n";

    #[test]
    fn deltas() {
        let a = Reading {
            counters: parse_vmstat(V1),
            psi: parse_psi(P1),
        };
        let b = Reading {
            counters: parse_vmstat(V2),
            psi: parse_psi(P2),
        };
        assert!(!a.counters.contains_key("nr_free_pages"));
        let s = delta(&a, &b, 2.0, 1.0);
        assert_eq!(s.pgscan_kswapd, 100);
        assert_eq!(s.pgsteal_kswapd, 50);
        assert_eq!(s.slabs_scanned, 2000);
        assert_eq!(s.allocstall, 4);
        assert_eq!(s.psi_some_avg10, Some(12.5));
        assert_eq!(s.psi_some_us, Some(250_000));
        assert_eq!(s.psi_full_us, Some(200_000));
    }

    #[test]
    fn psi_absent_or_partial() {
        assert_eq!(parse_psi(""), None);
        // A "some" line alone is enough.
        let p = parse_psi("some avg10=2.00 avg60=0 avg300=0 total=7\n").unwrap();
        assert_eq!(
            (p.some_avg10, p.some_total_us, p.full_total_us),
            (2.0, 7, 0)
        );
    }

    #[test]
    fn sampler_reads_this_machine() {
        let mut s = Sampler::new(Instant::now());
        s.sample();
        assert_eq!(s.samples.len(), 1);
    }
}
